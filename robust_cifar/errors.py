"""Errors a user can cause and fix: each is shown as one line (what is wrong and the fix), never a traceback.

A leaf module (no project imports), so every stage can name these errors without importing
the modules that raise them.
"""


class UserError(Exception):
    """Something the user can fix: its message says what is wrong and how to fix it, on one line."""


class ParamsError(UserError, ValueError):
    """A value in params.yaml that the pipeline cannot use."""


class ArchiveError(UserError, ValueError):
    """The CIFAR-10 archive is missing, unreadable, or not trustworthy."""


class DeviceError(UserError, ValueError):
    """A requested device that this machine does not have."""


class InputError(UserError):
    """A file a stage reads is missing, truncated or does not match what the stage expects."""
