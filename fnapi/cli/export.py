"""``fnapi export RUN --to hf|gguf|hub DEST``: a run's model as a transformers folder, a GGUF file or a
hub repository, with its adapter merged and its ablation baked in.

Progress goes to stderr; the summary (or with ``--json`` one JSON object) goes to stdout.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer


def export(
    run_dir: Path = typer.Argument(..., metavar="RUN", help="run directory (the folder `fnapi run` printed)"),
    dest: str = typer.Argument(..., metavar="DEST", help="hf: a folder; gguf: a .gguf file; hub: a repository id owner/name"),
    to: str = typer.Option(..., "--to", help="hf (transformers folder), gguf (llama.cpp file) or hub (Hugging Face)"),
    gguf_type: str = typer.Option("f16", "--type", help="GGUF weights: f32, f16 or q8_0"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing non-empty folder or file"),
    private: bool = typer.Option(True, "--private/--public", help="visibility of a new hub repository"),
    adapter_only: bool = typer.Option(False, "--adapter-only", help="hub: upload the LoRA adapter, not the merged model"),
    dry_run: bool = typer.Option(False, "--dry-run", help="hub: list what would be uploaded, without any network"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of a summary"),
) -> None:
    """Export a run's model for other tools: merged with its adapter, with the neurons its mask
    switched off zeroed in the weights, checked against the run's model before it is put in place.

    Examples: `fnapi export runs/quickstart --to hf exported/quickstart`,
    `fnapi export runs/quickstart --to gguf quickstart.gguf --type q8_0`,
    `fnapi export runs/quickstart --to hub me/quickstart --dry-run`.
    """
    from fnapi.events import console_sink
    from fnapi.exporting import export as run_export
    from fnapi.stopping import stop_on_signals

    sink = console_sink()
    try:
        with stop_on_signals("the export") as stop:
            result = run_export(run_dir, to, dest, gguf_type=gguf_type, overwrite=overwrite, private=private,
                                adapter_only=adapter_only, dry_run=dry_run, sink=sink, cancel=stop)
    finally:
        getattr(sink, "close", lambda: None)()
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    where = result.repo_id if result.target == "hub" else result.path
    if result.dry_run:
        print(f"dry run: would upload to {where} ({'private' if result.private else 'public'}), nothing was sent")
        for file in result.files:
            print(f"  {file.bytes:>14,}  {file.path}")
        print(f"  {result.bytes:>14,}  bytes in {len(result.files)} files")
        print("\nREADME.md (the model card):\n")
        print(result.card)
        return
    kind = f"GGUF {result.gguf_type}" if result.target == "gguf" else result.target
    print(f"exported ({kind}): {where}  {result.bytes / 2**20:.1f} MiB in {result.seconds:.1f} s")
    if result.max_abs_logit_diff is not None:
        print(f"checked: logits within {result.max_abs_logit_diff:.3g} of the run's model (allowed {result.tolerance:.3g}), "
              f"same top token at {100 * result.top1_agreement:.1f}% of positions"
              + ("" if result.tokens_match in (None, True) else "; the tokenizer read back splits text differently"))
    if result.url:
        print(result.url)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
