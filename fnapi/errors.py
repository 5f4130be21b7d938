"""Errors a user can act on.

Every error raised for bad input is a :class:`FnapiError`. The CLI prints its message (and hint)
as one paragraph and exits with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from fnapi.redaction import redact


class FnapiError(Exception):
    """Bad input or an unusable environment, explained for the user.

    ``message`` says what is wrong (naming the file, field or row); ``hint`` says what to do.
    Known secrets are redacted from both.
    """

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = redact(message)
        self.hint = redact(hint) if hint else None
        super().__init__(self.message if not self.hint else f"{self.message}\n{self.hint}")


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


class CancelledError(FnapiError):
    """Work stopped because the caller set the cancel event."""

    exit_code = 130
