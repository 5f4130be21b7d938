"""One parse of a model spec: every command accepts the same specs and refuses bad ones the same way."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fnapi.cli import main
from fnapi.errors import ModelError
from fnapi.models.source import EMBEDDED_MODEL, ModelSource
from fnapi.models.tiny import HIDDEN_SIZE, save_tiny


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return save_tiny("llama", tmp_path_factory.mktemp("model") / "tiny")


def test_specs_parse_to_their_kind(tiny_folder, tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert ModelSource.parse(" SmolLM2-135M-Instruct ").kind == "embedded"
    assert ModelSource.parse(EMBEDDED_MODEL).name == EMBEDDED_MODEL
    assert ModelSource.parse(str(tiny_folder)) == ModelSource("folder", str(tiny_folder), tiny_folder)
    assert ModelSource.parse(str(gguf)).kind == "gguf"
    assert ModelSource.parse("org/name", revision="main").revision == "main"


@pytest.mark.parametrize("model_spec, says", [
    ("./nowhere", "model path ./nowhere does not exist"),
    ("a/b/c", "model path a/b/c does not exist"),
    ("missing.gguf", "model path missing.gguf does not exist"),
    ("not a model_spec", "is not the embedded model, an existing folder or .gguf file, or a hub id"),
])
def test_bad_specs_say_what_is_wrong(model_spec, says):
    with pytest.raises(ModelError, match=says):
        ModelSource.parse(model_spec)


def test_a_file_that_is_not_gguf_and_a_folder_without_config_are_named(tmp_path):
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(ModelError, match="is not a .gguf file"):
        ModelSource.parse(str(other))
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelError, match="it has no config.json") as caught:
        ModelSource.parse(str(tmp_path)).config()
    assert "It holds m.gguf: pass that file instead." in caught.value.hint


def test_config_and_tokenizer_of_a_folder_need_no_weights(tiny_folder):
    source = ModelSource.parse(str(tiny_folder))
    assert source.config().hidden_size == HIDDEN_SIZE
    assert source.tokenizer()("hello")["input_ids"]


def _commands(model_spec: str, tmp_path: Path) -> dict[str, list[str]]:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"version": 1, "model": {"name": model_spec}, "data": {"path": "builtin:skill"},
                                      "train": {"steps": 1}}), encoding="utf-8")
    return {"detect": ["detect", "--model", model_spec],
            "model info": ["model", "info", model_spec],
            "data inspect": ["data", "inspect", "builtin:skill", "--model", model_spec, "-n", "1"],
            "validate": ["validate", str(recipe)],
            "estimate": ["estimate", str(recipe)]}


@pytest.mark.parametrize("command", ["detect", "model info", "data inspect", "validate", "estimate"])
def test_every_command_takes_a_model_folder(command, tiny_folder, tmp_path, capsys):
    assert main(_commands(str(tiny_folder), tmp_path)[command]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("command", ["detect", "model info", "data inspect", "validate", "estimate"])
def test_every_command_refuses_a_missing_model_path_the_same_way(command, tmp_path, capsys):
    missing = str(tmp_path / "gone")
    assert main(_commands(missing, tmp_path)[command]) == 2
    assert f"model path {missing} does not exist" in capsys.readouterr().err
