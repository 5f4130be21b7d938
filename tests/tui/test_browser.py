"""The template browser: tree nodes carry the model objects, the preview follows the cursor,
search filters components, and the compare view shows IoU."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import DataTable

from fnapi.networks.template import Component, Template
from fntui.app import FntuiApp
from fntui.engine import Engine
from fntui.screens.browser import CompareScreen
from fntui.widgets.template_view import LayerRef, NeuronRef, TemplateTree
from tests.tui.helpers import TERMINAL, demo_template, settle, text_of

pytestmark = pytest.mark.anyio


def browse(path: str, compare: str | None = None) -> FntuiApp:
    return FntuiApp(engine=Engine(), browse=Path(path), compare=Path(compare) if compare else None)


async def test_nodes_carry_template_objects_and_the_preview_follows_the_cursor(workdir):
    app = browse("templates/demo.json")
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        tree = app.screen.query_one(TemplateTree)
        assert isinstance(tree.root.data, Template)
        assert [type(n.data) for n in tree.root.children] == [Component] * 3
        preview = app.screen.query_one(".tv-detail")
        assert "mlp.out, width 64" in text_of(preview)

        await pilot.press("down")  # component #0
        assert "stability  0.95" in text_of(preview) and "the word  Paris" in text_of(preview)
        await pilot.press("enter", "down")  # expand it, then its first layer
        node = tree.cursor_node
        assert isinstance(node.data, LayerRef) and (node.data.component.id, node.data.layer) == (0, 0)
        assert "3 neurons" in text_of(preview) and "1, 2, 3" in text_of(preview)
        await pilot.press("enter", "down")  # expand the layer, then its first neuron
        assert isinstance(tree.cursor_node.data, NeuronRef)
        assert "neuron 1 of layer 0" in text_of(preview)


async def test_search_keeps_components_by_id_or_top_token(workdir):
    app = browse("templates/demo.json")
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        await pilot.press("slash", *"tuesday")
        await pilot.pause()
        tree = app.screen.query_one(TemplateTree)
        assert [n.data.id for n in tree.root.children] == [1]
        assert "1 of 3 components match 'tuesday'" in str(app.screen.query_one(".tv-count").render())
        await pilot.press("ctrl+u", "#", "2")
        await pilot.pause()
        assert [n.data.id for n in tree.root.children] == [2]


async def test_compare_shows_the_iou_of_every_pair(workdir):
    app = browse("templates/demo.json", compare="templates/other.json")
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, CompareScreen)
        table = app.screen.query_one(DataTable)
        assert table.row_count == 3
        assert [str(c) for c in table.get_row_at(0)[1:]] == ["1.00", "0.00", "0.00"]
        assert "mean best IoU" in text_of(app.screen.query_one("#compare-summary"))
        await pilot.press("escape")
        assert not isinstance(app.screen, CompareScreen)


async def test_a_component_whose_top_tokens_all_sit_at_the_first_token_is_flagged(workdir):
    template = demo_template(0)
    first = [{"token": t, "context": t, "activation": 9.0, "sequence": i, "position": 0}
             for i, t in enumerate(["<s>", " The", " In"])]
    spread = [{"token": t, "context": t, "activation": 2.0, "sequence": 0, "position": i + 3}
              for i, t in enumerate([" a", " b", " c"])]
    template.components[0].stats["top_tokens"] = first
    template.components[1].stats["top_tokens"] = spread
    template.save(Path("templates/first.json"))
    app = browse("templates/first.json")
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        tree = app.screen.query_one(TemplateTree)
        labels = [str(node.label) for node in tree.root.children]
        assert "#0⚠ stability 0.95" in labels[0] and "⚠" not in labels[1] and "⚠" not in labels[2]
        preview = app.screen.query_one(".tv-detail")
        await pilot.press("down")  # component #0
        assert "every top token sits at the first token" in text_of(preview)
        await pilot.press("down")  # component #1: tokens at different positions
        assert "every top token sits" not in text_of(preview)


def _researched_template() -> Template:
    """Three components, two of which share neurons, with per-neuron detail on the first."""
    detail = {"layer": [0, 0, 1], "channel": [1, 2, 4], "loading": [0.31, -0.12, 0.08], "mean": [0.5, -0.2, 1.25],
              "std": [0.75, 0.1, 2.0], "top_tokens": [[[" Paris", 12], [" Rome", 3]], [[" a", 1]], [[" x", 2]]]}
    base = demo_template(0)
    components = [
        Component(0, {0: [1, 2], 1: [4]}, 0.95, {**base.components[0].stats, "neuron_detail": detail}),
        Component(1, {0: [2], 1: [4, 5, 6]}, 0.81, base.components[1].stats),
        Component(2, {1: [30]}, 0.42, base.components[2].stats),
    ]
    return Template(site="mlp.out", width=64, num_layers=2, layers=[0, 1], components=components, model=base.model,
                    method=base.method, data=base.data, created=base.created)


async def test_the_template_shows_a_layer_heatmap_and_the_overlap_of_its_components(workdir):
    _researched_template().save(Path("templates/researched.json"))
    app = browse("templates/researched.json")
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        preview = text_of(app.screen.query_one(".tv-detail"))
        assert "neurons per layer (layers 0-1; █ = the component's busiest layer)" in preview
        rows = {line.split()[0]: line for line in preview.splitlines() if line.strip().startswith("#")}
        # #1 holds 1 neuron in layer 0 (a third of its busiest layer: ▒) and 3 in layer 1 (█)
        assert rows["#1"].split()[1:] == ["▒█"]
        # #2 has one neuron, in layer 1 only: layer 0's cell is blank, layer 1 is its busiest
        assert rows["#2"].split()[1:] == ["█"] and rows["#2"].index("█") == rows["#1"].index("█")
        assert "#0 & #1: 2 shared, IoU 0.40" in preview
        await pilot.press("down")  # component #0: its partners
        assert "neurons shared with other components" in text_of(app.screen.query_one(".tv-detail"))
        assert "#1: 2 shared, IoU 0.40" in text_of(app.screen.query_one(".tv-detail"))


async def test_a_neuron_shows_its_loadings_activation_and_top_tokens_with_counts(workdir):
    _researched_template().save(Path("templates/researched.json"))
    app = browse("templates/researched.json")
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        await pilot.press("down", "enter", "down", "enter", "down")  # #0, layer 0, neuron 1
        tree = app.screen.query_one(TemplateTree)
        assert tree.cursor_node.data == NeuronRef(tree.cursor_node.data.component, 0, 1)
        preview = text_of(app.screen.query_one(".tv-detail"))
        assert "loading in each component" in preview and "#0  +0.3100" in preview
        assert "activation mean 0.5, spread (std) 0.75" in preview
        assert "␣Paris  ×12" in preview and "␣Rome  ×3" in preview
        await pilot.press("down")  # neuron 2 of layer 0 is in #1 too, which recorded no detail
        preview = text_of(app.screen.query_one(".tv-detail"))
        assert "also in components #1" in preview and "#0  -0.1200" in preview


async def test_a_template_without_neuron_detail_says_so(workdir):
    app = browse("templates/demo.json")
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        await pilot.press("down", "enter", "down", "enter", "down")
        assert "no per-neuron detail in this template (ICA builds record it)" in text_of(
            app.screen.query_one(".tv-detail"))
        assert "no neuron is shared" not in text_of(app.screen.query_one(".tv-detail"))
