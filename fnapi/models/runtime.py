"""What every piece of code that runs a model shares: eval mode for a block, the padding id, and
transformers' own progress bars kept quiet (fnapi reports progress through its events)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from fnapi.errors import ModelError


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Put ``model`` in eval mode for a block and give it back its training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def pad_id(tokenizer: Any) -> int:
    """The id batches are padded with: the pad token, else eos (the loader gives every tokenizer one)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ModelError("the tokenizer has neither a pad nor an eos token, so batches cannot be padded")
    return pad


@contextlib.contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hide transformers' tqdm bars (loading, "Writing model shards") for a block. Its warnings stay
    on: they say, for example, when a checkpoint lacks weights."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()
