"""Errors a user can cause and fix: each is shown as one line (what is wrong and the fix), never a traceback.

A leaf module (no project imports), so every stage can name these errors without importing
the modules that raise them.
"""
from pathlib import Path

USER_ERROR_EXIT = 2   # a stage's or tool's exit code for something the user can fix (its one line said what)


def get_back(path, stage: str) -> str:
    """How to get a damaged or missing output back: from DVC's cache or remote at once, or by rerunning
    its one stage (`-s`: `dvc repro -f <stage>` alone would rerun everything upstream too)."""
    return (f"restore it with `dvc checkout --force {path}` (or `dvc pull --force {path}`), "
            f"or remake it with `dvc repro -f -s {stage}`")


def absent(path, stage: str, what: str = "") -> "InputError":
    """The one line for a file a stage reads that is not there as a file (missing, or a folder in its place);
    `what` names its kind before the path ("model checkpoint ")."""
    return InputError(f"{what}{path} {'is a folder' if Path(path).is_dir() else 'not found'}: {get_back(path, stage)}")


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


class TrainingDiverged(UserError):
    """A training whose loss became NaN or infinite: its params (most often the learning rate) cannot train it."""


class PublishError(UserError):
    """A folder a run cannot be published into."""


class DiskFullError(UserError, OSError):
    """No space left where an output is written."""
