"""What a run shows while it trains: one console (and ``train.log``) line per epoch,
TensorBoard scalars (raw losses, lambda, learning rate, validation scores), ``history.csv``
and ``progress.png``, and the collapse warnings. Only rank 0 of a distributed run writes."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from .evaluation import FLAG_ADVICE, pseudo_label_drift
from .runfolder import RunFolder, log

SELECTION_SCALARS = ("dice_per_image", "jaccard_per_image", "dice_pooled", "jaccard_pooled")
PROGRESS_SECONDS = 30.0  # a progress line inside an epoch at most this often, where no bar is drawn


class EpochMeter:
    """One epoch's losses and the method's diagnostics, summed step by step; ``record`` is the
    epoch's row of the history."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.raw: dict[str, float] = {}  # the unsupervised terms before lambda
        self.diagnostics: dict[str, list[float]] = {}
        self.steps, self.start = 0, time.perf_counter()

    def add(self, losses: dict[str, Any], diagnostics: dict[str, float], raw: dict[str, Any] | None = None) -> None:
        """One step: the losses as trained, the method's diagnostics, the unsupervised terms raw."""
        self.steps += 1
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v.detach())
        for k, v in (raw or {}).items():
            self.raw[k] = self.raw.get(k, 0.0) + float(v.detach())
        for k, v in diagnostics.items():
            self.diagnostics.setdefault(k, []).append(v)

    def record(self, phase: str, epoch: int, weight: float, lr: float) -> dict[str, Any]:
        means = {k: v / max(1, self.steps) for k, v in self.sums.items()}
        seconds = time.perf_counter() - self.start
        record = {"phase": phase, "epoch": epoch, "lr": lr, "seconds": seconds, "steps": self.steps}
        if phase == "train":  # lambda weighs co-training's unsupervised terms; pretraining has none
            record["weight"] = weight
        record.update(means)
        # the unsupervised terms before lambda: a rising weighted term may hide a falling raw one
        record.update({f"raw_{k}": v / max(1, self.steps) for k, v in self.raw.items()})
        record.update({k: sum(v) / len(v) for k, v in self.diagnostics.items()})
        return record


class Monitor:
    def __init__(self, folder: RunFolder, enabled: bool = True, progress_every: float | None = None):
        self.folder, self.enabled = folder, enabled
        self.writer = self.handler = None
        self._drawn = time.perf_counter()
        # where stderr is not a terminal (nohup, Slurm, a pipe) tqdm draws no bar: lines instead
        self.progress_every = progress_every if progress_every is not None else (
            None if sys.stderr.isatty() else PROGRESS_SECONDS
        )
        self._said = time.perf_counter()

    def open(self) -> None:
        if self.enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.handler = self.folder.log_to_file()
            self.writer = self.folder.tensorboard_writer(SummaryWriter)

    def close(self, history: list[dict[str, Any]]) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.handler is not None:
            log.removeHandler(self.handler)
            self.handler.close()
        if self.enabled and history:
            self.folder.write_progress(progress_png(history))
        self.writer = self.handler = None

    def info(self, message: str, level: int = logging.INFO) -> None:
        """A line of the run: to the package's log, at the application's level, and always to
        ``train.log`` (the run's record, whatever the application shows)."""
        if self.enabled:
            log.log(level, message)
            if self.handler is not None and not log.isEnabledFor(level):
                self.handler.handle(log.makeRecord(log.name, level, __file__, 0, message, None, None))

    def update(self, phase: str, epoch: int, epochs: int, done: int, steps: int, seconds: list[float], loss: float):
        """After each update: where no progress bar is drawn, a line at most every
        ``progress_every`` seconds with the epoch's updates so far, the mean seconds of its last
        ten updates (a slowdown shows as it happens) and the last loss. ``seconds``: the epoch's
        update times so far."""
        if self.progress_every is None or done == steps:  # the epoch's own line follows
            return
        now = time.perf_counter()
        if now - self._said < self.progress_every:
            return
        self._said = now
        recent = seconds[-10:]
        self.info(
            f"  {phase} epoch {epoch}/{epochs}: update {done}/{steps}, {sum(recent) / len(recent):.2f}s an update "
            f"(last {len(recent)}), loss {loss:.4f}"
        )

    def saved(self, history: list[dict[str, Any]]) -> None:
        """After each epoch's checkpoint: history.csv, and progress.png at most once a minute."""
        if self.enabled:
            self.folder.write_history(history)
            if time.perf_counter() - self._drawn > 60:
                self.folder.write_progress(progress_png(history))
                self._drawn = time.perf_counter()

    def epoch(self, record: dict[str, Any], losses: list[str], diagnostics: list[str], epochs: int, step: int) -> None:
        """One epoch's record: each loss raw (before lambda) where the method weights it, the
        weighted one beside it, lambda, the learning rate and the method's diagnostics."""
        phase = record["phase"]
        if self.writer is not None:
            for k in losses:
                self.writer.add_scalar(f"{phase}/loss_{k}", record.get(f"raw_{k}", record[k]), step)
                if f"raw_{k}" in record:
                    self.writer.add_scalar(f"{phase}/weighted_{k}", record[k], step)
            if "weight" in record:
                self.writer.add_scalar(f"{phase}/lambda", record["weight"], step)
            self.writer.add_scalar(f"{phase}/lr", record["lr"], step)
            for k in diagnostics:
                self.writer.add_scalar(f"{phase}/{k}", record[k], step)
        terms = " ".join(f"{k}={record[k]:.4f}" for k in losses)
        if "pseudo_fg" in record:
            terms += f"  pseudo-label foreground {100 * record['pseudo_fg']:.1f}%"
        self.info(f"{phase} epoch {record['epoch']}/{epochs}  {terms}  ({record['seconds']:.1f}s)")

    def selection(self, choice, improved: bool, record: dict[str, Any], step: int) -> None:
        """One evaluation (a :class:`~superdiffusion.protocol.Selection`) of the selection split."""
        split, metric, score = choice.split_name, choice.metric, choice.scores
        if self.writer is not None:
            for k in SELECTION_SCALARS:
                if k in score:
                    self.writer.add_scalar(f"{split}/{k}", score[k], step)
        threshold = score.get("threshold", 0.5)
        self.info(f"  {split} {metric}={score[metric]:.4f} (threshold {threshold:.2f}){'  * best' if improved else ''}")
        pseudo, true = record.get("pseudo_fg"), score.get("true_fraction")
        if pseudo is not None and pseudo_label_drift(pseudo, true) == "pseudo_labels_background":
            self.info(
                f"  WARNING: the pseudo-labels are {100 * pseudo:.1f}% foreground against {100 * true:.1f}% in the "
                f"{split} masks: the unsupervised terms are teaching the networks to miss the structure "
                "(docs/evaluation.md, 'When a run collapses')",
                logging.WARNING,
            )

    def hidden(self, scores: dict[str, float], step: int) -> None:
        """The hidden-label scores of an evaluated epoch: a console line and TensorBoard scalars."""
        if not scores:
            return
        if self.writer is not None:
            for k, v in scores.items():
                self.writer.add_scalar(f"hidden/{k.removeprefix('hidden_')}", v, step)
        shown = "  ".join(
            f"{who} Dice {100 * scores[f'hidden_{who}_dice']:.1f}"
            + (f" AUROC {scores[f'hidden_{who}_auroc']:.3f}" if f"hidden_{who}_auroc" in scores else "")
            for who in ("targets", "student", "teacher")
            if f"hidden_{who}_dice" in scores
        )
        self.info(f"  hidden labels: {shown}")

    def wants_images(self, epoch: int, every: int = 5) -> bool:
        """Example images every ``every`` evaluated epochs (with TensorBoard)."""
        return self.writer is not None and epoch % every == 0

    def examples(self, split: str, images, probs, masks, threshold: float, step: int) -> None:
        """Rows of image | prediction | target (``split/examples`` in TensorBoard's Images tab)."""
        import torch

        shown = images[:, :3] if images.shape[1] >= 3 else images[:, :1].expand(-1, 3, -1, -1)
        low = shown.amin(dim=(1, 2, 3), keepdim=True)
        high = shown.amax(dim=(1, 2, 3), keepdim=True)
        shown = (shown - low) / (high - low).clamp_min(1e-6)
        if probs.shape[1] == 2:
            predicted = (probs[:, 1] > threshold).float()
        else:
            predicted = probs.argmax(1).float() / max(1, probs.shape[1] - 1)
        target = masks.float() / max(1, int(masks.max()))
        as_rgb = lambda m: m[:, None].expand(-1, 3, -1, -1)  # noqa: E731
        rows = torch.cat([shown, as_rgb(predicted), as_rgb(target)], dim=3)  # side by side
        grid = torch.cat(list(rows), dim=1)  # one row per image, top to bottom
        self.writer.add_image(f"{split}/examples (image | prediction | target)", grid.clamp(0, 1), step)

    def health(self, flags: list[str]) -> None:
        for flag in flags:
            self.info(
                f"[superdiffusion] WARNING: possible collapse ({flag}): {FLAG_ADVICE[flag]}; see docs/evaluation.md, "
                "'When a run collapses'",
                logging.WARNING,
            )


def draw_progress(history: list[dict[str, Any]]):
    """The history as a figure: per epoch, the losses of each phase (log scale), the validation
    score with its selected threshold, and lambda (co-training only) with the learning rate."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    skip = {"phase", "epoch", "weight", "lr", "seconds", "steps", "threshold", "predicted_fraction", "true_fraction",
            "pseudo_fg"}  # fmt: skip
    x = list(range(1, len(history) + 1))
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for key in dict.fromkeys(
        k for h in history for k in h if k not in skip and not k.startswith(("val_", "test_", "pretrain_", "hidden_"))
    ):
        points = [(i, h[key]) for i, h in zip(x, history) if key in h and h[key] is not None and h[key] > 0]
        if points:
            axes[0].plot(*zip(*points), label=key)
    axes[0].set_yscale("log")
    axes[0].set_title("losses (as trained; raw_*: before lambda)")
    for key in dict.fromkeys(k for h in history for k in h if k.startswith(("val_", "test_"))):
        points = [(i, h[key]) for i, h in zip(x, history) if key in h]
        axes[1].plot(*zip(*points), marker=".", label=key)
    for key in dict.fromkeys(k for h in history for k in h if k.startswith("hidden_") and k.endswith("_dice")):
        points = [(i, h[key]) for i, h in zip(x, history) if key in h]
        axes[1].plot(*zip(*points), ls="--", marker="x", label=f"{key.removeprefix('hidden_')} (hidden labels)")
    for key, label in (("threshold", "selected threshold"), ("pseudo_fg", "pseudo-label foreground share")):
        points = [(i, h[key]) for i, h in zip(x, history) if key in h]
        if points:
            axes[1].plot(*zip(*points), ls=":", label=label)
    axes[1].set_ylim(0, 1)
    axes[1].set_title("selection split (dashed: unlabeled images against their hidden masks)" if any(k.startswith("hidden_") for h in history for k in h) else "selection split")
    weights = [(i, h["weight"]) for i, h in zip(x, history) if "weight" in h]
    if weights:
        axes[2].plot(*zip(*weights), label="lambda")
    axes[2].set_title("lambda (left, co-training), learning rate (right)")
    twin = axes[2].twinx()
    rates = [h.get("lr", float("nan")) for h in history]
    twin.plot(x, rates, color="tab:red", label="lr")
    if any(r > 0 for r in rates):
        twin.set_yscale("log")
    starts = [i for i, (a, b) in enumerate(zip(history, history[1:]), start=2) if a["phase"] != b["phase"]]
    for ax in axes:
        ax.set_xlabel("epoch (all phases in order)")
        for start in starts:
            ax.axvline(start - 0.5, color="grey", lw=0.8, ls="--")
    for ax in axes[:2]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    handles, labels = (
        sum(pair, []) for pair in zip(axes[2].get_legend_handles_labels(), twin.get_legend_handles_labels())
    )
    axes[2].legend(handles, labels, fontsize=7)  # one legend for both of the third panel's axes
    fig.tight_layout()
    return fig


def progress_png(history: list[dict[str, Any]]) -> bytes:
    import io

    import matplotlib.pyplot as plt

    fig = draw_progress(history)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=80, format="png")
    plt.close(fig)
    return buffer.getvalue()
