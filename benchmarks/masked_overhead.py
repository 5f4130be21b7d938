"""Step time of masked vs unmasked training on the embedded model (target: at most 10% overhead). Prints JSON.

For LoRA and full fine-tuning, one optimizer step (forward, backward, AdamW) on the same batch is
timed without a mask and under a ``protect`` mask (selected neurons' weights frozen through
:func:`fnapi.masking.mask`). The mask is synthetic by default, ``--fraction`` of the ``mlp.out``
channels of every layer chosen at random, or the stable components of ``--template``. Unmasked and
masked phases alternate for ``--rounds`` rounds, so a change in machine load hits both alike; each
phase starts with ``--warmup`` untimed steps (optimizer state is allocated on the first step).
The overhead is ``median masked / median unmasked - 1``.

    python benchmarks/masked_overhead.py --steps 10 --rounds 2
    python benchmarks/masked_overhead.py --profile   # also the top operators of one step, unmasked and masked
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import time

import torch

from fnapi.masking import NeuronMask, mask
from fnapi.models.loading import EMBEDDED_MODEL, load_model
from fnapi.networks.template import Template
from fnapi.recipe import LoraSection, TrainSection
from fnapi.training import _prepare_model

TARGET_OVERHEAD = 0.10


def synthetic_mask(num_layers: int, width: int, fraction: float, seed: int) -> NeuronMask:
    """``fraction`` of the ``mlp.out`` channels of every layer, drawn at random, preset ``protect``."""
    generator = torch.Generator().manual_seed(seed)
    count = max(1, round(fraction * width))
    neurons = {layer: torch.randperm(width, generator=generator)[:count].tolist() for layer in range(num_layers)}
    return NeuronMask("mlp.out", neurons, ablate="none", train="unselected", width=width)


def timed_steps(model: torch.nn.Module, batch: dict, steps: int, warmup: int) -> list[float]:
    """Seconds per optimizer step, after ``warmup`` untimed steps, with a fresh AdamW."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return times


def trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def measure(method: str, base: torch.nn.Module, spec: NeuronMask, batch: dict, args: argparse.Namespace) -> dict:
    model = _prepare_model(copy.deepcopy(base), TrainSection(method=method, lora=LoraSection()))
    model.train()
    # Every phase starts from the same weights: a mask installed on a LoRA adapter that already
    # trained freezes more (see fnapi.masking), which would make the masked phases cheaper.
    start = copy.deepcopy(model.state_dict())
    plain: list[float] = []
    masked: list[float] = []
    counts = {"unmasked": trainable(model)}
    for _ in range(args.rounds):
        model.load_state_dict(start)
        plain += timed_steps(model, batch, args.steps, args.warmup)
        model.load_state_dict(start)
        with mask(model, spec):
            counts["masked"] = trainable(model)
            masked += timed_steps(model, batch, args.steps, args.warmup)
    result = {
        "method": method,
        "unmasked_median_s": round(statistics.median(plain), 4),
        "masked_median_s": round(statistics.median(masked), 4),
        "overhead": round(statistics.median(masked) / statistics.median(plain) - 1, 4),
        "unmasked_s": [round(t, 3) for t in plain],
        "masked_s": [round(t, 3) for t in masked],
        "trainable_unmasked": counts["unmasked"],
        "trainable_masked": counts["masked"],
    }
    if args.profile:
        model.load_state_dict(start)
        result["profile_unmasked"] = profile(model, None, batch)
        model.load_state_dict(start)
        result["profile_masked"] = profile(model, spec, batch)
    return result


def profile(model: torch.nn.Module, spec: NeuronMask | None, batch: dict, rows: int = 12) -> list[dict]:
    """The operators that take the most CPU time in one step, masked by ``spec`` if given (self time, ms)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with mask(model, spec) if spec is not None else contextlib.nullcontext():
        timed_steps(model, batch, 1, 1)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            timed_steps(model, batch, 1, 0)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    return [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1000, 1), "calls": e.count} for e in events]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=EMBEDDED_MODEL)
    parser.add_argument("--methods", default="lora,full", help="comma-separated: lora, full")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--length", type=int, default=64, help="tokens per row")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per phase")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each phase")
    parser.add_argument("--rounds", type=int, default=2, help="unmasked/masked phase pairs")
    parser.add_argument("--fraction", type=float, default=0.05, help="share of mlp.out channels per layer masked")
    parser.add_argument("--template", help="use the stable components of this template instead of random neurons")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="add the top operators of one masked step")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_model(args.model)
    info = loaded.info
    if args.template:
        template = Template.load(args.template)
        template.check_compatible(info)
        spec = NeuronMask(template.site, template.neuron_sets("stable"), ablate="none", train="unselected",
                          width=template.width)
    else:
        spec = synthetic_mask(info.num_layers, info.hidden_size, args.fraction, args.seed)
    ids = torch.randint(0, loaded.tokenizer.vocab_size, (args.batch_size, args.length),
                        generator=torch.Generator().manual_seed(args.seed))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    results = [measure(method.strip(), loaded.model, spec, batch, args) for method in args.methods.split(",")]
    selected = sum(len(v) for v in spec.neurons.values())
    print(json.dumps({
        "benchmark": "masked_overhead",
        "model": info.name,
        "batch": [args.batch_size, args.length],
        "threads": torch.get_num_threads(),
        "mask": {"site": spec.site, "preset": "protect", "layers": len(spec.neurons), "neurons": selected,
                 "fraction": round(selected / (len(spec.neurons) * info.hidden_size), 4),
                 "source": args.template or "random"},
        "target_overhead": TARGET_OVERHEAD,
        "results": results,
        "within_target": all(r["overhead"] <= TARGET_OVERHEAD for r in results),
    }, indent=2))


if __name__ == "__main__":
    main()
