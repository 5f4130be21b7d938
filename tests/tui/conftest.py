"""Fixtures for the TUI tests.

Every test runs in its own working folder (relative paths, as a user types them, so snapshots do
not depend on where pytest put the files) with its own fnapi cache, hence its own drafts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fntui.drafts import DraftStore
from tests.tui.helpers import FIXED_NOW, TINY_MODEL, demo_template


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from fnapi.models.tiny import save_tiny

    return save_tiny("llama", tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture
def workdir(tmp_path, monkeypatch, tiny_model_dir) -> Path:
    """A fresh working folder with the tiny model, two templates and a small data file."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("FNAPI_CACHE", str(tmp_path / "cache"))
    os.symlink(tiny_model_dir, work / TINY_MODEL)
    (work / "templates").mkdir()
    demo_template(0).save(work / "templates" / "demo.json")
    demo_template(1).save(work / "templates" / "other.json")
    rows = [{"instruction": f"Add {i} and {i}.", "input": "", "output": str(2 * i)} for i in range(12)]
    (work / "data").mkdir()
    (work / "data" / "sums.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return work


@pytest.fixture
def drafts(workdir) -> DraftStore:
    return DraftStore(now=lambda: FIXED_NOW)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
