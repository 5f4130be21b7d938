"""``fnapi lesion-study``: check that networks matter more than random neurons.

Progress goes to stderr; tables (or with ``--json`` one JSON object) go to stdout.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from fnapi.models.source import EMBEDDED_MODEL


def lesion_study(
    template: Path = typer.Option(..., "--template", "-t", help="template JSON whose components are lesioned"),
    model: str = typer.Option(EMBEDDED_MODEL, "--model", "-m", help="embedded name, hub id, local folder or .gguf file"),
    components: str | None = typer.Option(None, "--components", "-c",
                                             help="component ids such as 0,1,2 [default: all]"),
    # Same values as fnapi.lesion.DEFAULT_DRAWS / DEFAULT_PROBE_SAMPLES (not imported: it loads torch).
    draws: int = typer.Option(3, "--random-draws", min=1,
                              help="random lesions of equal size per component (3: the fewest that give a spread)"),
    probe_samples: int = typer.Option(200, "--probe-samples", min=1,
                                      help="built-in probe items to score: the first N, a fixed mix of every category"),
    seed: int = typer.Option(0, "--seed", help="seed of the random draws"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of tables"),
    out: Path | None = typer.Option(None, "--out", "-o", help="also write the JSON result to this file"),
) -> None:
    """Lesion each network and as many random neurons; compare.

    Each component is switched off at the template's site, and so are random neurons with the
    same count per layer (several seeded draws). A functional network should hurt far more than
    random neurons: the ratio (component drop / mean random drop) says how much more.

    The study runs 1 + components x (1 + draws) probe evaluations. The defaults (200 probe items,
    3 random draws) keep a 10-component template at 41 evaluations: about 6 minutes for the
    embedded model on two CPU cores. Each extra draw adds one evaluation per component.
    """
    from fnapi.events import console_sink
    from fnapi.lesion import lesion_study as study_lesions
    from fnapi.lesion import parse_component_ids
    from fnapi.models.loading import load_model
    from fnapi.networks.template import Template
    from fnapi.paths import atomic_write_text

    loaded_template = Template.load(template)
    chosen = parse_component_ids(components) if components is not None else None
    for cid in chosen or []:
        loaded_template.component(cid)  # unknown ids fail before the model loads
    sink = console_sink()
    try:
        loaded = load_model(model, sink=sink)
        study = study_lesions(loaded, loaded_template, components=chosen, draws=draws, probe_samples=probe_samples,
                              seed=seed, sink=sink)
    finally:
        getattr(sink, "close", lambda: None)()
    data = {"template_file": str(template), **study.to_dict()}
    if out is not None:
        atomic_write_text(out, json.dumps(data, indent=2) + "\n")
    if as_json:
        print(json.dumps(data, indent=2))
        return
    _print_lesion_table(study, template)
    if out is not None:
        print(f"written: {out}")


def _print_lesion_table(study, template: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    for warning in study.warnings:
        console.print(f"warning: {warning}", style="yellow", markup=False)
    console.print(f"{template}: {study.template['components']} components at {study.template['site']}; "
                  f"{study.probe_samples} probes, {study.draws} random draws per component (seed {study.seed})",
                  markup=False)
    titles = {"accuracy": "probe accuracy", "logprob": "mean log-prob of the right answer"}
    for measure, title in titles.items():
        table = Table(title=title, show_edge=False)
        for name in ("component", "neurons", "% site", "score", "drop", "random drop", "ratio"):
            table.add_column(name, justify="left" if name == "component" else "right")
        table.add_row("base", "", "", f"{study.base[measure]:.3f}", "", "", "")
        for c in study.components:
            m = getattr(c, measure)
            spread = _signed(m.random_mean) + ("" if m.random_std is None else f" ± {m.random_std:.3f}")
            table.add_row(str(c.id), str(c.size), f"{c.percent:.2f}", f"{m.score:.3f}", _signed(m.drop), spread,
                          _ratio(m.ratio))
        summary = study.summary[measure]
        table.add_row("mean", "", "", "", _signed(summary["mean_drop"]), _signed(summary["mean_random_drop"]),
                      _ratio(summary["ratio"]))
        _print_table(console, table)
    console.print("drop = base - lesioned (positive: worse); ratio = component drop / mean random drop "
                  "(n/a when random lesions did not hurt on average)", markup=False)


def _print_table(console, table) -> None:
    """Print ``table`` unwrapped when stdout is a file or pipe (rich would assume 80 columns)."""
    if not console.is_terminal:
        console.width = max(console.width, console.measure(table, options=console.options.update_width(400)).maximum)
    console.print(table)


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def register(app: typer.Typer) -> None:
    app.command("lesion-study")(lesion_study)
