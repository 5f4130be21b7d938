"""The forgetting report written at the end of every run: ``report.json``, ``report.md``, ``loss.png``.

It answers the questions a user asks after a fine-tune: did the model learn the task, how much
general knowledge did it keep, how far did it drift from the base model, and what did it cost.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fnapi.paths import atomic_write_bytes, atomic_write_text
from fnapi.redaction import redact, redact_obj


@dataclass
class Score:
    """A before/after pair for one measurement."""

    before: float | None = None
    after: float | None = None
    samples: int = 0
    metric: str = ""

    @property
    def change(self) -> float | None:
        if self.before is None or self.after is None:
            return None
        return self.after - self.before

    @property
    def retained(self) -> float | None:
        """``after / before``: 1.0 means nothing was forgotten."""
        if self.before in (None, 0) or self.after is None:
            return None
        return self.after / self.before


@dataclass
class ForgettingReport:
    """Everything the run measured. ``to_dict`` gives the ``report.json`` layout."""

    name: str
    task: Score = field(default_factory=Score)
    probes: Score = field(default_factory=Score)
    kl_to_base: float | None = None
    trainable_parameters: int = 0
    total_parameters: int = 0
    train_seconds: float = 0.0
    total_seconds: float = 0.0
    final_loss: float | None = None
    steps: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)
    frozen_weights_unchanged: bool | None = None
    model: dict[str, Any] = field(default_factory=dict)
    mask: dict[str, Any] = field(default_factory=dict)
    template: dict[str, Any] = field(default_factory=dict)
    method: str = ""
    recipe_fingerprint: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("task", "probes"):
            score: Score = getattr(self, key)
            data[key]["change"] = score.change
            data[key]["retained"] = score.retained
        data["losses"] = [[int(s), float(v)] for s, v in self.losses]
        data["trainable_fraction"] = (
            self.trainable_parameters / self.total_parameters if self.total_parameters else None
        )
        return redact_obj(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ForgettingReport":
        data = dict(data)
        data.pop("trainable_fraction", None)
        for key in ("task", "probes"):
            raw = dict(data.get(key) or {})
            raw.pop("change", None)
            raw.pop("retained", None)
            data[key] = Score(**raw)
        data["losses"] = [tuple(x) for x in data.get("losses", [])]
        return cls(**data)

    def to_markdown(self) -> str:
        def fmt(value: float | None, digits: int = 3) -> str:
            return "n/a" if value is None else f"{value:.{digits}f}"

        def pct(value: float | None) -> str:
            return "n/a" if value is None else f"{100 * value:.1f}%"

        lines = [
            f"# Run report: {self.name}",
            "",
            f"Model `{self.model.get('name', '?')}`, method `{self.method}`"
            + (f", mask `{self.mask.get('preset')}`" if self.mask.get("preset") not in (None, "none") else ", no mask"),
            "",
            "| measure | before | after | change |",
            "|---|---|---|---|",
            f"| task ({self.task.metric or 'score'}, n={self.task.samples}) | {fmt(self.task.before)} | {fmt(self.task.after)} | {fmt(self.task.change)} |",
            f"| general-knowledge probes ({self.probes.metric or 'accuracy'}, n={self.probes.samples}) | {fmt(self.probes.before)} | {fmt(self.probes.after)} | {fmt(self.probes.change)} |",
            "",
            f"- Probe score retained: {pct(self.probes.retained)}",
            f"- Mean KL divergence from the base model on general prompts: {fmt(self.kl_to_base, 4)} nats/token",
            f"- Trainable parameters: {self.trainable_parameters:,} of {self.total_parameters:,}"
            + (f" ({pct(self.trainable_parameters / self.total_parameters)})" if self.total_parameters else ""),
            f"- Training: {self.steps} steps in {self.train_seconds:.1f} s, final loss {fmt(self.final_loss, 4)}",
        ]
        if self.frozen_weights_unchanged is not None:
            lines.append(f"- Frozen weights bit-identical after training: {'yes' if self.frozen_weights_unchanged else 'NO'}")
        if self.mask.get("preset") not in (None, "none"):
            lines.append(
                f"- Mask: ablate `{self.mask.get('ablate')}`, train `{self.mask.get('train')}`, components "
                f"{self.mask.get('components')}, {self.mask.get('neurons', '?')} neurons at `{self.mask.get('site')}`"
            )
        lines += ["", "![loss curve](loss.png)", ""]
        return redact("\n".join(lines))


def plot_losses(losses: list[tuple[int, float]], title: str) -> bytes:
    """PNG bytes of the training loss curve."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    if losses:
        steps, values = zip(*losses)
        ax.plot(steps, values, marker="o", markersize=2.5, linewidth=1.2)
    else:
        ax.text(0.5, 0.5, "no training steps logged", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def write_report(report: ForgettingReport, run_dir: str | Path) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``loss.png`` into ``run_dir`` (each atomically)."""
    run_dir = Path(run_dir)
    paths = {
        "json": atomic_write_text(run_dir / "report.json", json.dumps(report.to_dict(), indent=2) + "\n"),
        "markdown": atomic_write_text(run_dir / "report.md", report.to_markdown()),
        "plot": atomic_write_bytes(run_dir / "loss.png", plot_losses(report.losses, f"{report.name}: training loss")),
    }
    return paths
