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


class TransientWriteError(Exception):
    """Writing an output object kept failing for transport reasons (5xx, a cut connection, a
    timeout) after the storage layer's own backed-off retries: nothing of the shard is complete,
    and the dispatcher retries it after a backoff."""


class ShardError(Exception):
    """Any other exception of a shard, as it reaches the driver: the original's type name and
    first line only, so that Ray can always serialise it (a transport error carrying a multidict
    cannot be pickled). Recorded as crashed, not retried."""
