"""Measure how fast `fnapi --help` and `fntui --help` answer (target: under 0.5 s). Prints JSON."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time


def measure(command: list[str], repeats: int = 5) -> dict:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return {"command": " ".join(command), "median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3)}


def main() -> None:
    results = []
    for name in ("fnapi", "fntui"):
        exe = shutil.which(name) or str(__import__("pathlib").Path(sys.executable).with_name(name))
        results.append(measure([exe, "--help"]))
    print(json.dumps({"benchmark": "cli_startup", "target_s": 0.5, "results": results}, indent=2))


if __name__ == "__main__":
    main()
