"""Exceptions that carry a message meant for the user (printed as one line, exit code 2)."""


class UserError(Exception):
    """Bad input or environment the user can fix: the message says what, where and what to do."""


class ModelLoadError(UserError):
    """Weights could not be loaded (e.g. an open_clip tag offline)."""


class TransientReadError(Exception):
    """An input shard's stream broke for transport reasons (a `pipe:` command exited non-zero, an
    HTTP/S3 read or a timeout failed): the shard stays incomplete, with no outputs, and is retried.
    Not a UserError: nothing is wrong with the input itself."""


class ShardInferenceError(Exception):
    """Most images of a shard failed inside the engine (a broken engine, not bad data): the shard is
    not marked complete and is retried; one that fails this way every time is reported crashed."""


class DeviceFatalError(Exception):
    """The engine's device failed for good in this process (a non-OOM CUDA error: after one, every
    later call fails too). The shard in hand is left incomplete; the Ray actor exits so that Ray
    restarts it with a fresh device context, and the dispatcher retries the shard there."""
