"""Keep secrets out of everything we write.

Tokens are registered here as soon as they are read; :func:`redact` replaces them (and anything
shaped like a Hugging Face token) in text that leaves the process: logs, events, reports, recipes
and error messages.
"""

from __future__ import annotations

import re
import threading

_HF_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{20,}")
_MASK = "hf_***"
_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember ``value`` so that :func:`redact` removes it from any later text."""
    if value and len(value) >= 8:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """Return ``text`` with every registered secret and every ``hf_...`` token masked.

    >>> redact("token hf_abcdefghijklmnopqrstuvwxyz0123")
    'token hf_***'
    """
    if not text:
        return text
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, _MASK)
    return _HF_TOKEN_PATTERN.sub(_MASK, text)


def redact_obj(obj):
    """Redact every string inside nested dicts, lists and tuples."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_obj(v) for v in obj)
    return obj
