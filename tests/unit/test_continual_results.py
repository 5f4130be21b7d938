"""Continual-learning result files: the per-run and single-task files, the folder layout, collecting
finished runs, and continual.json / continual.md / matrix.png."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fnapi.continual_learning import summary as summary_module
from fnapi.continual_learning.results import (
    ContinualRun,
    SingleTaskResult,
    collect_runs,
    run_result_path,
    single_result_path,
)
from fnapi.continual_learning.summary import CONTINUAL_JSON, CONTINUAL_MD, MATRIX_PNG, summarize, write_outputs
from fnapi.errors import DataError
from fnapi.measures import seed_interval

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _data(**changes) -> dict:
    data = {"format": "fnapi.continual-run/1", "method": "replay", "order": ["a", "b", "c"], "order_index": 1,
            "seed": 7, "matrix": [[0.1, 0.2, 0.3], [0.9, 0.2, 0.3], [0.8, 0.9, 0.3], [0.7, 0.8, 0.9]],
            "single_task": None, "probes": [0.5, 0.48, 0.46, 0.45], "probes_change_ci95": [-0.09, -0.01],
            "seconds": 12.5, "steps": [10, 10, 12]}
    data.update(changes)
    return data


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "result.json"
    path.write_text(json.dumps(data))
    return path


def test_a_run_result_round_trips_through_its_file(tmp_path):
    run = ContinualRun.from_dict(_data(single_task=[0.8, 0.85, 0.9]))
    path = run.save(tmp_path / "deep" / "result.json")
    assert ContinualRun.load(path) == run
    assert json.loads(path.read_text())["format"] == "fnapi.continual-run/1"
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]  # no temporary file left
    single = SingleTaskResult(task="b", seed=7, score=0.75, steps=20, seconds=3.0)
    assert SingleTaskResult.load(single.save(tmp_path / "b.json")) == single


@pytest.mark.parametrize("changes, field, words", [
    ({"matrix": [[0.1, 0.2, 0.3], [0.9, 0.2, 0.3], [0.8, 0.9, 0.3]]}, "matrix", "needs 4 rows"),
    ({"matrix": [[0.1, 0.2, 0.3], [0.9, 0.2], [0.8, 0.9, 0.3], [0.7, 0.8, 0.9]]}, "matrix", "row 1 has 2 scores"),
    ({"probes": [0.5, 0.4]}, "probes", "one accuracy per matrix row (4"),
    ({"single_task": [0.8, 0.9]}, "single_task", "one value per task of order (3)"),
    ({"steps": [10, 10]}, "steps", "one value per task of order (3)"),
    ({"probes_change_ci95": [0.1, -0.1]}, "probes_change_ci95", "low <= high"),
    ({"order": ["a", "a", "c"]}, "order", "a appears more than once"),
    ({"format": "fnapi.continual-run/9"}, "format", "fnapi.continual-run/1"),
    ({"seconds": "long"}, "seconds", "valid number"),
    ({"matrix": [[0.1, 0.2, 0.3], [0.9, 0.2, 0.3], [0.8, 0.9, 0.3], [0.7, 0.8, float("nan")]]}, "matrix.[3].[2]",
     "finite number"),
])
def test_a_bad_run_file_names_the_file_and_the_field(tmp_path, changes, field, words):
    path = _write(tmp_path, _data(**changes))
    with pytest.raises(DataError) as caught:
        ContinualRun.load(path)
    error = caught.value
    assert error.exit_code == 2
    assert str(path) in error.message and words in error.message
    assert error.field == field.replace(".[", "[")


def test_an_unknown_key_and_a_file_that_is_not_json_are_refused_with_the_file_name(tmp_path):
    path = _write(tmp_path, _data(matrx=[]))
    with pytest.raises(DataError, match="matrx: unknown key; did you mean 'matrix'") as caught:
        ContinualRun.load(path)
    assert str(path) in caught.value.message
    path.write_text('{"method": ')
    with pytest.raises(DataError, match=f"{path}: not valid JSON"):
        ContinualRun.load(path)
    with pytest.raises(DataError, match="continual run result not found"):
        ContinualRun.load(tmp_path / "missing.json")
    single = tmp_path / "a.json"
    single.write_text(json.dumps({"format": "fnapi.continual-single/1", "task": "a", "seed": 1, "score": 0.5,
                                  "steps": -1, "seconds": 1.0}))
    with pytest.raises(DataError, match="steps: Input should be greater than or equal to 0") as caught:
        SingleTaskResult.load(single)
    assert str(single) in caught.value.message


def test_the_layout_of_an_output_folder(tmp_path):
    assert run_result_path(tmp_path, "replay", 2, 5) == tmp_path / "runs" / "replay" / "order-2" / "seed-5" / "result.json"
    assert single_result_path(tmp_path, "qa", 5) == tmp_path / "single" / "seed-5" / "qa.json"
    for bad in ("../up", "a/b", ".hidden", ""):
        with pytest.raises(DataError, match="cannot be a file name in the output folder"):
            run_result_path(tmp_path, bad, 0, 1)
        with pytest.raises(DataError, match="cannot be a file name"):
            single_result_path(tmp_path, bad, 1)


def _tree(root: Path) -> None:
    orders = [["a", "b", "c"], ["c", "b", "a"]]
    for method in ("sequential_lora", "replay"):
        for k, order in enumerate(orders):
            for seed in (1, 2):
                run = ContinualRun.from_dict(_data(method=method, order=order, order_index=k, seed=seed))
                run.save(run_result_path(root, method, k, seed))
    scores = {"a": 0.6, "b": 0.7, "c": 0.8}
    for task, score in scores.items():  # seed 1 has every single-task baseline, seed 2 lacks c
        SingleTaskResult(task=task, seed=1, score=score, steps=10, seconds=2.0).save(single_result_path(root, task, 1))
        if task != "c":
            SingleTaskResult(task=task, seed=2, score=score, steps=10, seconds=2.0).save(single_result_path(root, task, 2))


def test_collect_runs_reads_every_finished_run_and_fills_single_task_in_its_order(tmp_path):
    _tree(tmp_path)
    # a result being written is a temporary file, not a finished run
    (run_result_path(tmp_path, "replay", 0, 3).parent).mkdir(parents=True)
    (run_result_path(tmp_path, "replay", 0, 3).parent / ".result.json.x.tmp").write_text("{")
    runs = collect_runs(tmp_path)
    assert [(r.method, r.order_index, r.seed) for r in runs] == [
        (m, k, s) for m in ("replay", "sequential_lora") for k in (0, 1) for s in (1, 2)]
    by_key = {(r.method, r.order_index, r.seed): r for r in runs}
    assert by_key["replay", 0, 1].single_task == [0.6, 0.7, 0.8]
    assert by_key["replay", 1, 1].single_task == [0.8, 0.7, 0.6]  # order c, b, a
    assert by_key["replay", 0, 2].single_task is None  # c's baseline for seed 2 is missing
    summary = summarize(runs, ["a", "b", "c"])
    assert summary.methods["replay"].fwt is not None and summary.methods["replay"].fwt.n == 2
    assert collect_runs(tmp_path / "empty") == []


def test_collect_runs_refuses_a_result_in_the_wrong_place(tmp_path):
    _tree(tmp_path)
    moved = run_result_path(tmp_path, "replay", 0, 9)
    moved.parent.mkdir(parents=True)
    moved.write_text(run_result_path(tmp_path, "replay", 0, 1).read_text())
    with pytest.raises(DataError, match="seed: 1, but the file is in seed-9") as caught:
        collect_runs(tmp_path)
    assert str(moved) in caught.value.message
    moved.unlink()
    wrong = single_result_path(tmp_path, "b", 1)
    wrong.write_text(single_result_path(tmp_path, "a", 1).read_text())
    with pytest.raises(DataError, match="task: 'a', but the file is where the result of task 'b' belongs"):
        collect_runs(tmp_path)


# ---- continual.json, continual.md, matrix.png ----------------------------------------------------------

def _summary(tmp_path: Path):
    _tree(tmp_path)
    return summarize(collect_runs(tmp_path), ["a", "b", "c"])


def test_continual_json_has_the_agreed_keys(tmp_path):
    paths = write_outputs(_summary(tmp_path), tmp_path / "out")
    assert [p.name for p in paths] == [CONTINUAL_JSON, CONTINUAL_MD, MATRIX_PNG]
    data = json.loads((tmp_path / "out" / CONTINUAL_JSON).read_text())
    assert {"tasks", "orders", "methods", "seconds"} <= set(data)
    assert data["tasks"] == ["a", "b", "c"] and data["orders"] == [["a", "b", "c"], ["c", "b", "a"]]
    assert data["seconds"] == pytest.approx(8 * 12.5)
    method = data["methods"]["replay"]
    assert {"matrix", "aa", "bwt", "fwt", "probes_retained", "seeds", "aa_ci95", "bwt_ci95", "fwt_ci95",
            "probes_retained_ci95", "vs_reference", "single_task", "runs"} <= set(method)
    assert method["matrix"][0] == [0.1, 0.2, 0.3]  # row 0: the base model
    assert method["aa"] == pytest.approx(0.8) and method["bwt"] == pytest.approx(-0.15)
    assert method["seeds"] == [1, 2] and len(method["aa_ci95"]) == 2
    assert method["vs_reference"]["method"] == "sequential_lora"
    assert set(method["vs_reference"]["aa"]) >= {"diff", "ci95"} and set(method["vs_reference"]["bwt"]) >= {"diff", "ci95"}
    assert data["methods"]["sequential_lora"]["vs_reference"] is None
    run = method["runs"][0]
    assert {"order_index", "seed", "matrix", "aa", "bwt", "fwt", "probes_retained", "seconds"} <= set(run)
    assert run["fwt"] == pytest.approx(((0.9 - 0.7) + (0.9 - 0.8)) / 2)  # order 0, seed 1: has single-task scores


def test_continual_md_has_the_table_the_sentences_and_the_picture(tmp_path):
    write_outputs(_summary(tmp_path), tmp_path)
    text = (tmp_path / CONTINUAL_MD).read_text()
    assert "| method | AA | BWT | FWT | probes retained | vs sequential_lora (BWT) | runs |" in text
    assert "| replay | 0.800 [0.800, 0.800] | -0.150 [-0.150, -0.150] |" in text
    assert "| 90.0% [90.0, 90.0] | +0.000 [+0.000, +0.000] | 4 |" in text
    # identical results: no difference can be claimed
    assert "replay vs sequential_lora over 4 paired runs: no difference beyond the 95% interval" in text
    assert "- order 1: c → b → a" in text and "Tasks: a, b, c." in text
    assert "![accuracy matrices](matrix.png)" in text
    assert (tmp_path / MATRIX_PNG).read_bytes()[:8] == PNG_MAGIC


def test_a_difference_beyond_the_interval_is_said_in_words(tmp_path):
    runs = []
    for k in (0, 1):
        for seed in (1, 2, 3):
            for method, end in (("sequential_lora", 0.3), ("replay", 0.7 + 0.01 * seed)):
                matrix = [[0.1, 0.1], [0.9, 0.1], [end, 0.9]]
                runs.append(ContinualRun(method=method, order=[["a", "b"], ["b", "a"]][k], order_index=k, seed=seed,
                                         matrix=matrix, seconds=1.0, steps=[1, 1]))
    text = summarize(runs, ["a", "b"]).to_markdown()
    bwt = seed_interval([0.4 + 0.01 * seed for _ in (0, 1) for seed in (1, 2, 3)])
    low, high = bwt.ci95
    assert (f"replay vs sequential_lora over 6 paired runs: BWT +0.420 [{low:+.3f}, {high:+.3f}]: less forgetting "
            "of earlier tasks than sequential_lora, beyond the 95% interval") in text
    assert "AA +0.210 [" in text and "higher average accuracy than sequential_lora" in text
    worse = summarize([r.model_copy(update={"method": {"replay": "sequential_lora", "sequential_lora": "replay"}[r.method]})
                       for r in runs], ["a", "b"]).to_markdown()
    assert "BWT -0.420 [" in worse and "more forgetting of earlier tasks than sequential_lora" in worse
    one = summarize([r for r in runs if r.order_index == 0 and r.seed == 1], ["a", "b"]).to_markdown()
    assert "a single run pairs with sequential_lora" in one and "no difference can be claimed" in one


def test_a_failed_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    summary = _summary(tmp_path / "runs-here")
    out = tmp_path / "out"

    def broken_plot(_summary):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(summary_module, "plot_matrices", broken_plot)
    with pytest.raises(RuntimeError, match="plotting failed"):
        write_outputs(summary, out)
    assert not out.exists() or list(out.iterdir()) == []
    monkeypatch.undo()

    real_replace = os.replace

    def replace(source, target):
        if str(target).endswith(MATRIX_PNG):
            raise OSError(28, "No space left on device")
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        write_outputs(summary, out)
    assert sorted(p.name for p in out.iterdir()) == [CONTINUAL_JSON, CONTINUAL_MD]  # whole files, no temporaries
    json.loads((out / CONTINUAL_JSON).read_text())


def test_the_summary_modules_import_no_heavy_library():
    import subprocess
    import sys

    code = ("import sys, fnapi.continual_learning.metrics, fnapi.continual_learning.results, fnapi.continual_learning.summary\n"
            "print(' '.join(m for m in ('torch', 'transformers', 'peft', 'datasets', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert out.stdout.split() == []
