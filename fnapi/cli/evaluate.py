"""``fnapi eval TARGET``: scores with 95% intervals for a model or a run (with the change against its base).

Progress goes to stderr; the tables (or with ``--json`` one JSON object) go to stdout.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import typer


def evaluate(
    target: str = typer.Argument(..., metavar="TARGET", help="model spec (embedded name, folder, .gguf, hub id) or run directory"),
    probes: list[str] = typer.Option([], "--probes", "-p",
                                     help="probe set: builtin:probes or a multiple-choice file (repeatable)"),
    texts: list[str] = typer.Option([], "--text", help="held-out text: builtin:text or a file (repeatable)"),
    tasks: list[str] = typer.Option([], "--task", help="task data whose test split is scored by exact match (repeatable)"),
    probe_samples: int | None = typer.Option(None, "--probe-samples", min=1, help="items per probe set [default: all]"),
    text_samples: int = typer.Option(32, "--text-samples", min=1, help="paragraphs per text source"),
    task_samples: int = typer.Option(50, "--task-samples", min=1, help="conversations per task source"),
    lm_eval: list[str] = typer.Option([], "--lm-eval", metavar="TASK[,TASK...]",
                                      help="lm-evaluation-harness tasks to score (repeatable; needs the eval extra)"),
    lm_eval_include: Path | None = typer.Option(None, "--lm-eval-include", metavar="DIR",
                                                help="folder of local lm-eval task YAMLs"),
    limit: int | None = typer.Option(None, "--limit", min=1, help="lm-eval documents per task [default: all]"),
    generative: bool = typer.Option(False, "--generative",
                                    help="also ask the probe questions open-ended and general prompts (chat drift, "
                                         "format leak)"),
    generative_samples: int | None = typer.Option(None, "--generative-samples", min=1,
                                                  help="probe items per set asked open-ended [default: all scored]"),
    prompts: str = typer.Option("builtin:chat", "--prompts", help="general prompts: builtin:chat or a file"),
    chat_prompts: int = typer.Option(24, "--chat-prompts", min=0, help="general prompts asked (0: none)"),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1, help="the longest reply generated"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of tables"),
    out: Path | None = typer.Option(None, "--out", "-o", help="also write the JSON result to this file"),
) -> None:
    """Score a model or a finished run: probe accuracy, right-answer log-probability, held-out text
    NLL (and KL to the base for a run), task exact match, each with a 95% interval. --generative adds
    the probe questions asked open-ended (right when the reply names the right choice and no other)
    and replies to general prompts (for a run: chat drift and the format-leak flag).

    For a run the base model is scored too, and each change comes with a paired interval. Without
    --probes/--text/--task a run uses its recipe's evaluation sources, a model builtin:probes and
    builtin:text. --lm-eval scores lm-evaluation-harness tasks on the same model in memory (a run's
    adapter merged, its ablation in place); asked for alone, only they are scored.
    """
    from fnapi.errors import DataError
    from fnapi.eval_target import evaluate_target
    from fnapi.events import console_sink
    from fnapi.lm_eval_bridge import LmEvalRequest
    from fnapi.measures import GenerativeRequest
    from fnapi.paths import atomic_write_text

    names = tuple(name.strip() for value in lm_eval for name in value.split(",") if name.strip())
    if not names and (lm_eval_include is not None or limit is not None):
        raise DataError("--lm-eval-include and --limit apply to lm-eval tasks: give them with --lm-eval TASK")
    request = LmEvalRequest(names, str(lm_eval_include) if lm_eval_include else None, limit) if names else None
    asked = GenerativeRequest(generative_samples, max_new_tokens, prompts, chat_prompts) if generative else None
    sink = console_sink()
    # Libraries print to stdout while they load (transformers announces WANDB_MODE=offline there);
    # stdout carries only the result, so anything printed while scoring goes to stderr.
    try:
        with contextlib.redirect_stdout(sys.stderr):
            result = evaluate_target(target, probes=probes or None, texts=texts or None, tasks=tasks or None,
                                     probe_samples=probe_samples, text_samples=text_samples, task_samples=task_samples,
                                     lm_eval=request, generative=asked, sink=sink)
    finally:
        getattr(sink, "close", lambda: None)()
    data = result.to_dict()
    if out is not None:
        atomic_write_text(out, json.dumps(data, indent=2) + "\n")
    if as_json:
        print(json.dumps(data, indent=2))
        return
    _print_tables(data)
    if out is not None:
        print(f"written: {out}")


def _print_tables(data: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from fnapi.cli.study import _print_table

    console = Console(highlight=False)
    change = data.get("change")
    columns = ["source", "measure", "n", "score [95% interval]"] + (["base", "change [95% interval, paired]"]
                                                                   if change else [])
    table = Table(show_edge=False, title=f"{data['kind']} {data['target']}")
    for name in columns:
        table.add_column(name, justify="left" if name in ("source", "measure") else "right")

    def ci(bounds: list[float], digits: int = 3) -> str:
        return f"[{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]"

    def add(source: str, measure: str, n: int, value: float, bounds: list[float], pair: dict | None,
            digits: int = 3) -> None:
        cells = [source, measure, str(n), f"{value:.{digits}f} {ci(bounds, digits)}"]
        if change:
            cells += ["", ""] if pair is None else [f"{pair['before']:.{digits}f}",
                                                   f"{pair['change']:+.{digits}f} {ci(pair['change_ci95'], digits)}"]
        table.add_row(*cells)

    for i, task in enumerate(data["tasks"]):
        add(task["source"], "task exact match", task["n"], task["score"], task["ci95"],
            change["tasks"][i]["score"] if change else None)
    for i, probe in enumerate(data["probes"]):
        pair = change["probe_sets"][i] if change else None
        add(probe["source"], "probe accuracy", probe["n"], probe["accuracy"], probe["ci95"],
            pair["accuracy"] if pair else None)
        add(probe["source"], "right-answer log-prob", probe["n"], probe["logprob"], probe["logprob_ci95"],
            pair["logprob"] if pair else None)
    for i, asked in enumerate(data.get("generative", [])):
        add(asked["source"], "open-ended accuracy", asked["n"], asked["accuracy"], asked["ci95"],
            change["generative_sets"][i]["accuracy"] if change else None)
    for i, text in enumerate(data["texts"]):
        pair = change["texts"][i] if change else None
        add(text["source"], "text NLL per token", text["n"], text["nll"], text["ci95"], pair["nll"] if pair else None, 4)
        if pair and "kl" in pair:
            table.add_row(text["source"], "KL to base per token", str(pair["kl"]["n"]),
                          f"{pair['kl']['mean']:.4f} {ci(pair['kl']['ci95'], 4)}", "", "")
    if change and "chat_kl" in change:
        drift = change["chat_kl"]
        table.add_row(drift["source"], "chat drift (KL on base replies)", str(drift["prompts"]),
                      f"{drift['value']:.4f} {ci(drift['ci95'], 4)}", "", "")
    if change and "format_leak" in change:
        leak = change["format_leak"]
        table.add_row(leak["source"], "replies like the task's" + (" (FLAG)" if leak["flag"] else ""),
                      str(leak["prompts"]), f"{leak['share']:.3f}", f"{leak['base_share']:.3f}", "")
    if table.row_count:
        _print_table(console, table)
    if "lm_eval" in data:
        _print_benchmarks(console, data)


def _print_benchmarks(console, data: dict) -> None:
    """lm-eval's metrics as it reports them: value and stderr; for a run, the base value and the change."""
    from rich.table import Table

    from fnapi.cli.study import _print_table

    pairs = {(p["task"], p["metric"], p["filter"]): p for p in (data.get("change") or {}).get("lm_eval") or []}
    table = Table(show_edge=False, title=f"lm-eval: {data['kind']} {data['target']}")
    for name in ["task", "metric", "n", "value", "stderr"] + (["base", "change [95% interval, paired]"] if pairs else []):
        table.add_column(name, justify="left" if name in ("task", "metric") else "right")

    def number(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    for metric in data["lm_eval"]:
        name = metric["metric"] if metric["filter"] == "none" else f"{metric['metric']} ({metric['filter']})"
        cells = [metric["task"], name, str(metric["n"] or ""), number(metric["value"]), number(metric["stderr"])]
        pair = pairs.get((metric["task"], metric["metric"], metric["filter"]))
        if pairs and pair is None:
            cells += ["", ""]
        elif pair is not None:
            bounds = pair["change_ci95"]
            change = "n/a" if pair["change"] is None else f"{pair['change']:+.4f}"
            cells += [number(pair["before"]), change + (f" [{bounds[0]:+.4f}, {bounds[1]:+.4f}]" if bounds else "")]
        table.add_row(*cells)
    _print_table(console, table)


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate)
