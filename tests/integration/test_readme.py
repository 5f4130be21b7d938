"""The README's examples work exactly as written (on the embedded model, so marked slow)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def _block(language: str, after_heading: str) -> str:
    section = README.split(f"## {after_heading}", 1)[1]
    match = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert match, f"README has no {language} block under '{after_heading}'"
    return match.group(1)


def _workdir(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "recipes", tmp_path / "recipes")
    return tmp_path


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}


def test_setup_commands_are_the_makefile_targets():
    commands = [line.split("#")[0].strip() for line in _block("bash", "Set up").strip().splitlines()]
    assert commands == ["make demo", "make test"]
    makefile = (REPO / "Makefile").read_text()
    assert "fnapi run recipes/quickstart.yaml" in makefile
    assert "pytest" in makefile
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_command_line_examples(tmp_path):
    cwd = _workdir(tmp_path)
    for line in _block("bash", "Command line").strip().splitlines():
        command = line.split("  #", 1)[0].strip()
        argv = shlex.split(command)
        if argv[0] == "fntui":
            continue  # full-screen apps: driven by the Pilot tests in tests/tui
        if "*" in command:
            argv = argv[:-1] + sorted(str(p.relative_to(cwd)) for p in cwd.glob(argv[-1]))
        out = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=1200)
        assert out.returncode == 0, f"{command}\n{out.stdout}\n{out.stderr}"
        if argv[:2] == ["fnapi", "ask"]:
            assert "Paris" in out.stdout
        if argv[:2] == ["fnapi", "run"]:
            assert out.stdout.strip().splitlines()[-1] == "runs/readme"
            assert (cwd / "runs" / "readme" / "report.json").exists()


def test_python_example(tmp_path):
    cwd = _workdir(tmp_path)
    script = cwd / "example.py"
    script.write_text(_block("python", "Python"))
    out = subprocess.run([sys.executable, str(script)], cwd=cwd, env=_env(), capture_output=True, text=True,
                         timeout=1800)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("probe accuracy: ") and lines[1].startswith("network lesioned: ")
    run_dir, retained = lines[-1].rsplit(" ", 1)
    assert Path(cwd / run_dir, "report.json").exists()
    assert float(retained) > 0


def test_lm_eval_example(tmp_path):
    pytest.importorskip("lm_eval", reason="the eval extra (lm-eval) is part of the dev install")
    from fnapi.recipe import Recipe
    from tests.unit.test_lm_eval_bridge import write_capitals_task

    section = README.split("## Standard benchmarks (lm-eval)", 1)[1].split("\n## ", 1)[0]
    task_yaml, recipe_yaml = re.findall(r"```yaml\n(.*?)```", section, re.S)
    write_capitals_task(tmp_path / "tasks")  # the rows; the task YAML is the README's
    (tmp_path / "tasks" / "capitals.yaml").write_text(task_yaml)
    assert Recipe.from_yaml_text(recipe_yaml).eval.lm_eval.tasks == ["capitals"]
    command = _block("bash", "Standard benchmarks (lm-eval)").strip().splitlines()[0].split("  #", 1)[0]
    out = subprocess.run(shlex.split(command), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, f"{command}\n{out.stdout}\n{out.stderr}"
    rows = [[cell.strip() for cell in re.split(r"[│|]", line)] for line in out.stdout.splitlines()]
    task, metric, n, value, stderr = next(row for row in rows if row[0] == "capitals")
    assert (metric, n) == ("acc", "20") and 0.0 <= float(value) <= 1.0 and float(stderr) > 0


def test_continual_learning_examples(tmp_path):
    """The section's commands as written, with training and scoring cut short (--set) for time."""
    cwd = _workdir(tmp_path)
    short = ["--set", "train.steps=2", "--set", "eval.task_samples=2", "--set", "eval.probe_samples=4",
             "--set", "eval.max_new_tokens=4"]
    for line in _block("bash", "Continual learning").strip().splitlines():
        argv = shlex.split(line.split("  #", 1)[0])
        if argv[1] == "continual" and "--list" not in argv:
            argv += short
        out = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=1800)
        assert out.returncode == 0, f"{line}\n{out.stdout}\n{out.stderr}"
        if "--list" in argv:
            units = out.stdout.strip().splitlines()
            assert units[0].startswith("0\t") and len(units) > 7
        elif argv[1] == "continual":
            data = json.loads((cwd / argv[argv.index("--output") + 1] / "continual.json").read_text())
            assert len(data["methods"]) == 2 and all(len(m["matrix"]) == 3 for m in data["methods"].values())
        else:
            scripts = sorted(p.name for p in cwd.glob("*.sbatch"))
            assert len(scripts) == 2, out.stdout
