"""Build the same template two ways on the embedded model and compare time, peak memory and result.

Data: 100 sequences x 512 tokens of plain text made from ``builtin:text`` (its paragraphs joined,
in a new shuffled order on each pass, and cut into 512-token windows), written to one JSONL file
that both ways read. Site ``mlp.out`` (or ``--site mlp.hidden``), 10 components, seed 0.

- ``predecessor``: the recipe of the predecessor project. Every layer's down-projection output
  kept as float32 copies (batch size 1, full forward including the LM head), concatenated into one
  dense matrix, z-scored with scikit-learn's StandardScaler, reduced to 1000 dimensions with
  scikit-learn's PCA, FastICA with 10 components, 98th percentile of |weights|.
- ``ours``: :func:`fnapi.networks.build.build_template` with its defaults (float16 buffer,
  randomized PCA in torch, ICASSO consensus of 10 FastICA runs, 98th percentile).

Each way runs in its own subprocess, which reports its wall time and its own peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``), so the two peaks are measured separately. The predecessor's
recipe needs 17.5-21 GB at ``mlp.out`` (20.8 GB peak RSS in the last run); before starting it the script waits until that much
memory is available (``--wait`` minutes at most), because other work may share the machine. At
``mlp.hidden`` (46,080 neurons) it would need several 9.4 GB copies, so only ours runs. The
predecessor's process also stops itself if the machine's available memory falls below
``--memory-floor``; with ``--keep`` each way's result is saved, so the ways can run at different
times (``--skip-ours`` / ``--skip-predecessor`` reuse the saved result).

Prints one JSON object: per way wall seconds, peak RSS, tokens and stage times; the ratios
ours/predecessor; and the best-match IoU of each predecessor component among ours.

    python benchmarks/template_build.py                 # both ways at mlp.out
    python benchmarks/template_build.py --site mlp.hidden
    python benchmarks/template_build.py --keep DIR --skip-ours   # reuse DIR's result for ours
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEED = 0
#: Float32 copies of the token-by-neuron matrix the predecessor's recipe holds at its peak (measured:
#: 17.5-20.8 GB at 100 x 512 tokens x 17,280 neurons, i.e. five to six 3.5 GB copies).
PREDECESSOR_COPIES = 5


def make_text(path: Path, sequences: int, tokens: int) -> None:
    """``sequences`` rows of about ``tokens`` tokens of builtin:text, as JSONL ``{"text": ...}``."""
    import random

    from fnapi.data.loading import read_conversations
    from fnapi.models.loading import EMBEDDED_MODEL, load_model

    tokenizer = load_model(EMBEDDED_MODEL).tokenizer
    paragraphs = [c.text for c in read_conversations("builtin:text")[0]]
    rng = random.Random(SEED)
    stream: list[int] = []
    while len(stream) < sequences * tokens:
        order = paragraphs[:]
        rng.shuffle(order)
        stream.extend(tokenizer(" ".join(order)).input_ids)
    with path.open("w", encoding="utf-8") as handle:
        for index in range(sequences):
            text = tokenizer.decode(stream[index * tokens:(index + 1) * tokens])
            handle.write(json.dumps({"text": text}) + "\n")


# ---- the two ways, each run in a child process ---------------------------------------------------

def run_predecessor(data: Path, out: Path, site: str, components: int, max_length: int) -> dict:
    import collections

    import numpy as np
    import torch
    from sklearn.decomposition import PCA, FastICA
    from sklearn.preprocessing import StandardScaler

    from fnapi.models.loading import EMBEDDED_MODEL, load_model
    from fnapi.networks.template import Component, Template, model_identity

    times = {}
    start = time.perf_counter()
    loaded = load_model(EMBEDDED_MODEL)
    model, tokenizer, adapter = loaded.model, loaded.tokenizer, loaded.adapter
    texts = [json.loads(line)["text"] for line in data.read_text(encoding="utf-8").splitlines()]
    times["load"] = time.perf_counter() - start

    mark = time.perf_counter()
    layers = list(range(adapter.num_layers(model)))
    per_step: dict[int, dict[int, torch.Tensor]] = collections.defaultdict(dict)
    state = {"step": -1, "mask": None}

    def capture(layer):
        def hook(module, inputs, output):
            y = (output if site == "mlp.out" else inputs[0]).detach().cpu().float()
            keep = state["mask"].reshape(-1) > 0
            per_step[state["step"]][layer] = y.reshape(-1, y.shape[-1])[keep]
        return hook

    handles = [adapter.down_proj(model, layer).register_forward_hook(capture(layer)) for layer in layers]
    with torch.no_grad():
        for step, text in enumerate(texts):
            encoded = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)
            state["step"], state["mask"] = step, encoded["attention_mask"]
            model(**encoded)
    for handle in handles:
        handle.remove()
    rows = [torch.cat([per_step[step][layer] for layer in layers], dim=1) for step in sorted(per_step)]
    X = torch.cat(rows, dim=0).numpy()
    times["capture"] = time.perf_counter() - mark

    mark = time.perf_counter()
    Xz = StandardScaler().fit_transform(X)
    pca = PCA(n_components=1000, random_state=SEED)
    Z = pca.fit_transform(Xz)
    times["pca"] = time.perf_counter() - mark
    mark = time.perf_counter()
    ica = FastICA(n_components=components, random_state=SEED, max_iter=200, tol=1e-3).fit(Z)
    weights = pca.components_.T @ ica.mixing_  # neurons x components
    width = X.shape[1] // len(layers)
    found = []
    for c in range(weights.shape[1]):
        magnitude = np.abs(weights[:, c])
        columns = np.flatnonzero(magnitude >= np.percentile(magnitude, 98.0))
        neurons: dict[int, list[int]] = {}
        for column in columns:
            neurons.setdefault(layers[column // width], []).append(int(column % width))
        found.append(Component(c, neurons))
    times["ica"] = time.perf_counter() - mark
    Template(site=site, width=width, num_layers=len(layers), layers=layers, components=found,
             model=model_identity(loaded.info),
             method={"name": "ica", "recipe": "predecessor", "components": components, "pca_dims": 1000,
                     "percentile": 98.0, "seed": SEED},
             data={"sources": [str(data)], "rows": len(texts), "tokens": int(X.shape[0])}).save(out)
    return {"tokens": int(X.shape[0]), "neurons": int(X.shape[1]), "stages": times}


def run_ours(data: Path, out: Path, site: str, components: int, max_length: int, sequences: int) -> dict:
    from fnapi.events import ListSink, StageFinished
    from fnapi.models.loading import EMBEDDED_MODEL, load_model
    from fnapi.networks.build import build_template
    from fnapi.recipe import TemplateSection

    start = time.perf_counter()
    loaded = load_model(EMBEDDED_MODEL)
    times = {"load": time.perf_counter() - start}
    sink = ListSink()
    section = TemplateSection(site=site, components=components, samples=sequences, max_length=max_length)
    template = build_template(loaded, section, [str(data)], seed=SEED, sink=sink)
    template.save(out)
    for event in sink.of_type(StageFinished):
        times[event.stage] = event.seconds
    return {"tokens": template.data["tokens"], "neurons": template.width * len(template.layers), "stages": times,
            "stability": [c.stability for c in template.components]}


def child(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    if args.child == "predecessor":
        _abort_when_memory_runs_out(args.memory_floor)
        result = run_predecessor(args.data, args.out, args.site, args.components, args.max_length)
    else:
        result = run_ours(args.data, args.out, args.site, args.components, args.max_length, args.sequences)
    result["wall_seconds"] = time.perf_counter() - start
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result["load_average"] = os.getloadavg()[0]
    print(json.dumps(result))


def _abort_when_memory_runs_out(floor_gb: float) -> None:
    """Stop this process before the machine's memory runs out (other work shares the machine)."""
    import threading

    import psutil

    def watch() -> None:
        while True:
            available = psutil.virtual_memory().available / 2**30
            if available < floor_gb:
                print(f"aborted: only {available:.1f} GB of memory left on the machine", file=sys.stderr, flush=True)
                os._exit(3)
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()


# ---- the parent: data, children, comparison -------------------------------------------------------

def wait_for_memory(gigabytes: float, minutes: float) -> float:
    """Wait until ``gigabytes`` are available (at most ``minutes``); returns what is available."""
    import psutil

    deadline = time.time() + 60 * minutes
    while True:
        available = psutil.virtual_memory().available / 2**30
        if available >= gigabytes or time.time() >= deadline:
            return available
        print(f"waiting for {gigabytes:.1f} GB of free memory ({available:.1f} GB available)", file=sys.stderr)
        time.sleep(30)


def spawn(way: str, args: argparse.Namespace, data: Path, out: Path) -> dict:
    command = [sys.executable, __file__, "--child", way, "--data", str(data), "--out", str(out), "--site", args.site,
               "--components", str(args.components), "--max-length", str(args.tokens),
               "--sequences", str(args.sequences), "--memory-floor", str(args.memory_floor)]
    print(f"running {way} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{way} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - started
    print(f"{way}: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", default="mlp.out", choices=["mlp.out", "mlp.hidden"])
    parser.add_argument("--sequences", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=512, help="tokens per sequence")
    parser.add_argument("--components", type=int, default=10)
    parser.add_argument("--skip-predecessor", action="store_true", help="do not run the predecessor's recipe")
    parser.add_argument("--skip-ours", action="store_true", help="do not run ours")
    parser.add_argument("--wait", type=float, default=30.0, help="minutes to wait for free memory")
    parser.add_argument("--memory-floor", type=float, default=1.0,
                        help="GB of machine memory below which the predecessor's run stops itself")
    parser.add_argument("--keep", type=Path, default=None,
                        help="folder for the data, templates and results; results already there are reused "
                             "for a way that is skipped")
    parser.add_argument("--child", choices=["predecessor", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--max-length", type=int, default=512, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    folder = args.keep or Path(tempfile.mkdtemp(prefix="fnapi-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "text.jsonl"
    if not data.exists():
        make_text(data, args.sequences, args.tokens)
    report: dict = {"site": args.site, "sequences": args.sequences, "tokens_per_sequence": args.tokens,
                    "components": args.components, "cpu_count": os.cpu_count()}
    results: dict[str, dict] = {}
    for way in ("ours", "predecessor"):
        saved = folder / f"{way}.{args.site}.result.json"
        if not getattr(args, f"skip_{way}"):
            if way == "predecessor":
                if args.site != "mlp.out":
                    report["predecessor"] = "not run: its float32 copies of a 46,080-neuron matrix do not fit in memory"
                    continue
                neurons = 30 * 576  # the embedded model's layers x hidden size
                needed = PREDECESSOR_COPIES * args.sequences * args.tokens * neurons * 4 / 2**30 + 1.5
                report["memory_available_gb_before_predecessor"] = round(wait_for_memory(needed, args.wait), 1)
            results[way] = spawn(way, args, data, folder / f"{way}.{args.site}.json")
            saved.write_text(json.dumps(results[way]))
        elif saved.exists():
            results[way] = {**json.loads(saved.read_text()), "reused_from": str(saved)}
        if way in results:
            report[way] = results[way]
    if "ours" in results and "predecessor" in results:
        ours, theirs = results["ours"], results["predecessor"]
        report["time_ratio"] = round(ours["wall_seconds"] / theirs["wall_seconds"], 3)
        report["peak_rss_ratio"] = round(ours["peak_rss_bytes"] / theirs["peak_rss_bytes"], 3)
        from fnapi.networks.template import Template, compare

        comparison = compare(Template.load(folder / f"predecessor.{args.site}.json"),
                             Template.load(folder / f"ours.{args.site}.json"))
        report["best_match_iou"] = [round(m["iou"], 3) for m in comparison.best_matches]
        report["mean_best_match_iou"] = round(comparison.mean_best_iou, 3)
    report["files"] = str(folder)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
