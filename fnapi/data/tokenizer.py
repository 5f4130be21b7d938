"""Load only the tokenizer of a model spec: enough to preview and tokenise data, and much faster
than loading the weights.

Specs are those of :func:`fnapi.models.loading.load_model`: the embedded model name, a local
folder, a ``.gguf`` file, or a hub id. For the embedded model the converted model cache is used
when it exists; otherwise the tokenizer is read from the GGUF file once (a few seconds) and kept
under ``cache_dir()/tokenizers/``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from fnapi.errors import ModelError, OfflineError
from fnapi.paths import cache_dir

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_MARKER = "fnapi-tokenizer.json"


def load_tokenizer(spec: str) -> PreTrainedTokenizerBase:
    """The tokenizer of ``spec`` (embedded name, folder, ``.gguf`` file or hub id)."""
    from fnapi.models import loading

    if spec.lower() == loading.EMBEDDED_MODEL:
        return _embedded_tokenizer()
    path = Path(spec).expanduser()
    if path.is_dir():
        return _from_pretrained(str(path), local_files_only=True, what=f"folder {path}")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelError(f"model file {path} is not a .gguf file")
        return _from_pretrained(str(path.parent), gguf_file=path.name, what=f"GGUF file {path}")
    if spec.lower().endswith(".gguf") or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise ModelError(f"model {spec!r} is not the embedded model, an existing folder or .gguf file, "
                         "or a hub id (org/name)", hint=f"Use {loading.EMBEDDED_MODEL} to work offline.")
    return _hub_tokenizer(spec)


def _embedded_tokenizer() -> PreTrainedTokenizerBase:
    from fnapi.models import loading

    converted = loading.embedded_cache_dir()
    if (converted / loading.CACHE_MARKER).is_file():
        return _from_pretrained(str(converted), local_files_only=True, what=f"folder {converted}")
    own = cache_dir() / "tokenizers" / loading.EMBEDDED_MODEL
    if not (own / _MARKER).is_file():
        gguf = loading.embedded_gguf_path()
        tokenizer = _from_pretrained(str(gguf.parent), gguf_file=gguf.name, what=f"GGUF file {gguf}")
        _save_atomically(tokenizer, own)
        return tokenizer
    return _from_pretrained(str(own), local_files_only=True, what=f"folder {own}")


def _save_atomically(tokenizer: PreTrainedTokenizerBase, target: Path) -> None:
    """Write the tokenizer into a temporary folder and rename it into place (marker last)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        tokenizer.save_pretrained(tmp)
        (tmp / _MARKER).write_text("{}\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    except OSError:
        # A cache we cannot write only costs time on the next call.
        shutil.rmtree(tmp, ignore_errors=True)


def _hub_tokenizer(repo_id: str) -> PreTrainedTokenizerBase:
    from fnapi import auth

    offline = any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
                  for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    problem = "HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set" if offline else auth.hub_reachable()
    try:
        return _from_pretrained(repo_id, local_files_only=problem is not None, token=auth.resolve_token().token,
                                what=f"hub model {repo_id}")
    except ModelError as exc:
        if problem:
            raise OfflineError(f"the tokenizer of {repo_id} is not in the local Hugging Face cache and the hub "
                               f"cannot be used: {problem}",
                               hint="Use a local folder, a .gguf file or the embedded model.") from exc
        raise


def _from_pretrained(name: str, *, what: str, **kwargs) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, **kwargs)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError... for unusable folders
        raise ModelError(f"could not load a tokenizer from {what}: {type(exc).__name__}: {exc}") from None
