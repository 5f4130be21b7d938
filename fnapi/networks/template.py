"""Templates: named sets of MLP neurons per layer, saved as versioned, human-readable JSON.

A :class:`Template` records where its neurons live (``site`` and ``width``), which model and data
it came from, how it was made, and one :class:`Component` per functional network: channel indices
per layer plus stats. Readers also import the predecessor's two JSON layouts and LoKI position
lists (see ``TEMPLATE_MIGRATIONS``), marking them as imported and warning that the model is unknown.

>>> t = Template(site="mlp.out", width=8, num_layers=2,
...              components=[Component(0, {0: [3, 1], 1: [2]}), Component(1, {1: [2, 5]})])
>>> t.neuron_sets([0, 1])
{0: [1, 3], 1: [2, 5]}
>>> round(iou(t.component(0).neurons, t.component(1).neurons), 3)
0.25
"""

from __future__ import annotations

import copy
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, ValidationError

from fnapi.errors import TemplateError
from fnapi.migrations import Migrations
from fnapi.paths import atomic_write_text
from fnapi.recipe import Section, SiteName, validation_problems
from fnapi.sites import SITES, site

if TYPE_CHECKING:
    from fnapi.models.loading import ModelInfo

    #: A model as templates see it: a ``ModelInfo``, or a dict with the same keys.
    ModelFacts = ModelInfo | Mapping[str, Any]

TEMPLATE_FORMAT = "fnapi.template/1"

#: Layer -> sorted channel indices at the template's site.
NeuronSets = dict[int, list[int]]

# Stats recomputed from the neurons on every save; a hand-edited file cannot make them disagree.
_DERIVED_STATS = ("size", "per_layer")
UNKNOWN_MODEL_WARNING = (
    "model identity unknown: the file does not record which model it was built for; "
    "make sure it matches the model you apply it to"
)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Component:
    """One functional network: channel indices per layer, its stability and descriptive stats.

    ``neurons`` is normalised on creation: integer layer keys in order, sorted unique channel
    lists, empty layers dropped. ``stats`` holds what the builder measured (``top_tokens``: a list
    of ``{token, context, activation}``, ...); ``size`` and ``per_layer`` are derived.
    """

    id: int
    neurons: dict[int, list[int]]
    stability: float | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.id = int(self.id)
        self.neurons = _normalise_sets(self.neurons)
        if self.stability is not None:
            self.stability = float(self.stability)
        self.stats = {k: v for k, v in dict(self.stats).items() if k not in _DERIVED_STATS}

    @property
    def size(self) -> int:
        """Number of (layer, channel) neurons in the component."""
        return sum(len(channels) for channels in self.neurons.values())

    @property
    def per_layer(self) -> dict[int, int]:
        """Neuron count per layer (only layers that hold neurons)."""
        return {layer: len(channels) for layer, channels in self.neurons.items()}

    @property
    def one_position(self) -> int | None:
        """The token position shared by all of the component's top tokens (at least three), else None.

        A component whose strongest activations all sit at one position, usually the first token,
        tracks where a token is (a massive-activation channel), not what the text says; protecting
        it protects little knowledge."""
        positions = [entry.get("position") for entry in self.stats.get("top_tokens") or [] if isinstance(entry, dict)]
        if len(positions) >= 3 and len(set(positions)) == 1 and isinstance(positions[0], int):
            return positions[0]
        return None

    def neuron_detail(self, layer: int, channel: int) -> dict[str, Any] | None:
        """What the build recorded about one neuron of this component (``loading``, ``mean``,
        ``std``, ``top_tokens`` as ``[token, count]`` pairs), or None when it recorded nothing
        (attribution and imported templates, and templates built before this was recorded)."""
        detail = self.stats.get("neuron_detail")
        if not isinstance(detail, dict):
            return None
        for i, (at_layer, at_channel) in enumerate(zip(detail.get("layer", []), detail.get("channel", []))):
            if at_layer == layer and at_channel == channel:
                return {key: values[i] for key, values in detail.items()
                        if key not in ("layer", "channel") and isinstance(values, list) and i < len(values)}
        return None

    def to_dict(self) -> dict[str, Any]:
        stats = {"size": self.size, "per_layer": {str(k): v for k, v in self.per_layer.items()}}
        stats.update(copy.deepcopy(self.stats))
        return {
            "id": self.id,
            "stability": self.stability,
            "stats": stats,
            "neurons": {str(layer): list(channels) for layer, channels in self.neurons.items()},
        }


@dataclass
class Template:
    """A set of components at one site of one model shape, with provenance.

    ``model`` holds ``name, architecture, num_layers, hidden_size, intermediate_size, fingerprint``
    (see :func:`model_identity`); ``method`` holds ``name`` (``ica | attribution | imported``) and
    its parameters; ``data`` holds ``sources, rows, tokens, fingerprint``. ``layers`` defaults to
    every layer. Construction validates shapes and indices (:class:`TemplateError`).
    """

    site: str
    width: int
    num_layers: int
    layers: list[int] = field(default_factory=list)
    components: list[Component] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)
    method: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=_now)
    warnings: list[str] = field(default_factory=list)
    format: str = TEMPLATE_FORMAT

    def __post_init__(self) -> None:
        self.layers = sorted({int(layer) for layer in self.layers}) or list(range(int(self.num_layers)))
        self.validate()

    # ---- checks ---------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`TemplateError` (naming the field) if shapes or indices are inconsistent."""
        if self.format != TEMPLATE_FORMAT:
            raise TemplateError(f"format: unsupported template format {self.format!r}; this fnapi reads {TEMPLATE_FORMAT!r}")
        if self.site not in SITES:
            raise TemplateError(f"site: {self.site!r} is not a site; use one of {', '.join(SITES)}")
        where = SITES[self.site]
        if not _is_int(self.width) or self.width <= 0:
            raise TemplateError(f"width: must be a positive integer (got {self.width!r})")
        if not _is_int(self.num_layers) or self.num_layers <= 0:
            raise TemplateError(f"num_layers: must be a positive integer (got {self.num_layers!r})")
        outside = [layer for layer in self.layers if not 0 <= layer < self.num_layers]
        if outside:
            raise TemplateError(f"layers: {outside} outside 0-{self.num_layers - 1} (num_layers {self.num_layers})")
        model_layers = self.model.get("num_layers")
        if model_layers is not None and model_layers != self.num_layers:
            raise TemplateError(f"model.num_layers: {model_layers} disagrees with num_layers {self.num_layers}")
        size_key = where.dimension
        model_width = self.model.get(size_key)
        if model_width is not None and model_width != self.width:
            raise TemplateError(f"model.{size_key}: {model_width} disagrees with width {self.width} at {self.site}")
        seen: set[int] = set()
        allowed = set(self.layers)
        for position, component in enumerate(self.components):
            where = f"components[{position}]"
            if component.id in seen:
                raise TemplateError(f"{where}.id: component id {component.id} appears twice")
            seen.add(component.id)
            for layer, channels in component.neurons.items():
                if layer not in allowed:
                    raise TemplateError(f"{where}.neurons.{layer}: layer {layer} is not among the template's layers {self.layers}")
                if channels and not (0 <= channels[0] and channels[-1] < self.width):
                    bad = next(c for c in channels if not 0 <= c < self.width)
                    raise TemplateError(
                        f"{where}.neurons.{layer}: channel {bad} is outside 0-{self.width - 1} (width {self.width} at {self.site})"
                    )

    def check_compatible(self, info: ModelFacts) -> list[str]:
        """Check that this template fits a model; return warnings, raise :class:`TemplateError` if not.

        ``info`` is a ``ModelInfo`` (or a dict) with ``num_layers``, ``hidden_size``,
        ``intermediate_size``, ``name`` and ``fingerprint``. The layer count and the width at the
        template's site must match; a different weight fingerprint on the same shape is only a
        warning (for example a fine-tuned copy of the same base model).
        """
        num_layers = _info(info, "num_layers")
        width = site(self.site).width(info)
        inferred = set(self.method.get("inferred", ()))
        # An imported file only tells us lower bounds for what it did not record.
        layers_ok = self.num_layers <= num_layers if "num_layers" in inferred else self.num_layers == num_layers
        width_ok = self.width <= width if "width" in inferred else self.width == width
        if not (layers_ok and width_ok):
            raise TemplateError(
                f"template was built for {self.num_layers} layers x {self.width} ({self.site}) "
                f"but the model has {num_layers} layers x {width}",
                "build a template for this model, or load the model the template was made from"
                + (f" ({self.model['name']})" if self.model.get("name") else ""),
            )
        warnings = []
        other = self.other_model(info)
        if other:
            warnings.append(other)
        if not self.model.get("fingerprint") and not self.model.get("name"):
            warnings.append(UNKNOWN_MODEL_WARNING)
        return warnings

    def other_model(self, info: ModelFacts) -> str | None:
        """Why this template seems to come from another model than ``info``, or None.

        The weights fingerprints decide when both are known; otherwise the recorded model name is
        compared with the model's, spelled loosely (``org/SmolLM2-135M-Instruct``,
        ``smollm2-135m-instruct`` and ``SmolLM2-135M-Instruct.Q4_1.gguf`` are the same model).
        """
        mine, theirs = self.model.get("fingerprint"), _info(info, "fingerprint", None)
        name, model_name = self.model.get("name"), _info(info, "name", None)
        if mine and theirs:
            if mine == theirs:
                return None
            return (f"template was built from {name or 'another model'} (weights {mine}) but the model is "
                    f"{model_name or 'a different one'} (weights {theirs}); the shapes match, "
                    "but the neurons may not play the same roles")
        if name and model_name and _model_key(name) != _model_key(str(model_name)):
            return (f"template names the model {name!r} but the model is {model_name!r}; the shapes match, "
                    "but the neurons may not play the same roles")
        return None

    # ---- components -------------------------------------------------------------------------
    @property
    def component_ids(self) -> list[int]:
        return [c.id for c in self.components]

    def component(self, component_id: int) -> Component:
        """The component with this id; :class:`TemplateError` listing the ids that exist."""
        for component in self.components:
            if component.id == component_id:
                return component
        raise TemplateError(f"template has no component {component_id}; it has {_id_list(self.component_ids)}")

    def components_by_stability(self) -> list[Component]:
        """Components from most to least stable; those without a stability score come last."""
        return sorted(self.components, key=lambda c: (c.stability is None, -(c.stability or 0.0), c.id))

    def neuron_sets(self, component_ids: list[int] | Literal["stable", "all"], top_stable: int = 3,
                    layers: list[int] | None = None) -> NeuronSets:
        """Union of the chosen components' neurons, per layer.

        ``component_ids`` is a list of ids, ``"stable"`` (the ``top_stable`` most stable ones) or
        ``"all"`` (every component: a ``loki`` template's one set of rows, say).
        The result has one entry per template layer (kept by ``layers`` if given), possibly empty.
        """
        if component_ids == "all":
            chosen = list(self.components)
        elif component_ids == "stable":
            scored = [c for c in self.components_by_stability() if c.stability is not None]
            if not scored:
                raise TemplateError(
                    f"template made by {self.method.get('name', 'an unknown method')} has no stability scores, "
                    "so 'stable' cannot choose components",
                    f"name component ids instead: {_id_list(self.component_ids)}",
                )
            chosen = scored[:top_stable]
        elif isinstance(component_ids, str):
            raise TemplateError(f"components: {component_ids!r} is neither a list of ids, 'stable' nor 'all'")
        else:
            chosen = [self.component(int(cid)) for cid in component_ids]
        keep = self.layers if layers is None else [layer for layer in self.layers if layer in set(layers)]
        union: dict[int, set[int]] = {layer: set() for layer in keep}
        for component in chosen:
            for layer, channels in component.neurons.items():
                if layer in union:
                    union[layer].update(channels)
        return {layer: sorted(channels) for layer, channels in union.items()}

    def overlaps(self) -> list[tuple[int, int, int, float]]:
        """Every pair of components that share neurons: ``(a, b, shared neurons, IoU)``, the most
        shared first."""
        sets = {c.id: {(layer, ch) for layer, channels in c.neurons.items() for ch in channels}
                for c in self.components}
        pairs = []
        ids = sorted(sets)
        for i, a in enumerate(ids):
            for b in ids[i + 1:]:
                shared = len(sets[a] & sets[b])
                if shared:
                    pairs.append((a, b, shared, shared / len(sets[a] | sets[b])))
        return sorted(pairs, key=lambda pair: (-pair[2], pair[0], pair[1]))

    def summary_rows(self) -> list[dict[str, Any]]:
        """One row per component for a table: id, stability, size, percent of the site's neurons,
        per-layer counts and top tokens (strings)."""
        total = self.width * len(self.layers)
        rows = []
        for component in self.components:
            tokens = [str(t.get("token", "")) if isinstance(t, dict) else str(t)
                      for t in component.stats.get("top_tokens", [])]
            rows.append({
                "id": component.id,
                "stability": component.stability,
                "size": component.size,
                "percent": 100.0 * component.size / total if total else 0.0,
                "per_layer": component.per_layer,
                "top_tokens": tokens,
            })
        return rows

    # ---- IO ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict in the ``fnapi.template/1`` layout."""
        return {
            "format": self.format,
            "site": self.site,
            "width": self.width,
            "num_layers": self.num_layers,
            "layers": list(self.layers),
            "model": copy.deepcopy(self.model),
            "method": copy.deepcopy(self.method),
            "data": copy.deepcopy(self.data),
            "created": self.created,
            "warnings": list(self.warnings),
            "components": [c.to_dict() for c in self.components],
        }

    def to_json(self) -> str:
        """Indented JSON, with every list of numbers kept on one line so neuron lists stay readable."""
        return _dumps_compact_lists(self.to_dict()) + "\n"

    def save(self, path: str | Path) -> Path:
        """Write the template atomically (temp file + rename) and return the path."""
        self.validate()
        return atomic_write_text(path, self.to_json())

    @classmethod
    def from_dict(cls, data: Any, source: str = "<template>", model_info: ModelFacts | None = None) -> Template:
        """Build from parsed JSON: the native format, the predecessor's layouts, or a LoKI list
        (older layouts are upgraded through ``TEMPLATE_MIGRATIONS``); errors name ``source`` and the
        JSON field. ``model_info`` (a ``ModelInfo`` or dict) fills in the model identity and width
        that imported files do not record; without it they are inferred and a warning is added.
        """
        return _parse_native(TEMPLATE_MIGRATIONS.upgrade(data, source, model_info=model_info), source)

    @classmethod
    def load(cls, path: str | Path, model_info: ModelFacts | None = None) -> Template:
        """Read a template file: the native format, the predecessor's layouts, or a LoKI list
        (see :meth:`from_dict` for ``model_info``)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TemplateError(f"template file not found: {path}") from None
        except IsADirectoryError:
            raise TemplateError(f"{path} is a folder, not a template file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise TemplateError(f"cannot read template {path}: {exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TemplateError(f"{path}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
        return cls.from_dict(data, str(path), model_info)


# ---- model identity ---------------------------------------------------------------------------

def _model_key(name: str) -> str:
    """A model name without org, folder, file type, quantisation tag, case or punctuation."""
    base = re.split(r"[/\\]", name.rstrip("/\\"))[-1].lower()
    base = re.sub(r"\.(gguf|safetensors|bin)$", "", base)
    base = re.sub(r"[.-](q\d\w*|f16|f32|bf16)$", "", base)
    return re.sub(r"[^a-z0-9]", "", base)


def model_identity(info: ModelFacts) -> dict[str, Any]:
    """The ``model`` block of a template from a ``ModelInfo`` (or dict with the same keys)."""
    return {key: _info(info, key, None)
            for key in ("name", "architecture", "num_layers", "hidden_size", "intermediate_size", "fingerprint")}


_MISSING = object()


def _info(info: ModelFacts, key: str, default: Any = _MISSING) -> Any:
    value = info.get(key, default) if isinstance(info, Mapping) else getattr(info, key, default)
    if value is _MISSING:
        raise TemplateError(f"model description has no {key!r}; pass a ModelInfo")
    return value


# ---- comparison ---------------------------------------------------------------------------------

def iou(a: Mapping[int, list[int]], b: Mapping[int, list[int]]) -> float:
    """Intersection over union of two neuron sets, where a neuron is a (layer, channel) pair.

    Two empty sets give 0.0 (nothing in common to speak of).

    >>> iou({0: [1, 2]}, {0: [2, 3], 1: [1]})
    0.25
    """
    set_a = {(int(layer), int(c)) for layer, channels in a.items() for c in channels}
    set_b = {(int(layer), int(c)) for layer, channels in b.items() for c in channels}
    union = len(set_a | set_b)
    return len(set_a & set_b) / union if union else 0.0


@dataclass
class TemplateOverlap:
    """How the components of template ``a`` overlap those of template ``b``.

    ``iou[i][j]`` is the IoU of ``a``'s i-th and ``b``'s j-th component; ``best_matches`` gives,
    per component of ``a``, the component of ``b`` that overlaps it most.
    """

    ids_a: list[int]
    ids_b: list[int]
    iou: list[list[float]]
    best_matches: list[dict[str, Any]]
    mean_best_iou: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ids_a": self.ids_a,
            "ids_b": self.ids_b,
            "iou": self.iou,
            "best_matches": self.best_matches,
            "mean_best_iou": self.mean_best_iou,
            "warnings": self.warnings,
        }


def compare(a: Template, b: Template) -> TemplateOverlap:
    """Pairwise IoU of two templates' components; they must share site and width."""
    if a.site != b.site or not _widths_agree(a, b):
        raise TemplateError(
            f"cannot compare templates at different sites or widths: the first has {a.site} x {a.width}, "
            f"the second {b.site} x {b.width}"
        )
    warnings = []
    if a.width != b.width:
        warnings.append(f"widths {a.width} and {b.width} differ, but the narrower one was inferred from an imported file")
    if a.num_layers != b.num_layers:
        warnings.append(f"the templates describe models with {a.num_layers} and {b.num_layers} layers")
    matrix = [[iou(ca.neurons, cb.neurons) for cb in b.components] for ca in a.components]
    best = []
    for ca, row in zip(a.components, matrix):
        if row:
            j = max(range(len(row)), key=lambda k: (row[k], -k))
            best.append({"component": ca.id, "match": b.components[j].id, "iou": row[j]})
        else:
            best.append({"component": ca.id, "match": None, "iou": 0.0})
    mean = sum(m["iou"] for m in best) / len(best) if best else 0.0
    return TemplateOverlap(a.component_ids, b.component_ids, matrix, best, mean, warnings)


def _widths_agree(a: Template, b: Template) -> bool:
    """Equal widths, or an imported file's inferred width (a lower bound) that fits the other."""
    narrow, wide = (a, b) if a.width <= b.width else (b, a)
    return narrow.width == wide.width or "width" in narrow.method.get("inferred", ())


# ---- native parsing -------------------------------------------------------------------------------

class _Provenance(Section):
    """An open block of provenance (``model``, ``data``, ``method``): its known keys are typed,
    the rest kept as written."""

    model_config = ConfigDict(extra="allow")


class _ModelBlock(_Provenance):
    name: str | None = None
    architecture: str | None = None
    fingerprint: str | None = None
    num_layers: int | None = None
    hidden_size: int | None = None
    intermediate_size: int | None = None


class _MethodBlock(_Provenance):
    name: Literal["ica", "attribution", "imported"] | None = None  # how the components were found


def _layer_key(key: str) -> str:
    if not key.isdigit():
        raise ValueError("layer key must be a layer index such as '3'")
    return key


class _TopToken(_Provenance):
    """One of a component's top tokens (``token``, ``context``, ``activation``, ...)."""


class _ComponentStats(_Provenance):
    top_tokens: list[_TopToken] = []


class ComponentFile(Section):
    """One component as ``template.json`` stores it."""

    id: int
    neurons: dict[Annotated[str, AfterValidator(_layer_key)], list[Annotated[int, Field(ge=0)]]]
    stability: float | None = None
    stats: _ComponentStats = Field(default_factory=_ComponentStats)


class TemplateFile(Section):
    """``template.json`` (format ``fnapi.template/1``) as a strict model: types, required fields and
    unknown keys are checked here; what spans fields (layers, widths, ids) by :class:`Template`."""

    format: Literal["fnapi.template/1"]
    site: SiteName
    width: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    layers: list[Annotated[int, Field(ge=0)]] = []
    model: _ModelBlock = Field(default_factory=_ModelBlock)
    method: _MethodBlock = Field(default_factory=_MethodBlock)
    data: _Provenance = Field(default_factory=_Provenance)
    created: str = ""
    warnings: list[str] = []
    components: list[ComponentFile]


def _parse_native(data: dict[str, Any], source: str) -> Template:
    try:
        parsed = TemplateFile.model_validate(data)
    except ValidationError as exc:
        raise TemplateError.invalid(source, validation_problems(exc, TemplateFile), what="template") from None
    components = [Component(c.id, {int(layer): channels for layer, channels in c.neurons.items()}, c.stability,
                            c.stats.model_dump(exclude_unset=True)) for c in parsed.components]
    try:
        return Template(
            site=parsed.site, width=parsed.width, num_layers=parsed.num_layers, layers=list(parsed.layers),
            components=components, model=parsed.model.model_dump(exclude_unset=True),
            method=parsed.method.model_dump(exclude_unset=True), data=parsed.data.model_dump(exclude_unset=True),
            created=parsed.created, warnings=list(parsed.warnings),
        )
    except TemplateError as exc:
        raise TemplateError(f"{source}: {exc.message}", exc.hint) from None


def _parse_sets(raw: Any, where: str, fail, key_prefix: str = "") -> NeuronSets:
    """Layer-keyed channel lists (keys ``"3"`` or ``"<prefix>3"``) with strict types."""
    if not isinstance(raw, dict):
        raise fail(where, f"must map layer -> channel list (got {_kind(raw)})")
    sets: NeuronSets = {}
    for key, channels in raw.items():
        digits = key[len(key_prefix):] if key.startswith(key_prefix) else ""
        if not digits.isdigit():
            raise fail(f"{where}.{key}", f"layer key must look like '{key_prefix}3'")
        _check_channels(channels, f"{where}.{key}", fail)
        sets[int(digits)] = channels
    return sets


def _check_channels(channels: Any, where: str, fail) -> None:
    if not isinstance(channels, list):
        raise fail(where, f"must be a list of channel indices (got {_kind(channels)})")
    for position, channel in enumerate(channels):
        if not _is_int(channel) or channel < 0:
            raise fail(f"{where}[{position}]", f"channel index must be a non-negative integer (got {channel!r})")


# ---- older layouts ---------------------------------------------------------------------------------

PREDECESSOR_BUILDER = "predecessor templates+layout"
PREDECESSOR_GUIDE = "predecessor components+metadata"
LOKI = "LoKI position lists"


def _template_version(data: Any) -> Any:
    """The ``format`` of a native file, else which older layout the JSON has (None: none known)."""
    if isinstance(data, dict):
        if "format" in data:
            return data["format"]
        if "templates" in data:
            return PREDECESSOR_BUILDER
        if "components" in data and "metadata" in data:
            return PREDECESSOR_GUIDE
    elif isinstance(data, list):
        return LOKI
    return None


#: The layouts template files had before ``fnapi.template/1`` and the step that imports each (see
#: fnapi.migrations). Imported files record no model, so a step takes ``model_info`` to fill it in.
TEMPLATE_MIGRATIONS = Migrations(
    "template", current=TEMPLATE_FORMAT, field="format", read_version=_template_version, error=TemplateError,
    is_newer=lambda version: isinstance(version, str) and version.startswith("fnapi.template/"))


def _failure(source: str):
    def fail(where: str, message: str, hint: str | None = None) -> TemplateError:
        return TemplateError(f"{source}: {where}: {message}", hint)
    return fail


@TEMPLATE_MIGRATIONS.step(LOKI, TEMPLATE_FORMAT)
def _from_loki(data: list[Any], source: str, *, model_info: ModelFacts | None) -> dict[str, Any]:
    """One list of down-projection rows per layer: a single component; the file name may be the quota."""
    fail = _failure(source)
    for layer, channels in enumerate(data):
        _check_channels(channels, f"[{layer}]", fail)
    method: dict[str, Any] = {"name": "imported", "from": "loki"}
    quota = _quota_from_name(Path(source))
    if quota is not None:
        method["quota"] = quota
    return _imported(source, {0: dict(enumerate(data))}, method, file_layers=len(data), file_width=None,
                     file_model=None, model_info=model_info)


@TEMPLATE_MIGRATIONS.step(PREDECESSOR_BUILDER, TEMPLATE_FORMAT)
def _from_predecessor_builder(data: dict[str, Any], source: str, *, model_info: ModelFacts | None) -> dict[str, Any]:
    """``templates`` (component -> layer -> channels) with an optional ``layout`` of captured layers."""
    fail = _failure(source)
    layout = data.get("layout", {})
    if not isinstance(layout, dict):
        raise fail("layout", f"must be an object (got {_kind(layout)})")
    captured = layout.get("captured_layers_sorted")
    if captured is not None and (not isinstance(captured, list) or not all(_is_int(x) and x >= 0 for x in captured)):
        raise fail("layout.captured_layers_sorted", "must be a list of layer indices")
    hidden = layout.get("hidden_size")
    if hidden is not None and (not _is_int(hidden) or hidden <= 0):
        raise fail("layout.hidden_size", f"must be a positive integer (got {hidden!r})")
    comps = _legacy_components(data["templates"], "templates", fail, key_prefix="")
    method = {"name": "imported", "from": "templates+layout"}
    if isinstance(data.get("name"), str):
        method["name_in_file"] = data["name"]
    return _imported(source, comps, method, file_layers=None, file_width=hidden, file_model=None,
                     model_info=model_info, captured=captured)


@TEMPLATE_MIGRATIONS.step(PREDECESSOR_GUIDE, TEMPLATE_FORMAT)
def _from_predecessor_guide(data: dict[str, Any], source: str, *, model_info: ModelFacts | None) -> dict[str, Any]:
    """``components`` with ``layer_N`` keys and a ``metadata`` block that may name the model."""
    fail = _failure(source)
    meta = data["metadata"]
    if not isinstance(meta, dict):
        raise fail("metadata", f"must be an object (got {_kind(meta)})")
    comps = _legacy_components(data["components"], "components", fail, key_prefix="layer_")
    method = {"name": "imported", "from": "components+metadata"}
    for key in ("num_components", "percentile"):
        if _is_number(meta.get(key)):
            method[key] = meta[key]
    file_model = meta.get("model") if isinstance(meta.get("model"), str) else None
    return _imported(source, comps, method, file_layers=None, file_width=None, file_model=file_model,
                     model_info=model_info)


def _legacy_components(raw: Any, where: str, fail, key_prefix: str) -> dict[int, NeuronSets]:
    if not isinstance(raw, dict):
        raise fail(where, f"must map component id -> layers (got {_kind(raw)})")
    comps = {}
    for cid, sets in raw.items():
        if not cid.isdigit():
            raise fail(f"{where}.{cid}", "component id must be an integer string such as '0'")
        comps[int(cid)] = _parse_sets(sets, f"{where}.{cid}", fail, key_prefix=key_prefix)
    return comps


def _imported(source: str, comps: dict[int, NeuronSets], method: dict[str, Any], *, file_layers: int | None,
              file_width: int | None, file_model: str | None, model_info: ModelFacts | None,
              captured: list[int] | None = None) -> dict[str, Any]:
    """A ``fnapi.template/1`` dict from imported neuron sets, with the model shape from
    ``model_info`` or inferred."""
    name = Path(source).name
    used_layers = {layer for sets in comps.values() for layer, ch in sets.items() if ch}
    max_channel = max((c for sets in comps.values() for ch in sets.values() for c in ch), default=-1)
    file_layer_set = set(captured or ()) | {layer for sets in comps.values() for layer in sets}
    warnings = []
    inferred = []
    if model_info is not None:
        model = model_identity(model_info)
        num_layers, width = model["num_layers"], model["hidden_size"]
        if file_layers is not None and file_layers != num_layers:
            raise TemplateError(f"{source}: the file has {file_layers} per-layer lists but the model has {num_layers} layers")
        if file_width is not None and file_width != width:
            raise TemplateError(f"{source}: layout.hidden_size: the file says {file_width} but the model has hidden size {width}")
        warnings.append(f"imported from {name}, which does not record its model; assumed {model.get('name') or 'the given model'}")
    else:
        model = {"name": file_model}
        num_layers = file_layers or (max(file_layer_set) + 1 if file_layer_set else 1)
        width = file_width or max_channel + 1 or 1
        if file_layers is None:
            inferred.append("num_layers")
        if file_width is None:
            inferred.append("width")
            warnings.append(f"width {width} inferred from the largest channel index in {name}")
        warnings.append(UNKNOWN_MODEL_WARNING if not file_model else
                        f"{name} names the model {file_model!r} but records no shape or weights fingerprint")
    if inferred:
        method["inferred"] = inferred
    layers = sorted(set(captured)) if captured else list(range(num_layers))
    if file_layers is None and not captured:
        layers = sorted(used_layers) or [0]
    return {"format": TEMPLATE_FORMAT, "site": "mlp.out", "width": width, "num_layers": num_layers, "layers": layers,
            "model": model, "method": method, "data": {}, "created": _now(), "warnings": warnings,
            "components": [{"id": cid, "neurons": {str(layer): ch for layer, ch in sets.items()}}
                           for cid, sets in sorted(comps.items())]}


def _quota_from_name(path: Path) -> float | None:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)", path.stem)
    return float(match.group(1)) if match else None


# ---- small helpers --------------------------------------------------------------------------------

def _normalise_sets(sets: Mapping[Any, Any]) -> NeuronSets:
    out = {}
    for layer in sorted(sets, key=int):
        channels = sorted({int(c) for c in sets[layer]})
        if channels:
            out[int(layer)] = channels
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__)


def _id_list(ids: list[int]) -> str:
    return "components " + ", ".join(str(i) for i in ids) if ids else "no components"


def _dumps_compact_lists(obj: Any) -> str:
    """``json.dumps(indent=2)`` with small flat things on one line: lists of numbers (neuron
    lists), number-valued objects (per-layer counts) and scalar objects inside lists (top tokens).

    Each such value is swapped for a unique placeholder string before dumping, so string values
    that merely look like JSON are never touched.
    """
    nonce = secrets.token_hex(6)
    flat: list[str] = []

    def inline(node: Any) -> str:
        flat.append(json.dumps(node, ensure_ascii=False))
        return f"@{nonce}:{len(flat) - 1}@"

    def swap(node: Any, in_list: bool = False) -> Any:
        if isinstance(node, dict):
            if node and all(_is_number(v) for v in node.values()):
                return inline(node)
            if in_list and node and all(v is None or isinstance(v, (str, int, float)) for v in node.values()):
                return inline(node)
            return {k: swap(v) for k, v in node.items()}
        if isinstance(node, list):
            if node and all(_is_number(x) for x in node):
                return inline(node)
            return [swap(v, in_list=True) for v in node]
        return node

    text = json.dumps(swap(obj), indent=2, ensure_ascii=False)
    return re.sub(rf'"@{nonce}:(\d+)@"', lambda m: flat[int(m.group(1))], text)
