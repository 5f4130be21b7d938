"""Errors a user can act on.

Every error raised for bad input is a :class:`FnapiError`. The CLI prints its message (and hint)
as one paragraph and exits with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass

from fnapi.redaction import redact


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: where it is (a dotted YAML or JSON path) and what is wrong there."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class FnapiError(Exception):
    """Bad input or an unusable environment, explained for the user.

    ``message`` says what is wrong (naming the file, field or row); ``hint`` says what to do.
    ``problems`` holds the same findings with structure, one :class:`Problem` per field, so a
    caller (the wizard) can put each beside its field without reading the text; ``field`` is the
    path of the first. Known secrets are redacted from all of them.
    """

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None, *, problems: Sequence[Problem] = (),
                 field: str | None = None) -> None:
        self.message = redact(message)
        self.hint = redact(hint) if hint else None
        self.problems = tuple(Problem(p.path, redact(p.message)) for p in problems)
        self.field = field if field is not None else (self.problems[0].path if self.problems else None)
        super().__init__(self.message if not self.hint else f"{self.message}\n{self.hint}")

    @classmethod
    def invalid(cls, source: str, problems: Sequence[Problem], what: str = "recipe",
                hint: str | None = None) -> FnapiError:
        """The error listing ``problems`` of ``source``: ``source: invalid recipe`` and one line each."""
        lines = list(dict.fromkeys(str(p) for p in problems))
        return cls(f"{source}: invalid {what}\n  " + "\n  ".join(lines), hint, problems=problems)


class RecipeError(FnapiError):
    """A recipe file that cannot be read or does not validate."""


class ModelError(FnapiError):
    """A model spec that cannot be resolved or loaded."""


class UnsupportedArchitectureError(ModelError):
    """A model whose decoder blocks and MLP we do not know how to find."""


class OfflineError(FnapiError):
    """A hub resource was asked for while the hub cannot be reached."""


class DataError(FnapiError):
    """A dataset that cannot be read or yields no usable rows."""


class TemplateError(FnapiError):
    """A template that cannot be read, built, or applied to this model."""


class HardwareError(FnapiError):
    """A feature the detected hardware cannot provide (for example 4-bit loading without CUDA)."""


class TrackerError(FnapiError):
    """An experiment tracker that cannot start: its server unreachable, its store unusable."""


class ExtraNotInstalledError(FnapiError):
    """A feature whose optional extra is not installed (the hint names the ``pip install``)."""


class ExportError(FnapiError):
    """A run that cannot be exported as asked: no weights, a destination in the way, a format or
    type its architecture cannot take, or a hub that cannot be reached."""


class CancelledError(FnapiError):
    """Work stopped because the caller set the cancel event (SIGINT gives exit code 130, SIGTERM 143)."""

    exit_code = 130


class StorageError(FnapiError):
    """A file or folder that cannot be written or read: a full disk, a read-only folder, no permission."""


#: errno -> what to do about it, for OS errors on paths a user chose.
_OS_ADVICE = {
    errno.ENOSPC: ("no space left on the device", "free some space (old runs, checkpoints, the cache) or write "
                   "elsewhere, then run the same command again: finished work is kept"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or write elsewhere, then run the same command again"),
    errno.EROFS: ("the file system is read-only", "write somewhere else (--output, output.dir, FNAPI_CACHE)"),
    errno.EACCES: ("permission denied", "fix the permissions, or use a path you can read and write"),
    errno.EPERM: ("operation not permitted", "fix the permissions, or use a path you can read and write"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "give a folder path"),
    errno.EISDIR: ("it is a folder, not a file", "give a file path"),
    errno.EEXIST: ("it already exists as a file", "give a folder path that is not a file"),
}
#: How a full disk surfaces through torch.save / safetensors, which drop the errno.
_DISK_FULL_TEXT = ("No space left on device", "inline_container.cc", "file write failed", "PytorchStreamWriter",
                   "basic_ios::clear: iostream error")


def storage_error(exc: BaseException) -> StorageError | None:
    """The user-facing error for an OS error on a path (or a full disk reported by torch), else None."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, OSError) and exc.errno in _OS_ADVICE:
        what, hint = _OS_ADVICE[exc.errno]
        where = exc.filename if exc.filename is not None else "a file fnapi was writing"
        return StorageError(f"cannot use {where}: {what}", hint)
    text = str(exc)
    if isinstance(exc, (OSError, RuntimeError)) and any(marker in text for marker in _DISK_FULL_TEXT):
        what, hint = _OS_ADVICE[errno.ENOSPC]
        return StorageError(f"writing a file failed: {what} (or the device failed)", hint)
    return None
