"""Shared test set-up: never touch a hub, keep the user's environment out of the tests."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(autouse=True)
def _no_user_token(monkeypatch, tmp_path_factory):
    """Tests never see the developer's real token or HF login."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf_home"))


@pytest.fixture(autouse=True)
def _no_user_trackers(monkeypatch):
    """Tests never log to the developer's tracker servers or folders: W&B offline, defaults elsewhere."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_API_KEY", "WANDB_DIR", "WANDB_PROJECT", "WANDB_RUN_ID", "MLFLOW_TRACKING_URI",
                 "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "TENSORBOARD_LOGGING_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for the test, restored after: two threads on a shared 2-core machine spin
    against each other, and one is much faster for tiny models."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
