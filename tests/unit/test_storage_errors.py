"""OS errors on paths a user chose are the user's to fix: exit code 2, the path named, what to do."""

from __future__ import annotations

import errno
import json

import pytest

from fnapi.cli import main
from fnapi.errors import StorageError, storage_error


@pytest.mark.parametrize("code, words", [
    (errno.ENOSPC, "no space left"),
    (errno.EROFS, "read-only"),
    (errno.EACCES, "permission denied"),
    (errno.ENOTDIR, "is a file, not a folder"),
    (errno.EISDIR, "is a folder, not a file"),
    (errno.EDQUOT, "quota"),
])
def test_os_errors_name_the_path_and_what_happened(code, words):
    found = storage_error(OSError(code, "os text", "/data/runs/x/report.json"))
    assert isinstance(found, StorageError) and found.exit_code == 2
    assert "/data/runs/x/report.json" in found.message and words in found.message and found.hint


@pytest.mark.parametrize("text", ["[enforce fail at inline_container.cc:603] . unexpected pos 1234 vs 1200",
                                  "PytorchStreamWriter failed writing file data/0: file write failed",
                                  "basic_ios::clear: iostream error"])  # torch.save's zip end on a full tmpfs
def test_a_full_disk_seen_through_torch_save_is_a_storage_error(text):
    found = storage_error(RuntimeError(text))
    assert isinstance(found, StorageError) and "no space left" in found.message


def test_other_errors_are_not_blamed_on_storage():
    assert storage_error(RuntimeError("size mismatch for weight")) is None
    assert storage_error(OSError(errno.ECONNRESET, "reset")) is None
    assert storage_error(ValueError("bad")) is None


def test_an_unreadable_data_folder_exits_2_naming_it(tmp_path, monkeypatch, capsys):
    from fnapi.data import loading

    folder = tmp_path / "private"
    folder.mkdir()

    def denied(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(loading, "_read_folder", denied)  # running as root, chmod would not stop us
    code = main(["data", "inspect", str(folder)])
    err = capsys.readouterr().err
    assert code == 2 and f"cannot use {folder}: permission denied" in err and "bug in fnapi" not in err


def test_a_full_disk_while_writing_the_report_fails_the_run_and_a_rerun_completes_it(tmp_path, monkeypatch, capsys):
    from fnapi import runner
    from fnapi.models.tiny import save_tiny

    model = save_tiny("llama", tmp_path / "tiny")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\nmodel: {{name: '{model}'}}\n"
                      "data: {path: builtin:skill, max_samples: 16, max_length: 48}\n"
                      "train: {steps: 2, batch_size: 2, save_steps: 2}\n"
                      "eval: {task_samples: 2, probe_samples: 4, kl_prompts: 2}\n", encoding="utf-8")
    run_dir = tmp_path / "run"
    original = runner.write_report

    def disk_full(report, folder):
        (folder / "report.json").write_text("{}")  # one output made it before the disk filled
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "loss.png"))

    monkeypatch.setattr(runner, "write_report", disk_full)
    assert main(["run", str(recipe), "--output", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert f"cannot use {run_dir / 'loss.png'}: no space left" in err and "resume with" in err
    last = json.loads((run_dir / "events.jsonl").read_text().splitlines()[-1])
    assert last["type"] == "run_failed" and last["stage"] == "report" and last["exit_code"] == 2
    assert not (run_dir / "finished.json").exists()  # not finished, though report.json is there

    monkeypatch.setattr(runner, "write_report", original)
    assert main(["run", str(run_dir / "recipe.yaml")]) == 0
    capsys.readouterr()
    assert (run_dir / "finished.json").exists() and (run_dir / "loss.png").exists()
    assert json.loads((run_dir / "report.json").read_text())["task"]  # the real report replaced the stub
