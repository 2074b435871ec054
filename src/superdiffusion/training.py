"""The one training loop. A :class:`~superdiffusion.methods.Method` turns a batch into named
losses; this loop owns batching, augmentation, optimisation, the lambda ramp, validation,
checkpoint selection, atomic checkpoints, resume and logging.

Randomness is derived from ``(seed, phase, epoch, step)`` at every step (batch order,
augmentation, noise, dropout), so a run resumed from any checkpoint continues exactly
as the uninterrupted run would have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .config import Config
from .data import SegmentationData
from .data.augment import flip_rotate
from .data.patches import random_patches
from .errors import ConfigError, RunFolderError, TrainingDiverged
from .evaluation import best_threshold
from .inference import predict_tensor
from .methods import Batch, Method, Phase, StepContext, build_method
from .monitor import EpochMeter, Monitor
from .protocol import PROTOCOLS, run_health, selection_scores
from .runfolder import RunFolder


def step_seed(seed: int, phase: int, epoch: int, step: int) -> int:
    return (((seed * 1_000_003 + phase) * 10_007 + epoch) * 100_003 + step) % (2**63 - 1)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but no CUDA device is available")
    return torch.device(name)


@dataclass
class BatchPlan:
    """Batches mixing labeled and unlabeled items (both streams cycle through seeded
    permutations). One epoch is ``steps`` updates, or one pass over the training images
    when ``steps`` is 0."""

    n_labeled: int
    n_unlabeled: int
    batch_size: int
    labeled_batch_size: int
    steps: int = 0
    rank: int = 0
    world: int = 1

    def __post_init__(self):
        if self.steps < 0:
            raise ConfigError(f"train.steps_per_epoch must be >= 0 (0: one pass over the images), got {self.steps}")
        if self.n_labeled < 1:
            raise ConfigError("the training split has no labeled image")
        if self.batch_size % self.world or self.labeled_batch_size % self.world:
            raise ConfigError(
                f"train.batch_size={self.batch_size} and train.labeled_batch_size={self.labeled_batch_size} "
                f"must be multiples of the {self.world} processes"
            )
        if self.n_unlabeled == 0:
            self.labeled_batch_size = self.batch_size
        elif not 0 < self.labeled_batch_size < self.batch_size:
            raise ConfigError(
                f"train.labeled_batch_size must be in [1, batch_size - 1] (got {self.labeled_batch_size}, "
                f"batch_size {self.batch_size})"
            )

    @property
    def steps_per_epoch(self) -> int:
        if self.steps > 0:
            return self.steps
        return math.ceil((self.n_labeled + self.n_unlabeled) / self.batch_size)

    def _stream(self, n: int, per_step: int, generator: torch.Generator) -> list[torch.Tensor]:
        need = per_step * self.steps_per_epoch
        order = torch.cat([torch.randperm(n, generator=generator) for _ in range(math.ceil(need / n))])
        return [order[i * per_step : (i + 1) * per_step] for i in range(self.steps_per_epoch)]

    def epoch(self, seed: int, phase: int, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(step_seed(seed, phase, epoch, 999_999))
        lab = self._stream(self.n_labeled, self.labeled_batch_size, g)
        n_unl = self.batch_size - self.labeled_batch_size
        unl = self._stream(self.n_unlabeled, n_unl, g) if n_unl else [torch.empty(0, dtype=torch.long)] * len(lab)
        return list(zip(lab, unl))

    def shard(self, batch: Batch) -> Batch:
        """This process's share of a global batch: every ``world``-th labeled and unlabeled
        item from ``rank`` (the global batch is built and augmented identically everywhere)."""
        if self.world == 1:
            return batch
        idx = torch.arange(len(batch.labeled))
        lab, unl = idx[batch.labeled], idx[~batch.labeled]
        keep = torch.cat([lab[self.rank :: self.world], unl[self.rank :: self.world]])
        return Batch(batch.images[keep], batch.labels[keep], batch.labeled[keep])


def make_batch(
    data: SegmentationData, lab: torch.Tensor, unl: torch.Tensor, generator: torch.Generator, patch=None
) -> Batch:
    """Gather, crop (images of their own sizes: one random patch each) and augment one batch."""
    if isinstance(data.labeled.images, list):
        vols = [data.labeled.images[i] for i in lab.tolist()] + [data.unlabeled.images[i] for i in unl.tolist()]
        labs = [data.labeled.masks[i] for i in lab.tolist()]
        labs += [torch.zeros(data.unlabeled.images[i].shape[1:], dtype=torch.long) for i in unl.tolist()]
        images, labels = random_patches(vols, labs, tuple(patch), generator)
    else:
        images = torch.cat([data.labeled.images[lab], data.unlabeled.images[unl]])
        spatial = images.shape[2:]
        labels = torch.cat([data.labeled.masks[lab], torch.zeros((len(unl), *spatial), dtype=torch.long)])
    labeled = torch.cat([torch.ones(len(lab), dtype=torch.bool), torch.zeros(len(unl), dtype=torch.bool)])
    images, labels = flip_rotate(images, labels, generator)
    return Batch(images, labels, labeled)


def resumed_position(phases: list[Phase], position: dict[str, int], history: list[dict], where) -> dict[str, int]:
    """Where a resumed run goes on. After a resume with a larger ``train.epochs`` a finished run
    goes back into its last phase, to train the added epochs; a phase shorter than what it
    already trained is refused (the lr steps at ``train.lr_step`` and the lambda ramp follow
    the new length, as if it had been planned from the start)."""
    index = min(position["phase"], len(phases) - 1)
    phase = phases[index]
    trained = max((h["epoch"] for h in history if h["phase"] == phase.name), default=0)
    if trained > phase.epochs:
        raise RunFolderError(
            f"{where}: already trained {trained} {phase.name} epochs; a run cannot be shortened "
            f"to {phase.epochs} (train into a new --out instead)"
        )
    if position["phase"] >= len(phases) and trained < phase.epochs:
        return dict(position, phase=index, epoch=trained)
    return dict(position)


class Trainer:
    """Runs (or resumes) one training of ``cfg`` on ``data`` into ``run_dir``: phases of epochs
    of steps; after each evaluated epoch the selection split picks the best checkpoint."""

    def __init__(self, cfg: Config, data: SegmentationData, run_dir: Path, rank: int = 0, world: int = 1):
        self.cfg, self.data, self.folder = cfg, data, RunFolder(run_dir)
        self.rank, self.world = rank, world
        self.device = resolve_device(cfg.train.device)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        torch.manual_seed(cfg.train.seed)
        self.method: Method = build_method(cfg, data.channels, data.num_classes, data.spatial_dims).to(self.device)
        self.model = self.method
        if world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(self.method, find_unused_parameters=True)
        t = cfg.train
        self.plan = BatchPlan(
            len(data.labeled), len(data.unlabeled), t.batch_size, t.labeled_batch_size, t.steps_per_epoch, rank, world
        )
        self.phases = self.method.phases(t.epochs)
        self.monitor = Monitor(self.folder, enabled=rank == 0)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {}
        self.position = {"phase": 0, "epoch": 0, "step": 0}
        self.elapsed = 0.0
        self.saved_optimizer: tuple[dict, dict] | None = None

    # --- state -------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "method": self.method.name,
            "config": self.cfg.to_dict(),
            "data": self.data_info(),
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "optimizer_phase": self.optimizer_phase,
            "position": dict(self.position),
            "best": dict(self.best),
            "history": list(self.history),
            "elapsed": self.elapsed,
        }

    def data_info(self) -> dict[str, Any]:
        """What a saved model needs to know of its data: channels, classes, normalisation."""
        d = self.data
        info = {"channels": d.channels, "num_classes": d.num_classes, "spatial_dims": d.spatial_dims, "stats": d.stats}
        return info | {"class_names": d.class_names} if d.class_names else info

    def restore(self, state: dict[str, Any]) -> None:
        if state["method"] != self.method.name:
            raise RunFolderError(
                f"{self.folder.path}: checkpoint is of method {state['method']}, not {self.method.name}"
            )
        self.method.load_state_dict(state["model"])
        self.position, self.best = dict(state["position"]), dict(state["best"])
        self.history, self.elapsed = list(state["history"]), float(state.get("elapsed", 0.0))
        position = resumed_position(self.phases, self.position, self.history, self.folder.path)
        if position != self.position:  # a finished run given more epochs: unfinished again until it ends
            self.position = position
            self.folder.results_path.unlink(missing_ok=True)
        if state["optimizer_phase"] == self.position["phase"]:  # else the saved one belongs to a finished phase
            self.saved_optimizer = (state["optimizer"], state["scheduler"])

    def save(self, which: str = "last") -> None:
        if self.rank == 0:
            self.folder.save_checkpoint(self.state(), which)
            if which == "last":
                self.monitor.saved(self.history)

    # --- the loop ------------------------------------------------------------------------------
    def fit(self, resume: bool = False, force: bool = False) -> dict[str, Any]:
        state = self.folder.prepare(self.cfg, resume, force) if self.rank == 0 else None
        if self.world > 1:
            torch.distributed.barrier()  # rank 0 has checked and prepared the folder
            if self.rank != 0 and resume and self.folder.has_checkpoint():
                state = self.folder.load_checkpoint()
        if state is not None:
            self.restore(state)
        self.monitor.open()
        try:
            self.monitor.info(
                f"[superdiffusion] {self.method.name} on {self.cfg.data.name}: {self.data.summary()}; "
                f"device {self.device}; run folder {self.folder.path}"
            )
            for index, phase in enumerate(self.phases):
                if index >= self.position["phase"]:
                    self.run_phase(index, phase)
            self.health = run_health(self.history, self.best, self.cfg.eval, self.data.num_classes)
            self.monitor.health(self.health["flags"])
        finally:
            self.monitor.close(self.history)
        return self.best

    def run_phase(self, index: int, phase: Phase) -> None:
        t = self.cfg.train
        self.optimizer = torch.optim.Adam(
            self.method.parameters_for(phase.name), lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=t.lr_step, gamma=t.lr_gamma)
        self.optimizer_phase = index
        if self.saved_optimizer is not None:
            self.optimizer.load_state_dict(self.saved_optimizer[0])
            self.scheduler.load_state_dict(self.saved_optimizer[1])
            self.saved_optimizer = None
        for epoch in range(self.position["epoch"], phase.epochs):
            self.run_epoch(index, phase, epoch)
            self.position.update(epoch=epoch + 1)
            due = (epoch + 1) % t.eval_every == 0 or epoch + 1 == phase.epochs
            if phase.evaluate and due and self.rank == 0:
                self.select(epoch)
            self.save()
        self.position.update(phase=index + 1, epoch=0)
        self.save()

    def run_epoch(self, phase_index: int, phase: Phase, epoch: int) -> None:
        cfg = self.cfg
        self.model.train()
        weight = self.method.weight(epoch, phase.epochs)
        batches = self.plan.epoch(cfg.train.seed, phase_index, epoch)
        meter = EpochMeter()
        bar = tqdm(batches, desc=f"{phase.name} {epoch + 1}/{phase.epochs}", leave=False, disable=self.rank or None)
        for i, (lab, unl) in enumerate(bar):
            seed = step_seed(cfg.train.seed, phase_index, epoch, i)
            torch.manual_seed(seed)
            batch = make_batch(self.data, lab, unl, torch.Generator().manual_seed(seed), cfg.data.patch_size)
            batch = self.plan.shard(batch).to(self.device)
            ctx = StepContext(phase.name, epoch, phase.epochs, self.position["step"], weight)
            with torch.autocast("cuda", torch.bfloat16, enabled=cfg.train.amp and self.device.type == "cuda"):
                losses = self.model(batch, ctx)
            total = sum(losses.values())
            if not torch.isfinite(total):
                terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
                raise TrainingDiverged(
                    f"non-finite loss at step {self.position['step']} ({phase.name} epoch {epoch + 1}): {terms}; "
                    f"last good checkpoint: {self.folder.checkpoint_path('last')}"
                )
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
            self.method.after_step(ctx)
            self.position["step"] += 1
            meter.add(losses, self.method.diagnostics)
            self.method.diagnostics = {}
            bar.set_postfix(loss=f"{float(total.detach()):.3f}")
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        record = meter.record(phase.name, epoch + 1, weight, lr, self.method.weighted_terms)
        self.elapsed += record["seconds"]
        self.history.append(record)
        self.monitor.epoch(record, list(meter.sums), list(meter.diagnostics), phase.epochs, self.position["step"])

    def select(self, epoch: int) -> None:
        """Score the selection split, keep the best checkpoint and its threshold."""
        split_name, metric = PROTOCOLS[self.cfg.eval.protocol]
        score = selection_scores(self.method, getattr(self.data, split_name), self.cfg, self.device)
        best = best_threshold(score, metric) if self.data.num_classes == 2 else score[0]
        record = self.history[-1]
        record[f"{split_name}_{metric}"] = best[metric]
        record.update({k: best[k] for k in ("threshold", "predicted_fraction", "true_fraction") if k in best})
        improved = not self.best or best[metric] > self.best["score"]
        if improved:
            fractions = {k: best[k] for k in ("predicted_fraction", "true_fraction") if k in best}
            self.best = {"score": best[metric], "metric": metric, "split": split_name, "epoch": epoch + 1}
            self.best.update(threshold=best.get("threshold", 0.5), **fractions)
            self.save("best")
        self.monitor.selection(split_name, metric, best, improved, record, self.position["step"])
        split = getattr(self.data, split_name)
        if self.monitor.wants_images(epoch) and self.data.spatial_dims == 2 and not isinstance(split.images, list):
            self.show_examples(split, split_name, best.get("threshold", 0.5))

    def show_examples(self, split, split_name: str, threshold: float, count: int = 4) -> None:
        """A few selection images with their prediction and target, for TensorBoard."""
        images = split.images[:count]
        e = self.cfg.eval
        pred = predict_tensor(
            self.method, images, self.device, e.batch_size, 1, seed=self.cfg.train.seed, step=e.inference_t
        )
        self.monitor.examples(split_name, images, pred.probs, split.masks[:count], threshold, self.position["step"])
