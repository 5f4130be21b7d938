"""Neuron masks: switch functional networks off in the forward pass and choose whose weights train.

A :class:`NeuronMask` names channels per layer at one site and carries two independent switches:

* ``ablate`` (``none | selected | unselected``): those channels are zeroed in every forward pass.
  At ``mlp.out`` a forward hook zeroes OUTPUT channels of the block's down-projection; at
  ``mlp.hidden`` a forward pre-hook zeroes its INPUT channels. The hook sits on the module found at
  the adapter's ``down_proj_path``, which on a peft model is the LoRA layer, so the LoRA delta is
  masked too.
* ``train`` (``all | selected | unselected``): which neurons' weights may change. The weights of a
  neuron are

  - at ``mlp.out``, channel ``i``: row ``i`` of the down-projection weight and bias entry ``i``;
    with LoRA, row ``i`` of ``lora_B`` (``lora_A`` is shared by all rows);
  - at ``mlp.hidden``, channel ``j``: input column ``j`` of the down-projection, and output row
    ``j`` (with bias) of every projection beside it that produces the intermediate width
    (``gate_proj``/``up_proj``, ``c_fc``, ``fc1``, ``dense_h_to_4h``; fused ``gate_up_proj`` rows
    ``j`` and ``j + intermediate``); with LoRA, column ``j`` of the down-projection's ``lora_A``
    and row ``j`` of the producers' ``lora_B``.

  Frozen weights stay bit-identical through training, weight decay included: each parameter that
  holds both frozen and trainable entries is frozen as a whole and a small parameter holding only
  the trainable slice is plugged in with :mod:`torch.nn.utils.parametrize`. The optimizer never
  sees the frozen entries, so it keeps no state for them and cannot decay them. Leaving
  :func:`mask` writes the trained slices back, so the model is a plain model again.

  A LoRA update ``B @ A`` can only keep a row (column) fixed while its ``B`` row (``A`` column)
  is zero: frozen ``lora_B`` rows start at zero in a fresh adapter, and frozen ``lora_A``
  columns are set to zero when the mask is installed (this changes nothing while ``B`` is still
  zero). If an adapter already moved the frozen entries, the shared partner (``A``, resp. ``B``)
  is frozen instead.

  ``train="selected"`` means only neuron weights train: every other parameter (attention,
  embeddings, norms, LoRA adapters on other modules) is frozen. ``train="unselected"`` freezes the
  selected neurons and leaves everything else as the training method set it.

**Layers.** A layer is *affected* by the mask exactly when ``neurons`` has an entry for it (the
entry may be empty). A layer filter such as ``"0:4,9:"`` drops the other entries. In a layer that
is not affected nothing is ablated and its neuron weights train as they would without a mask (so
``ablate="unselected"`` never silences a layer the mask does not cover). In an affected layer with
an empty entry, "selected" is the empty set and "unselected" is every channel, with one exception:
``ablate="unselected"`` (the ``preserve`` preset) leaves a layer that no selected network reaches
as it is, as the functional-network method does, instead of zeroing its whole MLP output; its
weights still do not train. ``unreached="ablate"`` keeps the old behaviour (the layer silenced).

**Presets** (``recipe.MASK_PRESETS``; explicit ``ablate``/``train`` override them):

============  ==============  ==============  ======================================================
preset        ablate          train           meaning
============  ==============  ==============  ======================================================
``lesion``    ``selected``    ``all``         networks switched off, everything trains
``preserve``  ``unselected``  ``selected``    only the networks run, only they train
``protect``   ``none``        ``unselected``  networks' weights frozen, everything else trains
``target``    ``none``        ``selected``    only the networks' weights train
============  ==============  ==============  ======================================================

>>> m = NeuronMask("mlp.out", {0: [1, 3], 1: []}, ablate="selected")
>>> m.ablated(0, width=4), m.ablated(1, width=4), m.frozen(0, width=4)
([1, 3], [], [])
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from fnapi.errors import TemplateError, UnsupportedArchitectureError
from fnapi.models.registry import ArchitectureAdapter, get_adapter
from fnapi.recipe import MASK_PRESETS, parse_layers
from fnapi.sites import SITES, site

if TYPE_CHECKING:
    from fnapi.networks.template import Template

ABLATE_CHOICES = ("none", "selected", "unselected")
TRAIN_CHOICES = ("all", "selected", "unselected")
UNREACHED_CHOICES = ("keep", "ablate")


@dataclass(frozen=True)
class NeuronMask:
    """Selected channels per affected layer at one site, plus the ``ablate`` and ``train`` switches.

    ``neurons`` maps each affected layer to its selected channel indices (normalised to sorted
    unique tuples). ``width`` is the site's width when known (checked against the model);
    ``source`` records provenance (template, components) and is not part of the mask's identity.
    """

    site: str
    neurons: Mapping[int, tuple[int, ...]]
    ablate: str = "none"
    train: str = "all"
    width: int | None = None
    source: Mapping[str, Any] = field(default_factory=dict, compare=False)
    #: ``ablate="unselected"`` in a layer with no selected channel: ``keep`` it, or ``ablate`` it whole
    unreached: str = "keep"

    def __post_init__(self) -> None:
        if self.site not in SITES:
            raise TemplateError(f"mask site {self.site!r} is not a site; use one of {', '.join(SITES)}")
        if self.ablate not in ABLATE_CHOICES:
            raise TemplateError(f"mask ablate {self.ablate!r} is not one of {', '.join(ABLATE_CHOICES)}")
        if self.train not in TRAIN_CHOICES:
            raise TemplateError(f"mask train {self.train!r} is not one of {', '.join(TRAIN_CHOICES)}")
        if self.unreached not in UNREACHED_CHOICES:
            raise TemplateError(f"mask unreached {self.unreached!r} is not one of {', '.join(UNREACHED_CHOICES)}")
        neurons: dict[int, tuple[int, ...]] = {}
        for layer, channels in sorted((int(k), v) for k, v in dict(self.neurons).items()):
            chosen = tuple(sorted({int(c) for c in channels}))
            if layer < 0:
                raise TemplateError(f"mask layer {layer} is negative")
            if chosen and chosen[0] < 0:
                raise TemplateError(f"mask layer {layer}: channel {chosen[0]} is negative")
            if chosen and self.width is not None and chosen[-1] >= self.width:
                raise TemplateError(f"mask layer {layer}: channel {chosen[-1]} is outside 0-{self.width - 1} "
                                    f"(width {self.width} at {self.site})")
            neurons[layer] = chosen
        object.__setattr__(self, "neurons", neurons)
        object.__setattr__(self, "source", dict(self.source))

    # ---- what the mask does to one layer -------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        """The affected layers, ascending."""
        return list(self.neurons)

    @property
    def is_noop(self) -> bool:
        """True when the mask neither ablates nor restricts training."""
        return self.ablate == "none" and self.train == "all"

    def selected(self, layer: int) -> list[int]:
        """Selected channels of ``layer`` (empty for layers the mask does not affect)."""
        return list(self.neurons.get(layer, ()))

    def ablated(self, layer: int, width: int) -> list[int]:
        """Channels of ``layer`` zeroed in the forward pass (none in a layer no selected network reaches
        when only the networks run, unless ``unreached`` is ``ablate``)."""
        if self.ablate == "unselected" and self.unreached == "keep" and not self.neurons.get(layer, ()):
            return []
        return self._pick(self.ablate, layer, width)

    def frozen(self, layer: int, width: int) -> list[int]:
        """Channels of ``layer`` whose weights must not change."""
        which = {"all": "none", "selected": "unselected", "unselected": "selected"}[self.train]
        return self._pick(which, layer, width)

    def _pick(self, which: str, layer: int, width: int) -> list[int]:
        if layer not in self.neurons or which == "none":
            return []
        chosen = self.neurons[layer]
        if which == "selected":
            return list(chosen)
        keep = set(chosen)
        return [c for c in range(width) if c not in keep]

    # ---- derived masks ---------------------------------------------------------------------------
    def restrict(self, layers: list[int] | str | None, num_layers: int) -> NeuronMask:
        """The mask on the given layers only (a list, or a filter such as ``"0:4,9:"``)."""
        if layers is None:
            return self
        keep = set(parse_layers(layers, num_layers) if isinstance(layers, str) else layers)
        return dataclasses.replace(self, neurons={k: v for k, v in self.neurons.items() if k in keep})

    def with_switches(self, *, preset: str | None = None, ablate: str | None = None,
                      train: str | None = None) -> NeuronMask:
        """A copy with the switches set by ``preset`` and/or explicit values (explicit wins)."""
        if preset is None and ablate is None and train is None:
            return self
        base_ablate, base_train = _preset_switches(preset) if preset is not None else (self.ablate, self.train)
        return dataclasses.replace(self, ablate=ablate or base_ablate, train=train or base_train)

    # ---- serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; :meth:`from_dict` reads it back."""
        data = {
            "site": self.site,
            "ablate": self.ablate,
            "train": self.train,
            "width": self.width,
            "neurons": {str(layer): list(channels) for layer, channels in self.neurons.items()},
            "source": self.source,
        }
        if self.ablate == "unselected":  # the only switch it changes; other masks keep their fingerprints
            data["unreached"] = self.unreached
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NeuronMask:
        return cls(site=data["site"], neurons={int(k): v for k, v in data["neurons"].items()},
                   ablate=data.get("ablate", "none"), train=data.get("train", "all"),
                   width=data.get("width"), source=data.get("source", {}), unreached=data.get("unreached", "keep"))

    def fingerprint(self) -> str:
        """Short hash of what the mask does (site, switches, channels), ignoring provenance."""
        data = self.to_dict()
        data.pop("source")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]

    def describe(self) -> str:
        """One line for logs: site, switches and neuron counts."""
        return f"{self.site}: {self._counted()}, ablate {self.ablate}, train {self.train}"

    def _sizes(self) -> tuple[int, int]:
        """(neurons, layers they sit in); layers the networks do not reach hold [] and do not count."""
        return sum(len(v) for v in self.neurons.values()), sum(1 for v in self.neurons.values() if v)

    def _counted(self) -> str:
        count, layers = self._sizes()
        return f"{_plural(count, 'selected neuron')} in {_plural(layers, 'layer')}"

    def in_words(self) -> str:
        """What the mask does, for people: ``3 networks, 1,036 neurons at mlp.out in 4 layers: frozen ...``."""
        components = self.source.get("components")
        if components == "stable":
            networks = f"the {_plural(int(self.source.get('top_stable', 3)), 'most stable network')}"
        elif components == "all":
            networks = "every component of the template"
        elif isinstance(components, list):
            networks = _plural(len(components), "network")
        else:
            networks = "the networks"
        if self.source.get("control") == "random":
            networks = f"random neurons in place of {networks}"
        count, layers = self._sizes()
        what = {
            ("none", "unselected"): "frozen, so what they hold survives; everything else trains",
            ("none", "selected"): "the only weights that train; the rest stays as it was",
            ("selected", "all"): "switched off in the forward pass while the whole model trains",
            ("unselected", "selected"): "the only neurons left on, and the only ones that train",
            ("none", "all"): "marked, but nothing is frozen or switched off (the whole model trains)",
        }.get((self.ablate, self.train), f"ablate {self.ablate}, train {self.train}")
        return f"{networks}, {count:,} neuron{'s' if count != 1 else ''} at {self.site} in {_plural(layers, 'layer')}: {what}"


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _preset_switches(preset: str) -> tuple[str, str]:
    if preset not in MASK_PRESETS:
        raise TemplateError(f"mask preset {preset!r} is unknown; use one of {', '.join(MASK_PRESETS)}")
    return MASK_PRESETS[preset]


def from_template(template: Any, components: list[int] | Literal["stable", "all"], *, preset: str | None = None,
                  ablate: str | None = None, train: str | None = None, layers: list[int] | str | None = None,
                  top_stable: int = 3) -> NeuronMask:
    """Build a mask from a template's components.

    The affected layers are the template's layers kept by ``layers`` (a list or a filter string
    read against the template's layer count). ``preset`` sets both switches
    (see :data:`fnapi.recipe.MASK_PRESETS`); explicit ``ablate``/``train`` override it.
    """
    keep = parse_layers(layers, template.num_layers) if isinstance(layers, str) else layers
    neurons = template.neuron_sets(components, top_stable=top_stable, layers=keep)
    base_ablate, base_train = _preset_switches(preset or "none")
    # An imported template may only know a lower bound of its width; the model check then uses channels.
    width = None if "width" in set(template.method.get("inferred", ())) else template.width
    source = {"components": components if components in ("stable", "all") else [int(c) for c in components],
              "top_stable": top_stable, "template_created": template.created,
              "template_model": template.model.get("name"), "preset": preset}
    return NeuronMask(template.site, neurons, ablate=ablate or base_ablate, train=train or base_train,
                      width=width, source=source)


def from_section(template: Any, section: Any, *, seed: int = 0) -> NeuronMask:
    """The mask a recipe's ``mask`` section describes (``recipe.MaskSection``); with
    ``control: random`` the networks' neurons are replaced by :func:`random_like` draws (``seed``)."""
    ablate, train = section.switches()
    neuron_mask = from_template(template, section.components, preset=section.preset, ablate=ablate, train=train,
                         layers=section.layers, top_stable=section.top_stable)
    neuron_mask = dataclasses.replace(neuron_mask, unreached=getattr(section, "unreached", "keep"))
    if getattr(section, "control", "none") == "random":
        neuron_mask = random_like(neuron_mask, template.width, seed=seed)
    return neuron_mask


def random_like(neuron_mask: NeuronMask, width: int, *, seed: int) -> NeuronMask:
    """The random-neuron control of ``neuron_mask``: in every affected layer as many channels as ``neuron_mask``
    selects there, drawn uniformly from the site's ``width`` (seeded), with the same switches."""
    rng = np.random.default_rng([seed, 7919, width])
    neurons = {layer: sorted(int(c) for c in rng.choice(width, size=len(channels), replace=False))
               for layer, channels in neuron_mask.neurons.items()}
    return dataclasses.replace(neuron_mask, neurons=neurons, width=width,
                               source={**neuron_mask.source, "control": "random", "control_seed": seed})


def resolve(model: nn.Module, template_or_mask: Template | NeuronMask | Mapping[int, Sequence[int]], *,
            components: list[int] | str | None = None, ablate: str | None = None, train: str | None = None, preset: str | None = None,
            layers: list[int] | str | None = None, top_stable: int = 3, site: str | None = None) -> NeuronMask:
    """Turn what :func:`mask` accepts (Template, NeuronMask, or ``{layer: channels}``) into a NeuronMask.

    A template is checked against the model's shape first.
    """
    adapter = get_adapter(model)
    num_layers = adapter.num_layers(model)
    if isinstance(template_or_mask, NeuronMask):
        if components is not None:
            raise TypeError("components only applies when masking with a template")
        neuron_mask = template_or_mask.with_switches(preset=preset, ablate=ablate, train=train)
        return neuron_mask.restrict(layers, num_layers)
    if isinstance(template_or_mask, Mapping):
        neuron_mask = NeuronMask(site or "mlp.out", template_or_mask, *_preset_switches(preset or "none"))
        return neuron_mask.with_switches(ablate=ablate, train=train).restrict(layers, num_layers)
    template = template_or_mask
    template.check_compatible({"num_layers": num_layers, **_model_widths(adapter, model)})
    if components is None:
        raise TemplateError("masking with a template needs components: a list of component ids or 'stable'",
                            f"the template has components {template.component_ids}")
    return from_template(template, components, preset=preset, ablate=ablate, train=train, layers=layers,
                         top_stable=top_stable)


# ---- module helpers ----------------------------------------------------------------------------------

def _base(module: nn.Module) -> nn.Module:
    """The Linear/Conv1D inside a peft LoRA layer (or the module itself)."""
    return getattr(module, "base_layer", module)


def _is_conv1d(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(_base(module), Conv1D)


def _features(module: nn.Module) -> tuple[int, int]:
    """(in, out) features, read from attributes so packed quantized weights do not mislead."""
    base = _base(module)
    if _is_conv1d(base):
        return int(base.weight.shape[0]), int(base.nf)
    return int(base.in_features), int(base.out_features)


def _model_widths(adapter: ArchitectureAdapter, model: nn.Module) -> dict[str, int]:
    """``hidden_size`` and ``intermediate_size`` as the down-projection has them (its out and in features)."""
    in_features, out_features = _features(adapter.down_proj(model, 0))
    return {"hidden_size": out_features, "intermediate_size": in_features}


def _lora_pairs(module: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(lora_A, lora_B) Linear pairs of every adapter on a peft LoRA layer (none on a plain layer)."""
    lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
    if not isinstance(lora_a, nn.ModuleDict) or not isinstance(lora_b, nn.ModuleDict):
        return []
    return [(lora_a[name], lora_b[name]) for name in lora_b.keys() if name in lora_a]


def _producers(adapter: ArchitectureAdapter, model: nn.Module, layer: int, down: nn.Module) -> list[tuple[nn.Module, int]]:
    """Projections beside the down-projection that produce the intermediate width: (module, fused copies)."""
    block = adapter.blocks(model)[layer]
    parent_path, _, _ = adapter.down_proj_path.rpartition(".")
    parent = block.get_submodule(parent_path) if parent_path else block
    intermediate = _features(down)[0]
    found = []
    for child in parent.children():
        is_projection = isinstance(_base(child), nn.Linear) or _is_conv1d(child)
        if child is down or not is_projection:
            continue
        out_features = _features(child)[1]
        if out_features % intermediate == 0:
            found.append((child, out_features // intermediate))
    return found


# ---- the plan: which entries of which parameters freeze ----------------------------------------------

@dataclass
class _Slice:
    """Entries ``index`` along ``dim`` of ``module.<name>`` that must not change."""

    module: nn.Module
    name: str
    dim: int
    index: torch.Tensor
    label: str
    zero: bool = False  # set the frozen entries to zero first (fresh LoRA A columns)

    @property
    def param(self) -> torch.Tensor:
        return getattr(self.module, self.name)


@dataclass
class _Plan:
    slices: list[_Slice]
    freeze: list[torch.Tensor]  # parameters frozen whole
    hooks: list[tuple[nn.Module, torch.Tensor]]  # (down_proj module, bool "zero this channel" vector)


def _plan(model: nn.Module, neuron_mask: NeuronMask) -> _Plan:
    """Work out hooks and freezing for ``neuron_mask`` on ``model`` without changing anything."""
    adapter = get_adapter(model)
    num_layers = adapter.num_layers(model)
    width = site(neuron_mask.site).width(_model_widths(adapter, model))
    if neuron_mask.width is not None and neuron_mask.width != width:
        raise TemplateError(f"mask was made for width {neuron_mask.width} at {neuron_mask.site} but the model has "
                            f"width {width} there")
    outside = [layer for layer in neuron_mask.layers if layer >= num_layers]
    if outside:
        raise TemplateError(f"mask layers {outside} do not exist: the model has {num_layers} layers (0-{num_layers - 1})")
    for layer in neuron_mask.layers:
        if neuron_mask.neurons[layer] and neuron_mask.neurons[layer][-1] >= width:
            raise TemplateError(f"mask layer {layer}: channel {neuron_mask.neurons[layer][-1]} is outside 0-{width - 1} "
                                f"(width {width} at {neuron_mask.site})")

    plan = _Plan([], [], [])
    neuron_params: set[int] = set()
    for layer in range(num_layers):
        down = adapter.down_proj(model, layer)
        blocks = _neuron_blocks(adapter, model, layer, down, neuron_mask.site)
        neuron_params.update(id(p) for block in blocks for p in block.params())
        if neuron_mask.ablate != "none" and neuron_mask.ablated(layer, width):
            drop = torch.zeros(width, dtype=torch.bool)
            drop[neuron_mask.ablated(layer, width)] = True
            plan.hooks.append((down, drop))
        frozen = neuron_mask.frozen(layer, width)
        if frozen:
            for block in blocks:
                block.plan(torch.tensor(frozen, dtype=torch.long), f"layer {layer}", plan)
    if neuron_mask.train == "selected":
        # Only neuron weights may train; everything else the method would train is frozen.
        plan.freeze.extend(p for p in model.parameters() if p.requires_grad and id(p) not in neuron_params)
    return plan


@dataclass
class _NeuronBlock:
    """One module's share of the neuron weights at a site.

    ``out_side``: neurons index the module's OUTPUT channels (down-projection at ``mlp.out``,
    producers at ``mlp.hidden``), expanded ``copies`` times for fused projections; otherwise they
    index its INPUT channels (down-projection at ``mlp.hidden``).
    """

    module: nn.Module
    out_side: bool
    copies: int = 1

    def params(self) -> list[torch.Tensor]:
        base = _base(self.module)
        params = [base.weight] + ([base.bias] if self.out_side and base.bias is not None else [])
        for lora_a, lora_b in _lora_pairs(self.module):
            params += [lora_a.weight, lora_b.weight] + ([lora_b.bias] if lora_b.bias is not None else [])
        return params

    def plan(self, neurons: torch.Tensor, where: str, plan: _Plan) -> None:
        base = _base(self.module)
        name = type(base).__name__
        width = _features(self.module)[1 if self.out_side else 0] // self.copies
        index = torch.cat([neurons + k * width for k in range(self.copies)])
        out_dim = 1 if _is_conv1d(base) else 0
        if self.out_side:
            plan.slices.append(_Slice(base, "weight", out_dim, index, f"{where} {name}.weight rows"))
            if base.bias is not None:
                plan.slices.append(_Slice(base, "bias", 0, index, f"{where} {name}.bias"))
        else:
            plan.slices.append(_Slice(base, "weight", 1 - out_dim, index, f"{where} {name}.weight columns"))
        for n, (lora_a, lora_b) in enumerate(_lora_pairs(self.module)):
            tag = f"{where} {name} lora[{n}]"
            if self.out_side:
                plan.slices.append(_Slice(lora_b, "weight", 0, index, f"{tag}.B rows"))
                if lora_b.bias is not None:
                    plan.slices.append(_Slice(lora_b, "bias", 0, index, f"{tag}.B bias"))
                # B @ A keeps a frozen row fixed while A trains only if that B row is zero.
                if lora_b.weight.detach().index_select(0, index).any():
                    plan.freeze.append(lora_a.weight)
            else:
                frozen_cols_set = bool(lora_a.weight.detach().index_select(1, index).any())
                b_is_zero = not lora_b.weight.detach().any()
                plan.slices.append(_Slice(lora_a, "weight", 1, index, f"{tag}.A columns",
                                          zero=frozen_cols_set and b_is_zero))
                if frozen_cols_set and not b_is_zero:
                    plan.freeze.append(lora_b.weight)
                    if lora_b.bias is not None:
                        plan.freeze.append(lora_b.bias)


def _neuron_blocks(adapter: ArchitectureAdapter, model: nn.Module, layer: int, down: nn.Module,
                   name: str) -> list[_NeuronBlock]:
    """The weights a site's neurons are: the down-projection's rows at a site that reads its output;
    its input columns and the rows of every projection producing them at a site that reads its input."""
    if site(name).reads_output:
        return [_NeuronBlock(down, out_side=True)]
    producers = _producers(adapter, model, layer, down)
    if not producers:
        raise UnsupportedArchitectureError(
            f"{adapter.family}: no projection producing the intermediate width found next to "
            f"{adapter.down_proj_path!r} in layer {layer}, so mlp.hidden neurons cannot be frozen")
    return [_NeuronBlock(down, out_side=False)] + [_NeuronBlock(p, out_side=True, copies=c) for p, c in producers]


# ---- installing and removing -------------------------------------------------------------------------

class _TrainableSlice(nn.Module):
    """Parametrization: the frozen tensor with the trainable entries taken from ``values``."""

    def __init__(self, dim: int, index: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("index", index, persistent=False)
        self.values = nn.Parameter(values)

    def forward(self, frozen: torch.Tensor) -> torch.Tensor:
        return frozen.index_copy(self.dim, self.index, self.values)


class _ZeroChannels:
    """Hook that zeroes the channels flagged in ``drop`` (last dimension) of an output or input."""

    def __init__(self, drop: torch.Tensor) -> None:
        self.drop = drop

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.drop.device != tensor.device:
            self.drop = self.drop.to(tensor.device)
        return tensor.masked_fill(self.drop, 0)


class AppliedMask:
    """A mask installed on a model (what :func:`mask` yields).

    Use :meth:`remove` (or leave the ``with`` block) to write trained slices back and take the
    hooks and freezing off again.
    """

    def __init__(self, model: nn.Module, neuron_mask: NeuronMask) -> None:
        self.model = model
        self.mask = neuron_mask
        self._plan = _plan(model, neuron_mask)
        self._handles: list[Any] = []
        self._requires_grad: list[tuple[torch.Tensor, bool]] = []
        self._parametrized: list[tuple[nn.Module, str]] = []

    def install(self) -> AppliedMask:
        """Register the ablation hooks and the training restriction."""
        where = site(self.mask.site)
        for module, drop in self._plan.hooks:
            self._handles.append(where.observe(module, _ZeroChannels(drop).apply))
        for param in self._plan.freeze:
            self._freeze(param)
        frozen_whole = {id(p) for p in self._plan.freeze}
        for (module, name), slices in _group_slices(self._plan.slices).items():
            param = getattr(module, name)
            dim, index, zero = slices[0].dim, _union(s.index for s in slices), any(s.zero for s in slices)
            if zero:
                with torch.no_grad():
                    param.index_fill_(dim, index.to(param.device), 0)
            if not param.requires_grad or id(param) in frozen_whole:
                continue
            keep = torch.ones(param.shape[dim], dtype=torch.bool)
            keep[index] = False
            trainable = keep.nonzero().flatten().to(param.device)
            self._freeze(param)
            if len(trainable):
                values = param.detach().index_select(dim, trainable).clone()
                parametrize.register_parametrization(module, name, _TrainableSlice(dim, trainable, values),
                                                     unsafe=True)
                self._parametrized.append((module, name))
        return self

    def _freeze(self, param: torch.Tensor) -> None:
        if param.requires_grad:
            self._requires_grad.append((param, True))
            param.requires_grad_(False)

    def merge(self) -> None:
        """Write the trained slices into the weights and drop the extra parameters."""
        while self._parametrized:
            module, name = self._parametrized.pop()
            plist = module.parametrizations[name]
            piece = plist[0]
            with torch.no_grad():
                plist.original.index_copy_(piece.dim, piece.index, piece.values.detach())
            parametrize.remove_parametrizations(module, name, leave_parametrized=False)

    def remove(self) -> None:
        """Merge trained slices, remove hooks, restore ``requires_grad``. Safe to call twice."""
        try:
            self.merge()
        finally:
            while self._handles:
                self._handles.pop().remove()
            while self._requires_grad:
                param, flag = self._requires_grad.pop()
                param.requires_grad_(flag)

    def trainable_parameters(self) -> int:
        """Number of parameters that currently train (the mask's slices included)."""
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def frozen_checksums(self) -> dict[str, str]:
        """Hashes of every frozen block of neuron weights (see :func:`frozen_checksums`)."""
        return _checksums(self._plan)


def _group_slices(slices: list[_Slice]) -> dict[tuple[nn.Module, str], list[_Slice]]:
    groups: dict[tuple[nn.Module, str], list[_Slice]] = {}
    for piece in slices:
        groups.setdefault((piece.module, piece.name), []).append(piece)
    return groups


def _union(indices: Iterator[torch.Tensor]) -> torch.Tensor:
    return torch.unique(torch.cat(list(indices)))


@contextlib.contextmanager
def mask(model: nn.Module, template_or_mask: Template | NeuronMask | Mapping[int, Sequence[int]], *,
         components: list[int] | str | None = None, ablate: str | None = None, train: str | None = None, preset: str | None = None,
         layers: list[int] | str | None = None, top_stable: int = 3, site: str | None = None) -> Iterator[AppliedMask]:
    """Apply a mask for the duration of a ``with`` block; everything is removed on the way out.

    ``template_or_mask`` is a Template (give ``components``), a :class:`NeuronMask`, or a dict
    ``{layer: channels}`` (at ``site``, default ``mlp.out``). ``preset``, ``ablate``, ``train`` and
    ``layers`` set or override the switches and the layer filter. Works on plain transformers
    models, peft LoRA models and GPT-2's Conv1D. Training inside the block keeps frozen weights
    bit-identical; leaving it writes the trained slices back into the weights.

    >>> with mask(model, template, components=[0, 2], preset="protect") as applied:  # doctest: +SKIP
    ...     trainer.train()
    """
    neuron_mask = resolve(model, template_or_mask, components=components, ablate=ablate, train=train, preset=preset,
                   layers=layers, top_stable=top_stable, site=site)
    applied = AppliedMask(model, neuron_mask)
    try:
        applied.install()
        yield applied
    finally:
        applied.remove()


# ---- helpers for training and saving -----------------------------------------------------------------

def trainable_parameters(model: nn.Module, neuron_mask: NeuronMask | None = None) -> int:
    """How many parameters would train with ``neuron_mask`` installed (without installing it).

    Starts from the parameters that currently require grad (what the training method trains).
    """
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if neuron_mask is None or neuron_mask.train == "all":
        return total
    plan = _plan(model, neuron_mask)
    frozen_whole = {id(p) for p in plan.freeze if p.requires_grad}
    total -= sum(p.numel() for p in {id(p): p for p in plan.freeze if p.requires_grad}.values())
    for (module, name), slices in _group_slices(plan.slices).items():
        param = getattr(module, name)
        if param.requires_grad and id(param) not in frozen_whole:
            index = _union(s.index for s in slices)
            total -= len(index) * (param.numel() // param.shape[slices[0].dim])
    return total


def frozen_checksums(model: nn.Module, neuron_mask: NeuronMask) -> dict[str, str]:
    """SHA-256 of each frozen block of neuron weights, keyed by layer and parameter.

    Take it once the mask is installed (installing zeroes frozen LoRA A columns) and again after
    training; equal dicts mean the frozen weights did not move by a single bit.
    """
    return _checksums(_plan(model, neuron_mask))


def _checksums(plan: _Plan) -> dict[str, str]:
    sums = {}
    for piece in plan.slices:
        block = piece.param.detach().index_select(piece.dim, piece.index.to(piece.param.device))
        digest = hashlib.sha256(block.cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
        # Projections of one type beside each other (gate and up at mlp.hidden) share a label:
        # number the later ones, or one block's hash would overwrite the other's.
        label, n = piece.label, 2
        while label in sums:
            label, n = f"{piece.label} #{n}", n + 1
        sums[label] = digest[:16]
    return sums


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every parametrized tensor under its plain name and current value.

    Checkpoints written from it load into a model without the mask installed.
    """
    state = model.state_dict()
    plain: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".parametrizations." not in key:
            plain[key] = value
            continue
        prefix, _, rest = key.partition(".parametrizations.")
        name, _, tail = rest.partition(".")
        if tail == "original":
            owner = model.get_submodule(prefix)
            plain[f"{prefix}.{name}"] = getattr(owner, name).detach()
    return plain


def bake_lesion(model: nn.Module, neuron_mask: NeuronMask) -> None:
    """Zero the ablated channels in the weights, so the model behaves masked without hooks.

    ``mlp.out``: the down-projection's output rows and bias entries (and LoRA B rows);
    ``mlp.hidden``: its input columns (and LoRA A columns). Call it outside :func:`mask`.
    """
    adapter = get_adapter(model)
    where = site(neuron_mask.site)
    width = where.width(_model_widths(adapter, model))
    for layer in neuron_mask.layers:
        channels = neuron_mask.ablated(layer, width)
        if not channels:
            continue
        down = adapter.down_proj(model, layer)
        base = _base(down)
        if any(parametrize.is_parametrized(m) for m in down.modules()):
            raise RuntimeError("bake_lesion needs a model without an installed mask; call it after the with block")
        index = torch.tensor(channels, dtype=torch.long, device=base.weight.device)
        out_dim = 1 if _is_conv1d(base) else 0
        with torch.no_grad():
            if where.reads_output:
                base.weight.index_fill_(out_dim, index, 0)
                if base.bias is not None:
                    base.bias.index_fill_(0, index, 0)
                for _, lora_b in _lora_pairs(down):
                    lora_b.weight.index_fill_(0, index, 0)
                    if lora_b.bias is not None:
                        lora_b.bias.index_fill_(0, index, 0)
            else:
                base.weight.index_fill_(1 - out_dim, index, 0)
                for lora_a, _ in _lora_pairs(down):
                    lora_a.weight.index_fill_(1, index, 0)
