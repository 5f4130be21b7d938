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
    """A before/after pair for one measurement, with 95% intervals: ``before_ci95`` and ``ci95`` on
    the two means (bootstrap over items), ``change_ci95`` on the paired change (the same items scored
    before and after, see :mod:`fnapi.measures`)."""

    before: float | None = None
    after: float | None = None
    samples: int = 0
    metric: str = ""
    before_ci95: list[float] | None = None
    ci95: list[float] | None = None
    change_ci95: list[float] | None = None

    @classmethod
    def from_pair(cls, pair: dict[str, Any] | None, metric: str) -> Score:
        """A score from one entry of :func:`fnapi.measures.compare_measures`."""
        if not pair:
            return cls(metric=metric)
        return cls(pair["before"], pair["after"], pair["n"], metric, pair["before_ci95"], pair["ci95"],
                   pair["change_ci95"])

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

    @property
    def retained_ci95(self) -> list[float] | None:
        """Interval on ``retained`` from the paired change (the base score is the same model for every
        method, so only the change varies): ``1 + change_ci95 / before``."""
        if self.before in (None, 0) or self.change_ci95 is None:
            return None
        return [1 + self.change_ci95[0] / self.before, 1 + self.change_ci95[1] / self.before]


_SCORES = ("task", "generative", "probes", "probe_logprob", "text_nll")


@dataclass
class ForgettingReport:
    """Everything the run measured. ``to_dict`` gives the ``report.json`` layout."""

    name: str
    task: Score = field(default_factory=Score)
    #: the probe questions asked open-ended: the report's headline measure of what was kept
    generative: Score = field(default_factory=Score)
    probes: Score = field(default_factory=Score)
    probe_logprob: Score = field(default_factory=Score)
    text_nll: Score = field(default_factory=Score)
    kl_to_base: float | None = None
    kl_ci95: list[float] | None = None
    probe_sets: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    texts: list[dict[str, Any]] = field(default_factory=list)
    #: lm-eval benchmarks before and after (see :func:`fnapi.measures.compare_lm_eval`)
    lm_eval: list[dict[str, Any]] = field(default_factory=list)
    generative_sets: list[dict[str, Any]] = field(default_factory=list)
    #: KL from the base to the tuned model on the base's replies to general prompts (``value``, ``ci95``, ``prompts``)
    chat_kl: dict[str, Any] | None = None
    #: replies to general prompts that look like the task's answers (``share``, ``base_share``, ``flag``)
    format_leak: dict[str, Any] | None = None
    #: what the run could not see or got wrong, in words (divergence, measures that could not be taken)
    warnings: list[str] = field(default_factory=list)
    #: general data trained on to keep the model's voice: the replayed prompts' source and counts
    replay: dict[str, Any] | None = None
    #: the KL-to-base penalty's prompts, their source and its strength
    kl_penalty: dict[str, Any] | None = None
    stopped_at_task_target: float | None = None
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
        for key in _SCORES:
            score: Score = getattr(self, key)
            data[key]["change"] = score.change
            data[key]["retained"] = score.retained
            data[key]["retained_ci95"] = score.retained_ci95
        data["losses"] = [[int(s), float(v)] for s, v in self.losses]
        data["trainable_fraction"] = (
            self.trainable_parameters / self.total_parameters if self.total_parameters else None
        )
        return redact_obj(data)

    def headline(self) -> dict[str, float]:
        """The numbers a tracker shows for the run, flat (what is not measured is left out): task and
        probe scores before and after, the change with its paired 95% interval, probe retention with
        its interval, held-out text NLL, KL to the base model, and the final training loss."""
        numbers: dict[str, float | None] = {}
        for key in ("task", "generative", "probes", "text_nll"):
            score: Score = getattr(self, key)
            numbers.update({f"{key}_before": score.before, f"{key}_after": score.after, f"{key}_change": score.change})
            numbers.update(_bounds(f"{key}_change_ci95", score.change_ci95))
        numbers["generative_retained"] = self.generative.retained
        numbers.update(_bounds("generative_retained_ci95", self.generative.retained_ci95))
        numbers["probes_retained"] = self.probes.retained
        numbers.update(_bounds("probes_retained_ci95", self.probes.retained_ci95))
        if self.chat_kl:
            numbers["chat_kl"] = self.chat_kl["value"]
        if self.format_leak:
            numbers["format_leak_share"] = self.format_leak["share"]
        numbers["kl_to_base"] = self.kl_to_base
        numbers.update(_bounds("kl_to_base_ci95", self.kl_ci95))
        numbers["final_loss"] = self.final_loss
        return {key: float(value) for key, value in numbers.items() if value is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ForgettingReport:
        data = dict(data)
        data.pop("trainable_fraction", None)
        for key in _SCORES:
            raw = dict(data.get(key) or {})
            for derived in ("change", "retained", "retained_ci95"):
                raw.pop(derived, None)
            data[key] = Score(**raw)
        data["losses"] = [tuple(x) for x in data.get("losses", [])]
        return cls(**data)

    def to_markdown(self) -> str:
        """``report.md``: a title, the model and method, :meth:`forgetting_markdown` and the loss curve."""
        lines = [
            f"# Run report: {self.name}",
            "",
            f"Model `{self.model.get('name', '?')}`, method `{self.method}`"
            + (f", mask `{self.mask.get('preset')}`" if self.mask.get("preset") not in (None, "none") else ", no mask"),
            "",
            *self.forgetting_markdown(),
            "",
            "![loss curve](loss.png)",
            "",
        ]
        return redact("\n".join(lines))

    def forgetting_markdown(self) -> list[str]:
        """Markdown lines: the before/after table with 95% intervals, then what was kept, the drift,
        the cost and the mask (shared by ``report.md`` and the model card of ``fnapi export``)."""
        def fmt(value: float | None, digits: int = 3) -> str:
            return "n/a" if value is None else f"{value:.{digits}f}"

        def pct(value: float | None) -> str:
            return "n/a" if value is None else f"{100 * value:.1f}%"

        def signed(value: float | None, digits: int) -> str:
            return "n/a" if value is None else f"{value:+.{digits}f}"

        def ci(bounds: list[float] | None, digits: int) -> str:
            return "" if not bounds else f"[{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]"

        def stderr(value: float | None) -> str:
            return "" if value is None else f" ± {value:.3f}"

        lines = [
            "| measure | before | after | change (95% interval, paired) |",
            "|---|---|---|---|",
        ]
        rows = [(f"task ({self.task.metric or 'score'})", self.task, 3),
                (f"general questions asked open-ended ({self.generative.metric or 'accuracy'})", self.generative, 3),
                (f"general-knowledge probes ({self.probes.metric or 'accuracy'})", self.probes, 3),
                ("probes: log-probability of the right answer", self.probe_logprob, 3),
                ("held-out text: NLL per token", self.text_nll, 4)]
        for set_ in self.generative_sets[1:]:
            rows.append((f"open-ended `{set_['source']}` (accuracy)", Score.from_pair(set_["accuracy"], "accuracy"), 3))
        for set_ in self.probe_sets[1:]:
            rows.append((f"probes `{set_['source']}` (accuracy)", Score.from_pair(set_["accuracy"], "accuracy"), 3))
        for label, score, digits in rows:
            if score.before is None and score.after is None:
                continue
            lines.append(f"| {label}, n={score.samples} | {fmt(score.before, digits)} | "
                         f"{fmt(score.after, digits)} {ci(score.ci95, digits)} | "
                         f"{signed(score.change, digits)} {ci(score.change_ci95, digits)} |")
        for entry in self.lm_eval:  # lm-eval's value ± its stderr, and the change with a paired interval
            filtered = "" if entry["filter"] == "none" else f" ({entry['filter']})"
            lines.append(f"| lm-eval `{entry['task']}` {entry['metric']}{filtered}, n={entry['n']} | "
                         f"{fmt(entry['before'])}{stderr(entry['before_stderr'])} | "
                         f"{fmt(entry['after'])}{stderr(entry['stderr'])} | "
                         f"{signed(entry['change'], 3)} {ci(entry['change_ci95'], 3)} |")
        def retained(score: Score) -> str:
            return pct(score.retained) + (f" (95% interval {pct(score.retained_ci95[0])} to "
                                          f"{pct(score.retained_ci95[1])})" if score.retained_ci95 else "")

        lines += [""]
        lines += [f"- **Warning**: {warning}" for warning in self.warnings]
        if self.generative.before is not None:
            lines.append(f"- **General questions still answered (open-ended) retained: {retained(self.generative)}**")
        if self.format_leak:
            leak = self.format_leak
            lines.append(f"- Replies to general prompts that look like the task's answers: {pct(leak['share'])} "
                         f"(base model {pct(leak.get('base_share'))})"
                         + (": **the model answers general requests in the task's format**" if leak["flag"] else ""))
        if self.chat_kl:
            lines.append(f"- Chat drift (KL from the base on its own replies to {self.chat_kl['prompts']} general "
                         f"prompts): {fmt(self.chat_kl['value'], 4)} nats/token {ci(self.chat_kl['ci95'], 4)}")
        lines += [
            f"- Probe score retained (choice ranking, blind to a model that stopped answering in its own voice): "
            f"{retained(self.probes)}",
            f"- Mean KL divergence from the base model on held-out text: {fmt(self.kl_to_base, 4)} nats/token"
            + (f" {ci(self.kl_ci95, 4)}" if self.kl_ci95 else ""),
            f"- Trainable parameters: {self.trainable_parameters:,} of {self.total_parameters:,}"
            + (f" ({pct(self.trainable_parameters / self.total_parameters)})" if self.total_parameters else ""),
            f"- Training: {self.steps} steps in {self.train_seconds:.1f} s, final loss {fmt(self.final_loss, 4)}"
            + (f", stopped on reaching the task target {self.stopped_at_task_target}"
               if self.stopped_at_task_target is not None else ""),
        ]
        if self.replay:
            lines.append(f"- Replay: {self.replay['rows']} rows of the base model's replies to {self.replay['prompts']} "
                         f"general prompts from `{self.replay['source']}` trained with the task (none is a probe "
                         "question)")
        if self.kl_penalty:
            lines.append(f"- KL-to-base penalty: strength {self.kl_penalty['strength']} on the base model's replies to "
                         f"{self.kl_penalty['prompts']} general prompts from `{self.kl_penalty['source']}` (none is a "
                         "probe question)")
        if self.frozen_weights_unchanged is not None:
            lines.append(f"- Frozen weights bit-identical after training: {'yes' if self.frozen_weights_unchanged else 'NO'}")
        if self.mask.get("preset") not in (None, "none"):
            lines.append(
                f"- Mask: ablate `{self.mask.get('ablate')}`, train `{self.mask.get('train')}`, components "
                f"{self.mask.get('components')}, {self.mask.get('neurons', '?')} neurons at `{self.mask.get('site')}`"
            )
        examples = (self.format_leak or {}).get("examples") or []
        if examples:
            lines += ["", "Replies to general prompts, base model then tuned model:", ""]
            for example in examples:
                lines.append(f"- {_quoted(example['base'])} -> {_quoted(example['tuned'])}")
        return [redact(line) for line in lines]


def _quoted(reply: str, limit: int = 80) -> str:
    text = " ".join(reply.split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return f"“{text}”" if text else "(no reply)"


def _bounds(name: str, interval: list[float] | None) -> dict[str, float]:
    return {} if not interval else {f"{name}_low": interval[0], f"{name}_high": interval[1]}


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
