"""Exceptions that carry a message meant for the user (printed as one line, exit code 2)."""


class UserError(Exception):
    """Bad input or environment the user can fix: the message says what, where and what to do."""


class ModelLoadError(UserError):
    """Weights could not be loaded (e.g. an open_clip tag offline)."""
