"""How long a cancel takes: from SIGINT during training to the process's exit. Prints JSON.

Starts ``fnapi run`` on the embedded model (LoRA, no template, no scoring, so training starts
soon), waits until the third training step has been reported in ``events.jsonl``, sends SIGINT
(what Ctrl-C and the wizard's cancel both do: stop at the next step, save a checkpoint) and times
the exit. The mean step time is printed beside it: a cancel should cost at most about one step
plus the checkpoint's write.

    python benchmarks/cancel_latency.py
    python benchmarks/cancel_latency.py --batch 16 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = """version: 1
name: cancel-latency
model: {{name: smollm2-135m-instruct}}
data: {{path: builtin:skill, max_length: 64}}
train: {{method: lora, steps: 200, batch_size: {batch}, logging_steps: 1, save_steps: 1000}}
eval: {{enabled: false}}
"""


def _train_steps(events: Path) -> list[float]:
    """Times of the training Progress events so far."""
    times = []
    try:
        lines = events.read_text(encoding="utf-8").splitlines()
    except OSError:
        return times
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("type") == "progress" and event.get("stage") == "train":
            times.append(float(event["time"]))
    return times


def once(work: Path, batch: int) -> dict:
    recipe = work / "recipe.yaml"
    recipe.write_text(RECIPE.format(batch=batch))
    out = work / "run"
    process = subprocess.Popen([sys.executable, "-m", "fnapi", "run", str(recipe), "--output", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 600
    while len(_train_steps(out / "events.jsonl")) < 3:
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the run ended or stalled before its third step (exit {process.poll()})")
        time.sleep(0.2)
    steps = _train_steps(out / "events.jsonl")
    step_seconds = (steps[-1] - steps[0]) / (len(steps) - 1)
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    code = process.wait(timeout=600)
    latency = time.monotonic() - sent
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*"))
    return {"exit_code": code, "cancel_seconds": round(latency, 1), "step_seconds": round(step_seconds, 1),
            "checkpoints": checkpoints}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    results = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as folder:
            results.append(once(Path(folder), args.batch))
    print(json.dumps({"batch": args.batch, "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
