"""The template browser: a tree of template -> component -> layer -> neurons and a preview pane.

Tree nodes carry the model objects they stand for in ``node.data`` and the preview follows
``Tree.NodeHighlighted``. Layers and neurons are added when their parent is first expanded, so
large templates open at once. With ``selectable`` the space key picks components (the wizard's
networks step).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Input, Label, Static, Tree
from textual.widgets.tree import TreeNode

from fnapi.networks.template import Component, Template

BAR_WIDTH = 20  # with the layer name and count, fits the preview at 80 columns
#: Heatmap shades, from no neurons to the most neurons any component has in one layer.
SHADES = " ░▒▓█"
#: Overlapping pairs listed in the template's preview (all of them in each component's).
OVERLAPS_SHOWN = 6


@dataclass(frozen=True)
class LayerRef:
    """A tree node for one layer of one component."""

    component: Component
    layer: int


@dataclass(frozen=True)
class NeuronRef:
    """A tree node for one neuron (layer, channel) of one component."""

    component: Component
    layer: int
    channel: int


NodeData = Template | Component | LayerRef | NeuronRef


# ---- what the preview pane shows -------------------------------------------------------------

def _neurons(count: int) -> str:
    return f"{count:,} neuron{'' if count == 1 else 's'}"


def _stability(component: Component) -> str:
    return "n/a" if component.stability is None else f"{component.stability:.2f}"


def template_preview(template: Template, title: str) -> RenderableType:
    """Identity, shape, method and data of a template."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    model = template.model
    table.add_row("file", title)
    table.add_row("model", f"{model.get('name') or '?'} ({model.get('architecture') or '?'})")
    table.add_row("site", f"{template.site}, width {template.width}")
    table.add_row("layers", f"{len(template.layers)} of {template.num_layers}")
    method = template.method
    details = ", ".join(f"{k} {method[k]}" for k in ("components", "runs", "mode", "seed") if k in method)
    table.add_row("method", f"{method.get('name', '?')}" + (f" ({details})" if details else ""))
    data = template.data
    if data.get("sources"):
        table.add_row("data", f"{', '.join(map(str, data['sources']))}: {data.get('rows', '?')} rows, "
                              f"{data.get('tokens', '?')} tokens")
    table.add_row("components", str(len(template.components)))
    parts: list[RenderableType] = [table]
    for warning in template.warnings:
        parts.append(Text(f"! {warning}", style="yellow"))
    if template.components:
        parts += [Text(""), heatmap(template), Text(""), overlap_view(template)]
    return Group(*parts)


def shade(count: int, most: int) -> str:
    """One heatmap cell: blank for none, then four shades up to ``most``."""
    if count <= 0 or most <= 0:
        return SHADES[0]
    return SHADES[min(len(SHADES) - 1, 1 + (len(SHADES) - 2) * count // most)]


def heatmap(template: Template) -> RenderableType:
    """Neurons per layer (columns) and component (rows), one shaded cell each, scaled to each
    component's busiest layer: one massive first-token component would otherwise leave every
    other row pale. One character per layer, so a 30-layer model fits the preview at 80 columns
    (sizes are in the tree)."""
    layers = template.layers
    grid = Table.grid(padding=(0, 1))
    grid.add_column(justify="right", no_wrap=True)
    grid.add_column(no_wrap=True, overflow="crop")
    ticks = "".join(str(layer % 10) if layer % 5 == 0 else "·" for layer in layers)
    grid.add_row("", Text(ticks, style="dim"))
    for component in sorted(template.components, key=lambda c: c.id):
        most = max(component.per_layer.values(), default=0)
        cells = "".join(shade(component.per_layer.get(layer, 0), most) for layer in layers)
        grid.add_row(f"#{component.id}", Text(cells, style="cyan on grey11"))
    title = Text.assemble(("neurons per layer", "bold"),
                          (f" (layers {layers[0]}-{layers[-1]}; █ = the component's busiest layer)" if layers
                           else "", "dim"))
    return Group(title, grid)


def overlap_view(template: Template, component: Component | None = None) -> RenderableType:
    """Components that share neurons: the most-shared pairs, or every partner of ``component``."""
    pairs = template.overlaps()
    if component is not None:
        pairs = [p for p in pairs if component.id in p[:2]]
    title = Text("neurons shared with other components" if component is not None
                 else "neurons shared between components", style="bold")
    if not pairs:
        return Group(title, Text("  no neuron is shared" + ("" if component is None else " with another component"),
                                 style="dim"))
    lines = [title]
    shown = pairs if component is not None else pairs[:OVERLAPS_SHOWN]
    for a, b, shared, value in shown:
        names = f"#{b}" if component is not None and a == component.id else \
            f"#{a}" if component is not None else f"#{a} & #{b}"
        lines.append(Text(f"  {names}: {shared:,} shared, IoU {value:.2f}"))
    if len(pairs) > len(shown):
        lines.append(Text(f"  … {len(pairs) - len(shown)} more pairs", style="dim"))
    return Group(*lines)


def component_preview(template: Template, component: Component) -> RenderableType:
    """Size, stability, neurons per layer as bars, and the tokens the component fires on."""
    total = template.width * len(template.layers)
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("component", f"#{component.id}")
    head.add_row("stability", _stability(component)
                 + (f" (found in {component.stats['runs_found']} runs)" if "runs_found" in component.stats else ""))
    head.add_row("size", f"{_neurons(component.size)}, {100 * component.size / total:.2f}% of {template.site}"
                 if total else _neurons(component.size))
    layers = Table.grid(padding=(0, 1))
    layers.add_column(justify="right", no_wrap=True)
    layers.add_column(no_wrap=True, overflow="crop")  # a bar may lose cells, never the count beside it
    layers.add_column(justify="right", no_wrap=True)
    most = max(component.per_layer.values(), default=0)
    for layer in template.layers:
        count = component.per_layer.get(layer, 0)
        bar = "█" * (round(BAR_WIDTH * count / most) if most else 0)
        layers.add_row(f"L{layer}", Text(bar, style="cyan"), str(count))
    parts: list[RenderableType] = [head, Text("\nneurons per layer", style="bold"), layers, Text(""),
                                   overlap_view(template, component)]
    tokens = component.stats.get("top_tokens") or []
    position = component.one_position
    if position is not None:
        where = "the first token" if position == 0 else f"position {position}"
        parts.append(Text(f"\n⚠ every top token sits at {where}: this component tracks where a token is, "
                          "not what the text says (a massive-activation channel); protecting it keeps little "
                          "knowledge", style="bold yellow"))
    if tokens:
        parts.append(Text("\ntop tokens (in context)", style="bold"))
        for entry in tokens:
            parts.append(token_line(entry))
    return Group(*parts)


def visible(token: str) -> str:
    """A token with its whitespace made visible: ``" the"`` -> ``"␣the"``."""
    return token.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥")


def token_line(entry: object) -> Text:
    """One top token shown at the end of the text before it, with its activation."""
    if not isinstance(entry, dict):
        return Text(f"  {entry}")
    token, context = str(entry.get("token", "")), str(entry.get("context", ""))
    before = context[: len(context) - len(token)] if context.endswith(token) else context + " "
    line = Text("  ")
    line.append(" ".join(before.replace("\n", "⏎").split(" ")[-8:]), style="dim")
    line.append(token.replace("\n", "⏎"), style="bold reverse")
    if "activation" in entry:
        line.append(f"  {entry['activation']:.3g}", style="dim")
    return line


def layer_preview(ref: LayerRef) -> RenderableType:
    channels = ref.component.neurons.get(ref.layer, [])
    return Group(Text(f"component #{ref.component.id}, layer {ref.layer}: {_neurons(len(channels))}", style="bold"),
                 Text(", ".join(map(str, channels)) or "none"))


def neuron_preview(template: Template, ref: NeuronRef) -> RenderableType:
    """One neuron: its loading in every component that holds it, its activation's mean and spread,
    and the tokens it fires on most (counted over its strongest rows)."""
    holders = [c for c in template.components if ref.channel in c.neurons.get(ref.layer, [])]
    others = [c.id for c in holders if c.id != ref.component.id]
    parts: list[RenderableType] = [
        Text(f"neuron {ref.channel} of layer {ref.layer} ({template.site})", style="bold"),
        Text(f"in component #{ref.component.id}"),
        Text(f"also in components {', '.join(f'#{i}' for i in others)}" if others else "in no other component"),
    ]
    details = {c.id: c.neuron_detail(ref.layer, ref.channel) for c in holders}
    if not any(details.values()):
        parts.append(Text("\nno per-neuron detail in this template (ICA builds record it)", style="dim"))
        return Group(*parts)
    loadings = Table.grid(padding=(0, 2))
    loadings.add_column(style="bold")
    loadings.add_column(justify="right")
    for cid, detail in details.items():
        if detail and "loading" in detail:
            loadings.add_row(f"#{cid}", f"{detail['loading']:+.4f}")
    parts += [Text("\nloading in each component", style="bold"), loadings]
    detail = details.get(ref.component.id) or next(d for d in details.values() if d)
    if "mean" in detail and "std" in detail:
        parts.append(Text.assemble(("\nactivation ", "bold"), f"mean {detail['mean']:.4g}, spread (std) "
                                                              f"{detail['std']:.4g}"))
    tokens = detail.get("top_tokens") or []
    if tokens:
        parts.append(Text("top tokens (count among its strongest rows)", style="bold"))
        for token, count in tokens:
            parts.append(Text(f"  {visible(str(token))}  ×{count}"))
    return Group(*parts)


def matches(component: Component, query: str) -> bool:
    """Does a search query name this component (``3``, ``#3``) or appear in its top tokens?"""
    query = query.strip().lower()
    if not query:
        return True
    if query.lstrip("#").isdigit():
        return component.id == int(query.lstrip("#"))
    for entry in component.stats.get("top_tokens") or []:
        text = f"{entry.get('token', '')} {entry.get('context', '')}" if isinstance(entry, dict) else str(entry)
        if query in text.lower():
            return True
    return False


# ---- the widget ------------------------------------------------------------------------------

class TemplateTree(Tree[NodeData]):
    """The tree; with ``selectable`` the space key picks the component under the cursor."""

    class Picked(Message):
        def __init__(self, node: TreeNode[NodeData]) -> None:
            super().__init__()
            self.node = node

    BINDINGS = [Binding("space", "pick", "Pick", show=True)]

    def __init__(self, *args, selectable: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.selectable = selectable

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "pick":
            return self.selectable
        return True

    def action_pick(self) -> None:
        if self.cursor_node is not None:
            self.post_message(self.Picked(self.cursor_node))


class TemplateView(Horizontal):
    """Browse one template; ``selected`` holds picked component ids when ``selectable``."""

    BINDINGS = [Binding("slash", "search", "Search")]

    class SelectionChanged(Message):
        def __init__(self, selected: frozenset[int]) -> None:
            super().__init__()
            self.selected = selected

    def __init__(self, template: Template, *, title: str, selectable: bool = False,
                 selected: Iterable[int] = (), **kwargs) -> None:
        super().__init__(**kwargs)
        self.template = template
        self.title = title
        self.selectable = selectable
        self.selected: set[int] = set(selected)

    def compose(self) -> ComposeResult:
        with Vertical(classes="tv-left"):
            yield Input(placeholder="/ search: component id or token", compact=True, classes="tv-search")
            yield Label("", classes="tv-count")
            yield TemplateTree(self.title, data=self.template, selectable=self.selectable, classes="tv-tree")
        with VerticalScroll(classes="tv-preview"):
            yield Static(template_preview(self.template, self.title), classes="tv-detail")

    def on_mount(self) -> None:
        tree = self.query_one(TemplateTree)
        tree.root.expand()
        self.fill("")
        tree.focus()

    def component_label(self, component: Component) -> Text:
        mark = ("[x] " if component.id in self.selected else "[ ] ") if self.selectable else ""
        label = Text(f"{mark}#{component.id}", style="bold" if component.id in self.selected else "")
        if component.one_position is not None:  # before the numbers, so it is never the part cut off
            label.append("⚠", style="yellow")
        # Stability spelled out, then the neuron count ("size" in the count line above the tree): the
        # whole label fits the pane at 80 columns (see .tv-left), so no number is ever cut short.
        label.append(f" stability {_stability(component)} · {component.size:,}", style="dim")
        return label

    def fill(self, query: str) -> None:
        """Show the components matching ``query`` (all when empty)."""
        tree = self.query_one(TemplateTree)
        tree.root.remove_children()
        shown = [c for c in self.template.components if matches(c, query)]
        for component in shown:
            tree.root.add(self.component_label(component), data=component, allow_expand=bool(component.neurons))
        total = len(self.template.components)
        self.query_one(".tv-count", Label).update(
            f"{len(shown)} of {total} components" + (f" match {query!r}" if query.strip() else "")
            + " · stability · size")

    @on(Input.Changed, ".tv-search")
    def _search(self, event: Input.Changed) -> None:
        self.fill(event.value)

    @on(Input.Submitted, ".tv-search")
    def _search_done(self) -> None:
        self.query_one(TemplateTree).focus()

    def action_search(self) -> None:
        self.query_one(".tv-search", Input).focus()

    @on(Tree.NodeExpanded)
    def _expand(self, event: Tree.NodeExpanded[NodeData]) -> None:
        node, data = event.node, event.node.data
        if node.children:
            return
        if isinstance(data, Component):
            for layer, channels in data.neurons.items():
                node.add(f"layer {layer}: {_neurons(len(channels))}", data=LayerRef(data, layer),
                         allow_expand=bool(channels))
        elif isinstance(data, LayerRef):
            for channel in data.component.neurons.get(data.layer, []):
                node.add_leaf(f"neuron {channel}", data=NeuronRef(data.component, data.layer, channel))

    @on(Tree.NodeHighlighted)
    def _preview(self, event: Tree.NodeHighlighted[NodeData]) -> None:
        data = event.node.data
        if isinstance(data, Template):
            content = template_preview(data, self.title)
        elif isinstance(data, Component):
            content = component_preview(self.template, data)
        elif isinstance(data, LayerRef):
            content = layer_preview(data)
        elif isinstance(data, NeuronRef):
            content = neuron_preview(self.template, data)
        else:
            return
        self.query_one(".tv-detail", Static).update(content)

    @on(TemplateTree.Picked)
    def _pick(self, event: TemplateTree.Picked) -> None:
        node = event.node
        while node is not None and not isinstance(node.data, Component):
            node = node.parent
        if node is None:
            return
        component = node.data
        self.selected ^= {component.id}
        node.set_label(self.component_label(component))
        self.post_message(self.SelectionChanged(frozenset(self.selected)))

    def set_selected(self, ids: Iterable[int]) -> None:
        """Replace the picked components (labels are redrawn)."""
        self.selected = set(ids)
        for node in self.query_one(TemplateTree).root.children:
            if isinstance(node.data, Component):
                node.set_label(self.component_label(node.data))
