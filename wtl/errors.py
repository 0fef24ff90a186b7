"""The errors that mean "bad input, not a bug": the command-line tools print their one line and exit 2.

Every other exception (a CUDA out-of-memory error, a bug deep in torch) keeps its traceback.
Each error is also a ValueError or OSError where that is what a Python caller would expect, so
that library code can be called from a notebook and caught the usual way.
"""

from __future__ import annotations


class WtlError(Exception):
    """Base of Where to look's own errors: the message is one line for the user."""


class UsageError(WtlError, ValueError):
    """A request that cannot be carried out as asked (a flag, a class name, a method that does not apply)."""


class ImageError(WtlError, ValueError):
    """A file that cannot be used as an image."""


class DatasetError(WtlError, ValueError):
    """A data-set folder that is missing or laid out wrongly."""


class CheckpointError(WtlError, ValueError):
    """A checkpoint that is missing, corrupt or of the wrong kind."""


class DownloadError(WtlError):
    """Weights that could not be downloaded or installed; the message also says what to do instead."""


class NoAnswer(WtlError, EOFError):
    """Input ended before a prompt was answered; the message (and `flag`) names the flag to pass."""

    def __init__(self, message: str, flag: str = "") -> None:
        super().__init__(message)
        self.flag = flag
