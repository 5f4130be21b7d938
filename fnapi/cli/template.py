"""``fnapi template``: look at templates and compare them.

``show`` and ``compare`` live here. ``template build`` lives in its own module,
``fnapi/cli/template_build.py``, which defines ``register(template_app: typer.Typer)`` and adds its
command there (``template_app.command("build")(build)``); :func:`register` below attaches it to
this group when the module exists.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

template_app = typer.Typer(
    name="template",
    help="Build, inspect and compare neuron templates.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

# Above this many components per side, compare prints best matches but not the full matrix.
_MAX_MATRIX_COLUMNS = 12


@template_app.command("show")
def show(
    file: Path = typer.Argument(..., help="template JSON (also reads legacy layouts and LoKI lists)"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON summary instead of tables"),
) -> None:
    """Summarise a template, one row per component (after model, site, method and data)."""
    from fnapi.networks.template import Template

    template = Template.load(file)
    rows = template.summary_rows()
    if as_json:
        header = {k: v for k, v in template.to_dict().items() if k != "components"}
        components = [{**row, "per_layer": {str(k): v for k, v in row["per_layer"].items()}} for row in rows]
        print(json.dumps({"file": str(file), **header, "components": components}, indent=2))
        return

    from rich.console import Console
    from rich.table import Table

    # markup off: names, tokens and warnings are data and may contain brackets
    console = Console(highlight=False)
    model = template.model
    shape = f"{template.num_layers} layers, {len(template.layers)} used"
    console.print(f"{file}  ({template.format}, created {template.created or '?'})", style="bold")
    console.print(f"model   {model.get('name') or 'unknown'}"
                  + (f" ({model['architecture']})" if model.get("architecture") else "")
                  + (f", weights {model['fingerprint']}" if model.get("fingerprint") else ""))
    console.print(f"site    {template.site} x {template.width}, {shape}")
    console.print(f"method  {_describe(template.method)}")
    console.print(f"data    {_describe(template.data) or 'not recorded'}")
    for warning in template.warnings:
        console.print(f"warning: {warning}", style="yellow")

    table = Table(show_edge=False)
    for name, justify in (("id", "right"), ("stability", "right"), ("size", "right"), ("% neurons", "right"),
                          ("layers", "left"), ("top tokens", "left")):
        table.add_column(name, justify=justify)
    for row in rows:
        stability = "-" if row["stability"] is None else f"{row['stability']:.2f}"
        tokens = " ".join(repr(t)[1:-1] or "''" for t in row["top_tokens"][:6])
        table.add_row(str(row["id"]), stability, str(row["size"]), f"{row['percent']:.2f}",
                      _spread(row["per_layer"]), tokens)
    console.print(table)


@template_app.command("compare")
def compare_cmd(
    a: Path = typer.Argument(..., help="first template"),
    b: Path = typer.Argument(..., help="second template"),
    as_json: bool = typer.Option(False, "--json", help="print the IoU matrix and best matches as JSON"),
) -> None:
    """IoU overlap of two templates' components (a neuron is a layer and a channel)."""
    from fnapi.networks.template import Template, compare

    result = compare(Template.load(a), Template.load(b))
    if as_json:
        print(json.dumps({"a": str(a), "b": str(b), **result.to_dict()}, indent=2))
        return

    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    for warning in result.warnings:
        console.print(f"warning: {warning}", style="yellow")
    if len(result.ids_b) <= _MAX_MATRIX_COLUMNS:
        console.print(f"IoU (rows: components of {a}, columns: components of {b})")
        matrix = Table(show_edge=False)
        matrix.add_column("", justify="right")
        for cid in result.ids_b:
            matrix.add_column(str(cid), justify="right")
        for cid, row in zip(result.ids_a, result.iou):
            matrix.add_row(str(cid), *(f"{value:.2f}" for value in row))
        console.print(matrix)
    else:
        console.print(f"{len(result.ids_b)} components in {b}: matrix omitted (use --json for it)")
    console.print(f"best match in {b} for each component of {a}")
    best = Table(show_edge=False)
    for name in ("A", "B", "IoU"):
        best.add_column(name, justify="right")
    for match in result.best_matches:
        best.add_row(str(match["component"]), "-" if match["match"] is None else str(match["match"]),
                     f"{match['iou']:.2f}")
    console.print(best)
    console.print(f"mean best IoU {result.mean_best_iou:.3f}")


def _describe(block: dict) -> str:
    """``name`` first, then the other keys as ``key=value``."""
    parts = [str(block["name"])] if block.get("name") else []
    for key, value in block.items():
        if key != "name":
            shown = ", ".join(map(str, value)) if isinstance(value, list) else value
            parts.append(f"{key}={shown}")
    return "  ".join(parts)


def _spread(per_layer: dict[int, int]) -> str:
    """Neurons per layer, compact: every layer when few, else the count and the fullest layers."""
    if len(per_layer) <= 6:
        return " ".join(f"L{layer}:{n}" for layer, n in per_layer.items())
    fullest = sorted(per_layer.items(), key=lambda item: (-item[1], item[0]))[:3]
    return f"{len(per_layer)} layers; most in " + " ".join(f"L{layer}:{n}" for layer, n in fullest)


def register(app: typer.Typer) -> None:
    from fnapi.cli import template_build

    template_build.register(template_app)
    app.add_typer(template_app, name="template")
