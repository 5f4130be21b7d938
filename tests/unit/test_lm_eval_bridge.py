"""lm-evaluation-harness bridge: local tasks scored on the model in memory, names checked before any
weights load, results kept per document for paired changes, and runs that report them."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os

import pytest
import torch

from fnapi import auth, lm_eval_bridge
from fnapi.cli import main
from fnapi.errors import DataError, ExtraNotInstalledError, OfflineError, RecipeError
from fnapi.eval_target import evaluate_target
from fnapi.events import ListSink, Progress, stage
from fnapi.lm_eval_bridge import LmEvalMetric, LmEvalRequest, LmEvalScores, score
from fnapi.measures import EvalMeasures, compare_measures
from fnapi.models.tiny import save_tiny, tiny_model, tiny_tokenizer
from fnapi.preflight import preflight
from fnapi.recipe import Recipe

pytest.importorskip("lm_eval", reason="the eval extra (lm-eval) is part of the dev install")

CAPITALS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
            ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Russia", "Moscow"), ("Greece", "Athens"),
            ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Norway", "Oslo"), ("Ireland", "Dublin"),
            ("Poland", "Warsaw"), ("China", "Beijing"), ("Kenya", "Nairobi"), ("Peru", "Lima"),
            ("Sweden", "Stockholm"), ("Cuba", "Havana"), ("Canada", "Ottawa"), ("Belgium", "Brussels")]
TASK = "capitals"


def write_capitals_task(folder, name: str = TASK):
    """A 20-item multiple-choice set (the right capital among four) and its lm-eval task YAML."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (country, capital) in enumerate(CAPITALS):
        others = [CAPITALS[(i + k) % len(CAPITALS)][1] for k in (3, 7, 11)]
        answer = i % 4
        choices = others[:answer] + [capital] + others[answer:]
        rows.append({"question": f"What is the capital of {country}?", "choices": choices, "answer": answer})
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    return folder


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    return write_capitals_task(tmp_path_factory.mktemp("lm_eval_tasks"))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("model") / "tiny-llama")


def _by_hand(model, tokenizer, rows) -> list[float]:
    """Accuracy per item computed here: the choice with the highest summed log-probability after
    the prompt, as lm-eval defines a multiple-choice task (continuation " " + choice)."""
    correct = []
    for row in rows:
        context = f"Question: {row['question']}\nAnswer:"
        totals = []
        for choice in row["choices"]:
            whole = tokenizer(context + " " + choice, add_special_tokens=False)["input_ids"]
            start = len(tokenizer(context, add_special_tokens=False)["input_ids"])
            with torch.no_grad():
                logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), dim=-1)
            totals.append(sum(logprobs[pos - 1, whole[pos]].item() for pos in range(start, len(whole))))
        correct.append(float(max(range(len(totals)), key=totals.__getitem__) == row["answer"]))
    return correct


def test_a_local_task_scores_the_model_in_memory_as_computed_by_hand(tasks_dir):
    model, tokenizer = tiny_model("llama", seed=3), tiny_tokenizer()
    model.train()
    sink = ListSink()
    with stage(sink, "evaluate", total=0, unit="item") as progress:
        scores = score(model, tokenizer, LmEvalRequest((TASK,), include=str(tasks_dir), batch_size=4),
                       progress=progress)
    assert model.training  # handed back in the mode it came in
    (acc,) = scores.metrics
    assert (acc.task, acc.metric, acc.filter, acc.n, acc.higher_is_better) == (TASK, "acc", "none", 20, True)
    assert acc.doc_ids == tuple(range(20))
    rows = [json.loads(line) for line in (tasks_dir / f"{TASK}.jsonl").read_text().splitlines()]
    assert list(acc.values) == _by_hand(model.eval(), tokenizer, rows)
    assert acc.value == pytest.approx(sum(acc.values) / 20)
    p = acc.value
    assert acc.stderr == pytest.approx(math.sqrt(p * (1 - p) / 19))  # lm-eval's sample stderr of a mean
    assert scores.version == importlib.metadata.version("lm-eval")
    # Progress reached fnapi's events: every request (20 items x 4 choices) counted, in chunks.
    ticks = [e for e in sink.events if isinstance(e, Progress)]
    assert ticks[-1].completed == ticks[-1].total == 80 and len(ticks) >= 2


def test_limit_scores_the_first_documents_only(tasks_dir):
    scores = score(tiny_model("llama"), tiny_tokenizer(), LmEvalRequest((TASK,), include=str(tasks_dir), limit=5))
    assert scores.metrics[0].n == 5 and scores.metrics[0].doc_ids == (0, 1, 2, 3, 4)


def test_scores_round_trip_and_pair_per_document():
    before = LmEvalScores((LmEvalMetric("t", "acc", value=0.5, stderr=0.1, n=4, doc_ids=(0, 1, 2, 3),
                                        values=(1.0, 0.0, 1.0, 0.0)),), "0.4.13")
    after = LmEvalScores((LmEvalMetric("t", "acc", value=0.75, stderr=0.1, n=4, doc_ids=(0, 1, 2, 3),
                                       values=(1.0, 1.0, 1.0, 0.0)),), "0.4.13")
    measures = EvalMeasures(lm_eval=after)
    again = EvalMeasures.from_dict(json.loads(json.dumps(measures.to_dict())))
    assert again == measures
    assert measures.summary()["lm_eval"] == [{"task": "t", "metric": "acc", "filter": "none", "value": 0.75,
                                              "stderr": 0.1, "n": 4, "higher_is_better": None}]
    (pair,) = compare_measures(EvalMeasures(lm_eval=before), measures)["lm_eval"]
    assert (pair["before"], pair["after"], pair["change"]) == (0.5, 0.75, 0.25)
    low, high = pair["change_ci95"]
    assert low == 0.0 and 0.25 < high <= 1.0  # one document of four changed, from wrong to right
    # A metric that is not the mean of its logged values (an aggregate such as F1) gets no paired interval.
    skewed = LmEvalScores((LmEvalMetric("t", "acc", value=0.9, doc_ids=(0, 1), values=(1.0, 0.0)),))
    assert compare_measures(EvalMeasures(lm_eval=skewed), measures)["lm_eval"][0]["change_ci95"] is None
    with pytest.raises(ValueError):
        EvalMeasures.from_dict({"lm_eval": {"metrics": [{"task": "t"}]}})  # damaged: no metric name


def test_hub_off_while_lm_eval_runs_when_the_hub_is_unreachable(monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setattr(auth, "hub_problem", lambda *also, **kw: "huggingface.co:443 not reachable")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with lm_eval_bridge._hub_guard() as problem:
        assert problem == "huggingface.co:443 not reachable"
        assert os.environ["HF_DATASETS_OFFLINE"] == "1" and os.environ["HF_HUB_OFFLINE"] == "1"
        assert datasets.config.HF_HUB_OFFLINE is True and huggingface_hub.constants.HF_HUB_OFFLINE is True
    assert "HF_DATASETS_OFFLINE" not in os.environ
    assert datasets.config.HF_HUB_OFFLINE is False and huggingface_hub.constants.HF_HUB_OFFLINE is False


def test_a_task_whose_data_is_missing_fails_naming_it_before_weights_load(tmp_path, tiny_dir, monkeypatch):
    folder = write_capitals_task(tmp_path / "tasks", "gone")
    (folder / "gone.jsonl").unlink()
    monkeypatch.setattr("fnapi.models.loading.load_model", _no_model)
    with pytest.raises((DataError, OfflineError), match="lm-eval task 'gone'"):
        evaluate_target(str(tiny_dir), lm_eval=LmEvalRequest(("gone",), include=str(folder)))


def _no_model(*args, **kwargs):
    raise AssertionError("the model must not load when the lm-eval request is bad")


def test_unknown_task_exits_2_with_close_matches_before_the_model_loads(tasks_dir, tiny_dir, monkeypatch, capsys):
    monkeypatch.setattr("fnapi.models.loading.load_model", _no_model)
    code = main(["eval", str(tiny_dir), "--lm-eval", "capitols", "--lm-eval-include", str(tasks_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert "--lm-eval[0]: unknown lm-eval task 'capitols'" in err and "close matches: capitals" in err


def test_missing_lm_eval_names_the_extra_before_the_model_loads(tasks_dir, tiny_dir, monkeypatch, capsys):
    monkeypatch.setattr(lm_eval_bridge, "installed", lambda: False)
    monkeypatch.setattr("fnapi.models.loading.load_model", _no_model)
    code = main(["eval", str(tiny_dir), "--lm-eval", TASK, "--lm-eval-include", str(tasks_dir)])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "lm-eval, which is not installed" in err and "pip install 'fntui[eval]'" in err
    with pytest.raises(ExtraNotInstalledError):
        lm_eval_bridge.require()


def test_eval_json_of_a_model_holds_only_the_benchmarks_asked_for(tasks_dir, tiny_dir, capsys):
    code = main(["eval", str(tiny_dir), "--lm-eval", TASK, "--lm-eval-include", str(tasks_dir), "--limit", "6",
                 "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (data["probes"], data["texts"], data["tasks"]) == ([], [], [])
    (acc,) = data["lm_eval"]
    assert (acc["task"], acc["metric"], acc["n"]) == (TASK, "acc", 6) and 0 <= acc["value"] <= 1


def test_recipe_section_is_strict_and_preflight_checks_folder_and_names(tmp_path, tasks_dir):
    with pytest.raises(RecipeError, match=r"eval\.lm_eval\.limt: unknown key; did you mean 'limit'"):
        Recipe.from_yaml_text(f"version: 1\neval: {{lm_eval: {{tasks: [{TASK}], limt: 5}}}}")
    with pytest.raises(RecipeError, match=r"eval\.lm_eval\.tasks"):
        Recipe.from_yaml_text("version: 1\neval: {lm_eval: {tasks: []}}")
    recipe = Recipe.from_yaml_text(f"version: 1\neval: {{lm_eval: {{tasks: {TASK}, include: {tasks_dir}}}}}")
    assert recipe.eval.lm_eval.tasks == [TASK] and not preflight(recipe)
    assert "lm_eval" not in Recipe().to_dict()["eval"]  # recipes without it keep their fingerprint
    missing = recipe.replace(**{"eval.lm_eval.include": str(tmp_path / "nowhere")})
    assert [(p.path, p.message) for p in preflight(missing)] == [
        ("eval.lm_eval.include", f"folder of task YAMLs not found: {tmp_path / 'nowhere'}")]
    unknown = recipe.replace(**{"eval.lm_eval.tasks": [TASK, "capitols"]})
    (problem,) = preflight(unknown)
    assert problem.path == "eval.lm_eval.tasks[1]" and "close matches: capitals" in problem.message


RUN = """
version: 1
name: tiny-lm-eval
model: {{name: {model}}}
data: {{path: builtin:skill, max_length: 48, max_samples: 32}}
train: {{steps: 4, batch_size: 4, logging_steps: 1, save_steps: 4, learning_rate: 5e-3}}
eval: {{task_samples: 2, probes: [], text: null, max_new_tokens: 4,
        lm_eval: {{tasks: [{task}], include: {include}, batch_size: 4}}}}
"""


def test_a_run_reports_the_benchmarks_before_and_after_and_eval_agrees(tmp_path, tasks_dir, tiny_dir, capsys):
    from fnapi.runner import run

    recipe = Recipe.from_yaml_text(RUN.format(model=tiny_dir, task=TASK, include=tasks_dir))
    result = run(recipe, output=tmp_path / "run")
    report = json.loads((result.run_dir / "report.json").read_text())
    (entry,) = report["lm_eval"]
    assert (entry["task"], entry["metric"], entry["n"]) == (TASK, "acc", 20)
    assert entry["change"] == pytest.approx(entry["after"] - entry["before"])
    assert f"| lm-eval `{TASK}` acc, n=20 | {entry['before']:.3f} ± {entry['before_stderr']:.3f} |" in \
        (result.run_dir / "report.md").read_text()
    baseline = json.loads((result.run_dir / "baseline.json").read_text())
    assert len(baseline["lm_eval"]["metrics"][0]["values"]) == 20  # resumable: stored per document
    # `fnapi eval RUN` scores the run the same way (adapter merged) and its base model.
    capsys.readouterr()  # the run's own output (libraries announce themselves on stdout) is not the eval's
    code = main(["eval", str(result.run_dir), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    (pair,) = data["change"]["lm_eval"]
    assert pair["before"] == pytest.approx(entry["before"]) and pair["after"] == pytest.approx(entry["after"])
