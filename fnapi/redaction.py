"""Keep secrets out of everything we write.

Tokens are registered here as soon as they are read; :func:`redact` replaces them (and anything
shaped like a Hugging Face token) in text that leaves the process: logs, events, reports, trackers
and error messages. Recipes are not redacted: they are saved exactly, and a recipe whose field holds
a secret is refused when it is validated (:func:`holds_secret`), so no token reaches one.
"""

from __future__ import annotations

import re
import threading

# The shape of a Hugging Face access token: "hf_" and 34 letters or digits, standing alone. Only
# that shape: a looser pattern masked data paths such as ".../hf_myDatasetsForFinetuning2024".
_HF_TOKEN_PATTERN = re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{34}(?![A-Za-z0-9])")
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

    >>> redact("token hf_abcdefghijklmnopqrstuvwxyz01234567")
    'token hf_***'
    >>> redact("data/hf_myDatasetsForFinetuning2024")
    'data/hf_myDatasetsForFinetuning2024'
    """
    if not text:
        return text
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, _MASK)
    return _HF_TOKEN_PATTERN.sub(_MASK, text)


def holds_secret(text: str) -> bool:
    """True if ``text`` contains a registered secret or a Hugging Face token."""
    return bool(text) and redact(text) != text


def redact_obj(obj):
    """Redact every string inside nested dicts, lists and tuples."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_obj(v) for v in obj)
    return obj
