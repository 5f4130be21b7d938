"""The ``fntui`` command: fast help, headless replay like ``fnapi run``, readable errors."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import fnapi.runner
from fnapi.recipe import Recipe
from fntui.cli import main
from tests.tui.helpers import FakeRun

SCRIPT = str(Path(sys.executable).with_name("fntui"))
HEAVY = ("textual", "questionary", "torch", "transformers", "pydantic", "fnapi.recipe")


def test_help_answers_fast_and_imports_nothing_heavy():
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert out.returncode == 0
    assert "--resume" in out.stdout and "browse" in out.stdout and "replay" in out.stdout
    assert cpu < 0.5  # CPU time, so a busy machine does not make the test flaky
    code = "import sys\nfrom fntui.cli import app\nprint(' '.join(sorted(sys.modules)))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    assert [m for m in HEAVY if m in loaded] == []


def test_replay_runs_the_recipe_like_fnapi_run(workdir, monkeypatch, capsys):
    fake = FakeRun()
    monkeypatch.setattr(fnapi.runner, "run", fake)
    recipe = Recipe().replace(**{"name": "replayed", "train.steps": 4})
    recipe.to_yaml("replayed.yaml")
    assert main(["replay", "replayed.yaml", "--output", "runs/here"]) == 0
    assert fake.calls == [recipe]
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == "runs/here"
    assert "[train] step 4 loss=0.75" in captured.err  # console progress, as with fnapi run


def test_user_errors_exit_2_with_one_readable_paragraph(workdir, capsys):
    assert main(["replay", "missing.yaml"]) == 2
    assert "recipe file not found: missing.yaml" in capsys.readouterr().err
    assert main(["browse", "missing.json"]) == 2
    assert "template file not found: missing.json" in capsys.readouterr().err
