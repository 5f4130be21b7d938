"""Sites: where in each decoder block neurons are read, masked and trained.

Both sites sit at the MLP's down-projection:

- ``mlp.out``: its OUTPUT channels, one per hidden dimension. Neuron ``i`` is row ``i`` of the
  down-projection weight (and bias entry ``i``): what the functional-network papers call a neuron.
- ``mlp.hidden``: its INPUT channels, the intermediate neurons. Neuron ``j`` is input column ``j``
  of the down-projection and output row ``j`` of each projection that produces the intermediate
  activations (gate and up, fused or not).

A :class:`Site` owns what differs between the two: its width, which side of the down-projection
it reads (so which hook sees its activations), and which weights its neurons are. Capture,
templates, masks, lesions, the memory model and the recipe all ask it rather than compare names.

>>> site("mlp.hidden").width({"hidden_size": 576, "intermediate_size": 1536})
1536
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fnapi.errors import TemplateError

#: The site names, in the order they are offered.
SITE_NAMES = ("mlp.out", "mlp.hidden")


@dataclass(frozen=True)
class Site:
    """One site: ``side`` says whether its neurons are the down-projection's output or input channels."""

    name: str
    side: Literal["output", "input"]
    dimension: Literal["hidden_size", "intermediate_size"]
    about: str

    @property
    def reads_output(self) -> bool:
        """True when the neurons are the down-projection's output channels (its weight rows)."""
        return self.side == "output"

    def width(self, model: Any) -> int:
        """Neurons per layer for a model described by ``model``: a ``ModelInfo``, a mapping with
        ``hidden_size``/``intermediate_size``, or a ``ModelShape`` (``hidden``/``intermediate``)."""
        short = "hidden" if self.dimension == "hidden_size" else "intermediate"
        for key in (self.dimension, short):
            value = model.get(key) if isinstance(model, Mapping) else getattr(model, key, None)
            if value is not None:
                return int(value)
        raise TemplateError(f"cannot tell the width at {self.name}: the model description has no {self.dimension}")

    def width_of(self, in_features: int, out_features: int) -> int:
        """The width from the down-projection's own (in, out) features."""
        return out_features if self.reads_output else in_features

    def observe(self, module: Any, see: Callable[[Any], Any]) -> Any:
        """Hook ``module`` (the down-projection) so ``see(activations)`` runs on this site's tensor
        in every forward pass; what ``see`` returns, when not None, replaces it. Returns the handle."""
        if self.reads_output:
            return module.register_forward_hook(lambda _module, _args, output: see(output))

        def before(_module: Any, args: tuple) -> tuple | None:
            replaced = see(args[0])
            return None if replaced is None else (replaced, *args[1:])

        return module.register_forward_pre_hook(before)


SITES: dict[str, Site] = {
    "mlp.out": Site("mlp.out", "output", "hidden_size", "down-projection output channels (hidden width)"),
    "mlp.hidden": Site("mlp.hidden", "input", "intermediate_size", "down-projection input channels (intermediate width)"),
}
assert tuple(SITES) == SITE_NAMES


def site(name: str) -> Site:
    """The :class:`Site` called ``name``; :class:`TemplateError` naming the sites otherwise."""
    try:
        return SITES[name]
    except (KeyError, TypeError):
        choices = ", ".join(f"{s.name} ({s.about})" for s in SITES.values())
        raise TemplateError(f"site {name!r} is unknown; use {choices}") from None
