"""fnapi: selective fine-tuning of causal LLMs with functional networks.

Heavy parts load on first use, so ``import fnapi`` is cheap::

    import fnapi
    recipe = fnapi.Recipe.from_yaml("recipes/quickstart.yaml")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "Recipe": "fnapi.recipe",
    "FnapiError": "fnapi.errors",
    "EventSink": "fnapi.events",
    "ListSink": "fnapi.events",
    "JsonlSink": "fnapi.events",
    "console_sink": "fnapi.events",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fnapi' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
