"""One process of a 2-process run started by ``test_distributed.py`` under torchrun.

Builds a template from ``DIR/capture.jsonl`` on the tiny model in ``DIR/model`` (the capture is
split between the processes), fine-tunes the full model under that template's ``protect`` mask,
and writes what this process ended with to ``DIR/rank<N>.json``: the template, the frozen-weight
hashes before and after training, a hash of every weight, and the losses. The test compares the
processes with each other and with a single-process build.

Usage: torchrun --nproc_per_node 2 _distributed_worker.py DIR
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from fnapi import distributed
from fnapi.data.templating import TokenizedData
from fnapi.masking import from_template, frozen_checksums
from fnapi.models.loading import load_model
from fnapi.networks.build import build_template
from fnapi.recipe import TemplateSection, TrainSection
from fnapi.training import train

TEMPLATE = TemplateSection(samples=200, max_length=64, components=3, runs=2)


def counting_data(examples: int = 24) -> TokenizedData:
    """Sequences that count: the loss falls within a few steps."""
    ids = [[3 + (start + i) % 40 for i in range(12)] for start in range(examples)]
    labels = [[-100] * 2 + row[2:] for row in ids]
    return TokenizedData(input_ids=ids, labels=labels, truncated=0, dropped=0, template_used="plain",
                         max_length=32, cache_key="")


def weights_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def main(folder: Path) -> None:
    with distributed.process_group():
        loaded = load_model(str(folder / "model"))
        template = build_template(loaded, TEMPLATE, [str(folder / "capture.jsonl")], seed=0)
        neuron_mask = from_template(template, [0, 1], preset="protect")
        frozen_before = frozen_checksums(loaded.model, neuron_mask)
        section = TrainSection(method="full", steps=6, batch_size=4, learning_rate=1e-2, weight_decay=0.1,
                               logging_steps=1, save_steps=3)
        result = train(loaded, None, counting_data(), None, section, mask=neuron_mask, output_dir=folder / "out", seed=0)
        record = {
            "rank": distributed.rank(),
            "template": template.to_dict(),
            "frozen_before": frozen_before,
            "frozen_after": frozen_checksums(result.model, neuron_mask),
            "frozen_unchanged": result.frozen_unchanged,
            "weights": weights_hash(result.model),
            "losses": result.losses,
        }
        (folder / f"rank{distributed.rank()}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
