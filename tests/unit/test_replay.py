"""Self-distillation replay: prompts never overlap a probe set, rows mix at the ratio, a run keeps them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fnapi.data.builtin import probe_items
from fnapi.data.templating import TokenizedData
from fnapi.errors import DataError
from fnapi.recipe import ReplaySection
from fnapi.replay import check_prompts, mix


def _data(n: int, start: int) -> TokenizedData:
    return TokenizedData([[start + i] for i in range(n)], [[start + i] for i in range(n)], 0, 0, "chatml", 8, "k")


def test_mix_adds_ratio_rows_cycling_through_the_replayed_ones():
    mixed = mix(_data(8, 0), _data(3, 100), ratio=0.5)
    assert len(mixed) == 12
    assert mixed.input_ids[8:] == [[100], [101], [102], [100]]
    with pytest.raises(DataError, match="no replayed row"):
        mix(_data(8, 0), _data(0, 100), ratio=0.5)


def test_replay_prompts_that_are_probe_questions_are_refused(tmp_path):
    assert len(check_prompts(ReplaySection(), [("builtin:probes", probe_items())]).prompts) == 128
    path = tmp_path / "general.txt"
    path.write_text("Tell me about rivers.\nWhat is the capital of France?\n")
    with pytest.raises(DataError, match=r"train.replay.prompts: prompt 2 of .*general.txt .* builtin:probes"):
        check_prompts(ReplaySection(prompts=str(path)), [("builtin:probes", probe_items())])


def test_fnapi_validate_refuses_overlapping_replay_prompts_with_exit_2(tmp_path):
    path = tmp_path / "general.txt"
    path.write_text("what is the capital of france\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\nname: r\nmodel: {{name: smollm2-135m-instruct}}\ndata: {{path: builtin:skill}}\n"
                      f"train: {{replay: {{prompts: {path}}}}}\n")
    done = subprocess.run([sys.executable, "-m", "fnapi", "validate", str(recipe)], capture_output=True, text=True)
    assert done.returncode == 2
    assert "train.replay.prompts" in done.stdout + done.stderr and "probe" in done.stdout + done.stderr


def test_a_generative_section_with_zero_tokens_is_refused_naming_the_field(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nname: r\nmodel: {name: smollm2-135m-instruct}\ndata: {path: builtin:skill}\n"
                      "eval: {generative: {max_new_tokens: 0}}\n")
    done = subprocess.run([sys.executable, "-m", "fnapi", "validate", str(recipe)], capture_output=True, text=True)
    assert done.returncode == 2 and "eval.generative.max_new_tokens" in done.stdout + done.stderr


def test_a_probe_file_whose_answer_is_no_choice_is_refused_before_weights_load(tmp_path):
    probes = tmp_path / "p.jsonl"
    probes.write_text(json.dumps({"question": "Capital of France?", "choices": ["Paris", "Rome"], "answer": "Lyon"})
                      + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nname: r\nmodel: {name: smollm2-135m-instruct}\ndata: {path: builtin:skill}\n"
                      f"eval: {{probes: [{probes}]}}\n")
    done = subprocess.run([sys.executable, "-m", "fnapi", "validate", str(recipe)], capture_output=True, text=True)
    out = done.stdout + done.stderr
    assert done.returncode == 2 and "eval.probes[0]" in out and "p.jsonl:1" in out


def test_the_kl_to_base_term_is_zero_for_the_base_and_pulls_a_moved_model_back():
    import torch

    from fnapi.data.formats import Conversation
    from fnapi.models.tiny import tiny_model, tiny_tokenizer
    from fnapi.replay import KlToBase

    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    rows = [Conversation(messages=[{"role": "user", "content": f"Say something about {w}."},
                                   {"role": "assistant", "content": f"{w} is nice and calm today."}])
            for w in ("rain", "snow", "wind")]
    term = KlToBase(model, tokenizer, rows, strength=2.0, batch_size=2, max_length=48)
    outputs = model(input_ids=torch.tensor([[5, 6]]))
    assert float(term(model, {}, outputs)) == pytest.approx(0.0, abs=1e-3)
    assert term.cursor == 2  # the next step takes the next replies
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    value = term(model, {}, outputs)
    assert float(value) > 1e-3
    value.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
