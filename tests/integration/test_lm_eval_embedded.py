"""lm-eval on the embedded SmolLM2-135M: a local task through `fnapi eval`, and a lesion that moves it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fnapi.cli import main
from fnapi.lm_eval_bridge import LmEvalRequest, score
from fnapi.masking import mask
from fnapi.models.loading import EMBEDDED_MODEL, load_model
from tests.unit.test_lm_eval_bridge import TASK, write_capitals_task

pytest.importorskip("lm_eval", reason="the eval extra (lm-eval) is part of the dev install")
pytestmark = pytest.mark.slow


def test_eval_scores_the_embedded_model_and_a_lesion_changes_the_score(tmp_path, capsys):
    tasks = write_capitals_task(tmp_path / "tasks")
    code = main(["eval", EMBEDDED_MODEL, "--lm-eval", TASK, "--lm-eval-include", str(tasks), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    (acc,) = data["lm_eval"]
    assert (acc["task"], acc["metric"], acc["n"]) == (TASK, "acc", 20)
    assert acc["value"] >= 0.6  # the model knows most of these capitals; chance is 0.25
    assert acc["stderr"] == pytest.approx((acc["value"] * (1 - acc["value"]) / 19) ** 0.5)

    # The same model through the Python API, with a third of every layer's MLP output channels off.
    loaded = load_model(EMBEDDED_MODEL)
    request = LmEvalRequest((TASK,), include=str(tasks))
    intact = score(loaded.model, loaded.tokenizer, request).metrics[0]
    assert intact.value == pytest.approx(acc["value"])
    rng = np.random.default_rng(0)
    width, layers = loaded.info.hidden_size, loaded.info.num_layers
    lesion = {layer: rng.choice(width, size=width // 3, replace=False).tolist() for layer in range(layers)}
    with mask(loaded.model, lesion, preset="lesion"):
        lesioned = score(loaded.model, loaded.tokenizer, request).metrics[0]
    assert lesioned.value != intact.value
    assert lesioned.values != intact.values
    print(f"{TASK}: acc {intact.value:.3f} ± {intact.stderr:.3f}, lesioned {lesioned.value:.3f} ± {lesioned.stderr:.3f}")
