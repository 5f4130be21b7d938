"""``fnapi template build``: find functional networks in a model and save them as a template.

Progress goes to stderr; the template's path is the last line on stdout, so scripts can take it with
``path=$(fnapi template build ... | tail -n1)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from fnapi.models.source import EMBEDDED_MODEL

DEFAULT_DATA = "builtin:text"


def build(
    model: str | None = typer.Option(None, "--model", "-m",
                                        help=f"embedded name, hub id, local folder or .gguf file [default: {EMBEDDED_MODEL}]"),
    data: list[str] | None = typer.Option(None, "--data", "-d",
                                             help=f"dataset to capture from; repeat for several [default: {DEFAULT_DATA}]"),
    samples: int | None = typer.Option(None, "--samples", min=1, help="rows per dataset [default: 64]"),
    max_length: int | None = typer.Option(None, "--max-length", min=1, help="tokens per row [default: 128]"),
    site: str | None = typer.Option(None, "--site", help="mlp.out (down-projection output) or mlp.hidden (its input)"),
    components: int | None = typer.Option(None, "--components", "-k", min=1, help="components to find [default: 10]"),
    method: str | None = typer.Option(None, "--method",
                                      help="ica; loki (LoKI's rows, attributed over multiple-choice items such as "
                                           "builtin:probes or an MMLU/ARC/generic file); attribution (lowest absolute "
                                           "attribution, fnapi's own rule) [default: ica]"),
    quota: float | None = typer.Option(None, "--quota", help="loki and attribution: percent of each layer's rows"),
    mode: str | None = typer.Option(None, "--mode", help="global (all layers at once) or per_layer [default: global]"),
    seed: int | None = typer.Option(None, "--seed", help="seed of the ICA runs [default: 0]"),
    layers: str | None = typer.Option(None, "--layers", help="layer filter such as '0:4,9:' [default: all]"),
    runs: int | None = typer.Option(None, "--runs", min=1, help="FastICA runs in the stability consensus [default: 10]"),
    rule: str | None = typer.Option(None, "--rule", help="neuron selection: percentile, zscore or topk"),
    threshold: float | None = typer.Option(None, "--threshold", help="percentile, z value, or neurons per layer"),
    sign: str | None = typer.Option(None, "--sign", help="abs, positive or negative weights"),
    pca_dims: int | None = typer.Option(None, "--pca-dims", min=1, help="rank of the randomized PCA before ICA"),
    out: Path | None = typer.Option(None, "--out", "-o",
                                       help="template file [default: ica_templates/<model>/<data>/<settings>.json]"),
    recipe: Path | None = typer.Option(None, "--recipe", help="take model, data, seed and template settings from a recipe"),
) -> None:
    """Build a template (ICA consensus over activations, or LoKI's rows) and print its path last."""
    from pydantic import ValidationError

    from fnapi import distributed
    from fnapi.errors import RecipeError
    from fnapi.events import console_sink
    from fnapi.recipe import Recipe, TemplateSection, validation_problems

    base = Recipe.from_yaml(recipe) if recipe else None
    section = (base.template if base and base.template else TemplateSection())
    overrides = {key: value for key, value in {
        "samples": samples, "max_length": max_length, "site": site, "components": components, "method": method,
        "mode": mode, "layers": layers, "runs": runs, "quota": quota,
    }.items() if value is not None}
    chosen = {key: value for key, value in (("rule", rule), ("value", threshold), ("sign", sign)) if value is not None}
    if chosen:
        overrides["selection"] = {**section.selection.model_dump(), **chosen}
    try:
        section = TemplateSection.model_validate({**section.model_dump(), **overrides}, strict=False)
    except ValidationError as exc:
        raise RecipeError.invalid("command line", validation_problems(exc, TemplateSection)) from None

    model_spec = model or (base.model if base else EMBEDDED_MODEL)
    # LoKI attributes over multiple-choice items, ICA and attribution over text or conversations
    default_data = "builtin:probes" if section.method == "loki" else DEFAULT_DATA
    data_specs = list(data or section.data or ([base.data.path] if base else [default_data]))
    seed_value = seed if seed is not None else (base.seed if base else 0)
    sink = console_sink()
    # The group is left explicitly, after every process is done: a process that exits while gloo's
    # threads still run aborts ("terminate called without an active exception") and fails the launch.
    with distributed.process_group():
        target = _build_and_save(model_spec, section, data_specs, seed_value, pca_dims, out, sink)
        distributed.barrier()
    if target is not None:
        print(target)


def _build_and_save(model_spec: str, section: Any, data_specs: list[str], seed_value: int, pca_dims: Any,
                    out: Any, sink: Any) -> Any:
    """Build on every process; the main process saves, reports and returns the path (others: None)."""
    from fnapi import distributed
    from fnapi.models.loading import load_model
    from fnapi.networks.build import build_template, default_template_path

    loaded = load_model(model_spec, sink=sink)
    template = build_template(loaded, section, data_specs, seed=seed_value, pca_dims=pca_dims, sink=sink)
    target = out or (Path(section.out) if section.out else
                     default_template_path(loaded.info.name, data_specs, section, seed_value))
    if not distributed.is_main_process():
        return None  # under torchrun every process captured its share; the main process writes and reports
    target = _save_or_keep(template, Path(target))
    summary = ", ".join(f"{c.id}:{c.size}" + (f" ({c.stability:.2f})" if c.stability is not None else "")
                        for c in template.components[:10])
    typer.echo(f"{len(template.components)} components (id:neurons (stability)): {summary}", err=True)
    return target


def _save_or_keep(template: Any, target: Path) -> Path:
    """Save ``template`` at ``target``; when that path cannot be written, keep the work in a fallback file.

    Building can take many minutes; a read-only folder or a full disk must not throw it away.
    """
    import tempfile

    from fnapi.errors import StorageError, storage_error

    try:
        return template.save(target)
    except OSError as exc:
        problem = storage_error(exc)
        if problem is None:
            raise
        fallback = Path(tempfile.gettempdir()) / "fnapi-unsaved-templates" / target.name
        try:
            template.save(fallback)
        except OSError:
            raise problem from None
        raise StorageError(f"{problem.message}; the template that was built is kept in {fallback}",
                           hint=f"{problem.hint}. Then copy the kept file: cp {fallback} {target}") from None


def register(template_app: typer.Typer) -> None:
    template_app.command("build")(build)
