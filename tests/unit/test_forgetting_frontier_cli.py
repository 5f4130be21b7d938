"""The frontier benchmark's command line (benchmarks/forgetting_frontier.py): every config is a valid
recipe, and a bad output folder is an error message with exit code 2, not a traceback."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fnapi.recipe import Recipe

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "forgetting_frontier.py"


@pytest.fixture(scope="module")
def frontier():
    spec = importlib.util.spec_from_file_location("forgetting_frontier", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_config_is_a_valid_recipe_named_after_it(frontier):
    for name, build in frontier.CONFIGS.items():
        recipe = Recipe.from_dict(build(name), source=name)
        assert recipe.name == name


def test_list_prints_the_config_names(frontier, tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--list"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["configs"] == list(frontier.CONFIGS)


def test_an_output_folder_that_is_not_a_run_is_refused_with_exit_2_and_no_traceback(tmp_path):
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "notes.txt").write_text("someone else's file\n")
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--configs", "lora"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert str(tmp_path / "lora") in done.stderr and "is not an fnapi run" in done.stderr
    assert (tmp_path / "lora" / "notes.txt").read_text() == "someone else's file\n"


def test_a_bad_set_override_is_refused_with_exit_2_naming_the_field(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--configs", "lora",
                           "--set", "train.no_such_field=1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "no_such_field" in done.stderr
    assert not (tmp_path / "lora").exists()
