"""Run fnapi through hostile conditions end to end and print a JSON table. Run by hand, as root for the
full disk and read-only cases (they mount a small tmpfs; without permission they are reported as skipped).

Every case runs the real command line in a subprocess on a tiny model and records: the exit code and
whether it is the expected one, the first error line, the seconds it took, and ``nothing_lost``: the
check that no work was lost or half-written (a resumable checkpoint, a kept template, no partial
checkpoint, the saved recipe byte-exact...). Usage::

    python benchmarks/hostile.py [--work /tmp/fnapi-hostile] [--only signals,disk_full]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

FNAPI = [sys.executable, "-m", "fnapi"]
TOKEN = "hf_" + "Zq3" * 11 + "x"  # the real shape: hf_ and 34 letters or digits
RECIPE = """version: 1
name: hostile
model: {{name: '{model}'}}
data: {{path: '{data}', max_length: 48, max_samples: 64}}
train: {{steps: {steps}, batch_size: 4, logging_steps: 1, save_steps: 2, learning_rate: 1e-3}}
eval: {{task_samples: 4, probe_samples: 8, kl_prompts: 2, max_new_tokens: 4}}
"""


class Bench:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.rows: list[dict[str, Any]] = []
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "FNAPI_CACHE": str(work / "cache")}
        self.env.pop("HF_TOKEN", None)

    # ---- helpers ---------------------------------------------------------------------------
    def recipe(self, name: str, steps: int = 4, data: str = "builtin:skill", extra: str = "") -> Path:
        path = self.work / f"{name}.yaml"
        path.write_text(RECIPE.format(model=self.work / "tiny", data=data, steps=steps) + extra, encoding="utf-8")
        return path

    def fnapi(self, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([*FNAPI, *args], env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def record(self, case: str, expected: int, out: subprocess.CompletedProcess | None, started: float,
               nothing_lost: bool | None, note: str = "", code: int | None = None) -> None:
        code = out.returncode if out is not None else code
        err = out.stderr if out is not None else ""
        all_lines = err.splitlines()
        first = next((i for i, line in enumerate(all_lines) if line.startswith(("error:", "run stopped", "Error:"))),
                     None)
        lines = [" / ".join(all_lines[first:first + 2])] if first is not None else []
        self.rows.append({
            "case": case, "exit_code": code, "expected": expected, "ok": code == expected and nothing_lost is not False,
            "message": (lines[0] if lines else note)[:240], "nothing_lost": nothing_lost,
            "traceback": "Traceback" in err, "seconds": round(time.monotonic() - started, 1),
        })
        print(f"{case}: exit {code} (expected {expected}), nothing lost: {nothing_lost}", file=sys.stderr)

    def skip(self, case: str, why: str) -> None:
        self.rows.append({"case": case, "skipped": why})
        print(f"{case}: skipped ({why})", file=sys.stderr)

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([*FNAPI, *args], env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, stdin=subprocess.DEVNULL)


def _complete_checkpoints(run_dir: Path) -> tuple[list[Path], list[Path]]:
    folders = sorted((run_dir / "checkpoints").glob("checkpoint-*")) if (run_dir / "checkpoints").is_dir() else []
    complete = [p for p in folders if (p / "fnapi_state.json").is_file()]
    return complete, [p for p in folders if p not in complete]


def _wait_for_checkpoint(process: subprocess.Popen, run_dir: Path, limit: float = 300) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and process.poll() is None:
        if _complete_checkpoints(run_dir)[0]:
            return
        time.sleep(0.2)


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A loopback server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    stop, held = threading.Event(), []

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        server.close()


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[bool]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


# ---- the cases -------------------------------------------------------------------------------

def hub_silent(b: Bench) -> None:
    with silent_server() as port:
        env = {"HF_ENDPOINT": f"http://127.0.0.1:{port}", "FNAPI_HUB_TIMEOUT": "3", "HF_HUB_OFFLINE": "",
               "HF_HOME": str(b.work / "hf-home")}
        started = time.monotonic()
        out = b.fnapi("data", "inspect", "some-org/x", env=env, timeout=120)
        b.record("hub_accepts_never_answers: data inspect", 2, out, started, None)
        recipe = b.recipe("hub-model").read_text().replace(f"'{b.work / 'tiny'}'", "some-org/x")
        (b.work / "hub-model.yaml").write_text(recipe)
        started = time.monotonic()
        out = b.fnapi("run", str(b.work / "hub-model.yaml"), "-o", str(b.work / "hub-run"), env=env, timeout=120)
        b.record("hub_accepts_never_answers: run", 2, out, started, None)


def signals(b: Bench) -> None:
    for signum, expected in ((signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGKILL, -9)):
        name = signal.Signals(signum).name
        run_dir = b.work / f"signal-{name}"
        started = time.monotonic()
        process = b.start("run", str(b.recipe(f"signal-{name}", steps=40)), "-o", str(run_dir))
        _wait_for_checkpoint(process, run_dir)
        process.send_signal(signum)
        _, err = process.communicate(timeout=300)
        done = subprocess.CompletedProcess([], process.returncode, "", err)
        complete, partial = _complete_checkpoints(run_dir)
        again = b.fnapi("run", str(run_dir / "recipe.yaml"))
        resumed = again.returncode == 0 and "resuming from checkpoint-" in again.stderr
        b.record(f"{name} during training, then the resume command", expected, done, started,
                 bool(complete) and not partial and resumed,
                 note=f"resumed: {resumed}")


def concurrent(b: Bench) -> None:
    run_dir = b.work / "shared"
    recipe = b.recipe("shared", steps=40)
    first = b.start("run", str(recipe), "-o", str(run_dir))
    _wait_for_checkpoint(first, run_dir)
    started = time.monotonic()
    second = b.fnapi("run", str(recipe), "-o", str(run_dir), timeout=120)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=300)
    events = (run_dir / "events.jsonl").read_text().splitlines()
    one_run = sum(1 for line in events if json.loads(line)["type"] == "run_started") == 1
    b.record("second run into a live run's folder", 2, second, started,
             one_run and str(first.pid) in second.stderr, note="names the holder's pid")


def disk_full(b: Bench) -> None:
    mount = b.work / "small-disk"
    with small_disk(mount, "400k") as mounted:  # a whole tiny run needs about 800k
        if not mounted:
            return b.skip("full disk during training", "cannot mount a tmpfs here (needs root)")
        run_dir = mount / "run"
        started = time.monotonic()
        out = b.fnapi("run", str(b.recipe("full", steps=40)), "-o", str(run_dir))
        complete, partial = _complete_checkpoints(run_dir)
        subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
        again = b.fnapi("run", str(run_dir / "recipe.yaml"))
        b.record("full disk during training, then more space and the resume command", 2, out, started,
                 not partial and again.returncode == 0 and (run_dir / "finished.json").exists(),
                 note=f"{len(complete)} complete checkpoints kept")


def read_only(b: Bench) -> None:
    mount = b.work / "read-only"
    with small_disk(mount, "8m") as mounted:
        if not mounted:
            return b.skip("template build into a read-only folder", "cannot mount a tmpfs here (needs root)")
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        (b.work / "tmp").mkdir(exist_ok=True)  # TMPDIR counts only when it exists
        started = time.monotonic()
        out = b.fnapi("template", "build", "--model", str(b.work / "tiny"), "--samples", "8", "--max-length", "24",
                      "--components", "2", "--runs", "2", "--out", str(mount / "t.json"),
                      env={"TMPDIR": str(b.work / "tmp")})
        kept = b.work / "tmp" / "fnapi-unsaved-templates" / "t.json"
        b.record("template build into a read-only folder", 2, out, started, kept.is_file(),
                 note=f"kept in {kept}")
        started = time.monotonic()
        out = b.fnapi("run", str(b.recipe("ro-run")), "-o", str(mount / "run"))
        b.record("run into a read-only folder", 2, out, started, None)


def secrets_and_paths(b: Bench) -> None:
    folder = b.work / "hf_myDatasetsForFinetuning2024"
    folder.mkdir(exist_ok=True)
    rows = [{"prompt": f"Say {i}.", "completion": f"{i}"} for i in range(64)]
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir = b.work / "token-path"
    started = time.monotonic()
    process = b.start("run", str(b.recipe("token-path", steps=30, data=str(data))), "-o", str(run_dir))
    _wait_for_checkpoint(process, run_dir)
    process.kill()
    process.wait()
    again = b.fnapi("run", str(run_dir / "recipe.yaml"))
    exact = str(data) in (run_dir / "recipe.yaml").read_text()
    b.record("data path holding hf_ and 24 characters, kill -9, resume", 0, again, started, exact,
             note="recipe.yaml keeps the path exactly")

    started = time.monotonic()
    env = {"HF_TOKEN": TOKEN}
    planted = b.work / "planted"
    out = b.fnapi("run", str(b.recipe("planted")), "-o", str(planted), env=env)
    leaked = [str(p) for p in planted.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    leaked += ["stderr"] if TOKEN in out.stderr else []
    b.record("HF_TOKEN set: found nowhere in the run folder or output", 0, out, started, not leaked,
             note=f"leaks: {leaked}")
    started = time.monotonic()
    out = b.fnapi("run", str(b.recipe("token-field")), "--set", f"data.system_prompt=use {TOKEN}",
                  "-o", str(b.work / "token-field-run"))
    b.record("a token in a recipe field is refused", 2, out, started, TOKEN not in out.stderr)


def bad_values(b: Bench) -> None:
    recipe = b.recipe("values")
    blocker = b.work / "a-file"
    blocker.write_text("x")
    readme_only = b.work / "readme-only"
    readme_only.mkdir(exist_ok=True)
    (readme_only / "readme.txt").write_text("About the data.\n")
    semicolons = b.work / "excel.csv"
    semicolons.write_text("prompt;completion\n" + "".join(f"Say {i}.;{i}\n" for i in range(8)))
    empty = b.work / "empty.yaml"
    empty.write_text("")
    cases: list[tuple[str, int, list[str], dict]] = [
        ("--set seed=-1", 2, ["run", str(recipe), "--set", "seed=-1", "-o", str(b.work / "v1")], {}),
        ("--set train.steps.x=1", 2, ["run", str(recipe), "--set", "train.steps.x=1", "-o", str(b.work / "v2")], {}),
        ("--set template.components=1e19", 2, ["run", str(recipe), "--set", "template.components=1e19",
                                                       "-o", str(b.work / "v4")], {}),
        ("-o pointing at a file", 2, ["run", str(recipe), "-o", str(blocker)], {}),
        ("FNAPI_CACHE pointing at a file", 2, ["run", str(recipe), "-o", str(b.work / "v3")],
         {"FNAPI_CACHE": str(blocker)}),
        ("an empty recipe file", 2, ["validate", str(empty)], {}),
        ("a folder holding only readme.txt", 2, ["data", "inspect", str(readme_only)], {}),
        ("a CSV with ';' separators", 0, ["data", "inspect", str(semicolons)], {}),
        ("an unknown option", 2, ["run", "--bogus", str(recipe)], {}),
    ]
    for case, expected, args, env in cases:
        started = time.monotonic()
        out = b.fnapi(*args, env=env, timeout=120)
        b.record(case, expected, out, started, not blocker.is_dir() and blocker.read_text() == "x")


def foreign_template(b: Bench) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fnapi.networks.template import Component, Template

    path = b.work / "foreign.json"
    Template(site="mlp.out", width=64, num_layers=2, components=[Component(0, {0: [1, 2], 1: [3]})],
             model={"name": "meta-llama/Llama-3.2-1B"}, method={"name": "imported"}).save(path)
    extra = f"template: {{path: '{path}'}}\nmask: {{preset: protect, components: [0]}}\n"
    started = time.monotonic()
    out = b.fnapi("run", str(b.recipe("foreign", extra=extra)), "-o", str(b.work / "foreign-run"))
    b.record("a template made for another model", 2, out, started,
             not list((b.work / "foreign-run").glob("checkpoints/checkpoint-*")))


def leftovers(b: Bench) -> None:
    models = b.work / "cache" / "models"
    models.mkdir(parents=True, exist_ok=True)
    killed = models / ".smollm2-135m-instruct.killed.tmp"
    killed.mkdir(exist_ok=True)
    (killed / "model.safetensors").write_bytes(b"\0" * (8 << 20))
    started = time.monotonic()
    out = b.fnapi("model", "info", "smollm2-135m-instruct", timeout=900)
    b.record("temporary folder of a killed conversion", 0, out, started, not killed.exists(),
             note="removed on the next start")


CASES: dict[str, Callable[[Bench], None]] = {
    "bad_values": bad_values, "secrets": secrets_and_paths, "foreign_template": foreign_template,
    "concurrent": concurrent, "signals": signals, "disk_full": disk_full, "read_only": read_only,
    "hub": hub_silent, "leftovers": leftovers,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/fnapi-hostile"))
    parser.add_argument("--only", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fnapi.models.tiny import save_tiny

    save_tiny("llama", args.work / "tiny")
    bench = Bench(args.work)
    started = time.monotonic()
    for name in args.only.split(","):
        CASES[name.strip()](bench)
    rows = [r for r in bench.rows if "skipped" not in r]
    print(json.dumps({
        "cases": bench.rows, "passed": sum(r["ok"] for r in rows), "failed": sum(not r["ok"] for r in rows),
        "tracebacks": sum(r["traceback"] for r in rows), "seconds": round(time.monotonic() - started, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
