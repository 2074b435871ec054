"""The one training loop. A :class:`~superdiffusion.methods.Method` turns a batch into named
losses; this loop owns batching, augmentation, optimisation, the lambda ramp, validation,
checkpoint selection, atomic checkpoints, resume and logging.

Randomness is derived from ``(seed, phase, epoch, step)`` at every step (batch order,
augmentation, noise, dropout), so a run resumed from any checkpoint continues exactly
as the uninterrupted run would have.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .config import Config
from .data import SegmentationData, Split
from .data.augment import flip_rotate
from .errors import ConfigError, RunFolderError, TrainingDiverged
from .evaluation import (
    FLAG_ADVICE,
    best_threshold,
    health_flags,
    pseudo_label_drift,
    thresholds,
)
from .methods import Batch, Method, StepContext, build_method
from .protocol import PROTOCOLS, selection_scores
from .runfolder import RunFolder, log


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
    """Gather, crop (volumes: one random patch each) and augment one batch."""
    if data.spatial_dims == 3:
        from .data.volumes import random_patches

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


class Trainer:
    """Runs (or resumes) one training of ``cfg`` on ``data`` into ``run_dir``."""

    def __init__(self, cfg: Config, data: SegmentationData, run_dir: Path, rank: int = 0, world: int = 1):
        self.cfg, self.data, self.folder = cfg, data, RunFolder(run_dir)
        self.run_dir = self.folder.path
        self.rank, self.world = rank, world
        self.device = resolve_device(cfg.train.device)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        torch.manual_seed(cfg.train.seed)
        self.method: Method = build_method(cfg, data.channels, data.num_classes, data.spatial_dims).to(self.device)
        self.model = self.method
        if world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(self.method, find_unused_parameters=True)
        self.plan = BatchPlan(
            len(data.labeled),
            len(data.unlabeled),
            cfg.train.batch_size,
            cfg.train.labeled_batch_size,
            cfg.train.steps_per_epoch,
            rank,
            world,
        )
        self.writer = None
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {}
        self.position = {"phase": 0, "epoch": 0, "step": 0}
        self.elapsed = 0.0
        self._drawn = time.perf_counter()

    # --- run folder ------------------------------------------------------------------------
    def prepare_folder(self, resume: bool, force: bool) -> None:
        if self.world > 1 and self.rank != 0:
            torch.distributed.barrier()  # rank 0 has checked and prepared the folder
            if resume and self.folder.has_checkpoint():
                self.restore(self.folder.load_checkpoint())
            return
        self._prepare_folder(resume, force)
        if self.world > 1:
            torch.distributed.barrier()

    def _prepare_folder(self, resume: bool, force: bool) -> None:
        folder = self.folder
        if resume:
            if folder.has_checkpoint():
                self.restore(folder.load_checkpoint())
                folder.write_config(self.cfg)  # e.g. a longer run
                return
            if folder.started and folder.finished:
                raise RunFolderError(
                    f"{self.run_dir}: this finished run kept no training state (train.keep_state=false), so it "
                    "cannot train further: train into a new --out (with train.keep_state=true to extend it later)"
                )
        elif folder.started:
            if not force:
                raise RunFolderError(
                    f"{self.run_dir} already holds a run; pass --resume to continue it or --force to replace it"
                )
            folder.clear()
        folder.write_config(self.cfg)

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
        return {"channels": d.channels, "num_classes": d.num_classes, "spatial_dims": d.spatial_dims, "stats": d.stats}

    def restore(self, state: dict[str, Any]) -> None:
        if state["method"] != self.method.name:
            raise RunFolderError(f"{self.run_dir}: checkpoint is of method {state['method']}, not {self.method.name}")
        self.method.load_state_dict(state["model"])
        self.position = dict(state["position"])
        self.best = dict(state["best"])
        self.history = list(state["history"])
        self.elapsed = float(state.get("elapsed", 0.0))
        self.continue_longer_phase()
        if state["optimizer_phase"] == self.position["phase"]:  # else the saved one belongs to a finished phase
            self._resume_optim = (state["optimizer"], state["scheduler"])

    def continue_longer_phase(self) -> None:
        """After a resume with a larger ``train.epochs``: a finished run goes back into its last
        phase, to train the added epochs. A phase shorter than what it already trained is refused."""
        phases = self.method.phases(self.cfg.train.epochs)
        index = min(self.position["phase"], len(phases) - 1)
        phase = phases[index]
        trained = max((h["epoch"] for h in self.history if h["phase"] == phase.name), default=0)
        if trained > phase.epochs:
            raise RunFolderError(
                f"{self.run_dir}: already trained {trained} {phase.name} epochs; a run cannot be shortened "
                f"to {phase.epochs} (train into a new --out instead)"
            )
        if self.position["phase"] >= len(phases) and trained < phase.epochs:
            self.position.update(phase=index, epoch=trained)
            self.folder.results_path.unlink(missing_ok=True)  # the run is unfinished again until it ends

    def save(self, which: str = "last") -> None:
        if self.rank == 0:
            self.folder.save_checkpoint(self.state(), which)
            if which == "last":
                self.folder.write_history(self.history)
                if time.perf_counter() - self._drawn > 60:  # progress.png: at most once a minute, and at the end
                    self.folder.write_progress(self.history)
                    self._drawn = time.perf_counter()

    # --- the loop --------------------------------------------------------------------------
    def _optimizer(self, phase: str) -> None:
        t = self.cfg.train
        self.optimizer = torch.optim.Adam(
            self.method.parameters_for(phase), lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=t.lr_step, gamma=t.lr_gamma)

    def log(self, message: str, level: int = logging.INFO) -> None:
        if self.rank == 0:
            log.log(level, message)

    def fit(self, resume: bool = False, force: bool = False) -> dict[str, Any]:
        self._resume_optim = None
        self.prepare_folder(resume, force)
        handler = self.folder.log_to_file() if self.rank == 0 else None
        try:
            return self._fit()
        finally:
            if handler is not None:
                log.removeHandler(handler)
                handler.close()
            if self.rank == 0 and self.history:
                self.folder.write_progress(self.history)

    def _fit(self) -> dict[str, Any]:
        if self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.folder.tensorboard))
        phases = self.method.phases(self.cfg.train.epochs)
        self.log(
            f"[superdiffusion] {self.method.name} on {self.cfg.data.name}: {self.data.summary()}; "
            f"device {self.device}; run folder {self.run_dir}"
        )
        for index, phase in enumerate(phases):
            if index < self.position["phase"]:
                continue
            self._optimizer(phase.name)
            self.optimizer_phase = index
            if self._resume_optim is not None:
                self.optimizer.load_state_dict(self._resume_optim[0])
                self.scheduler.load_state_dict(self._resume_optim[1])
                self._resume_optim = None
            for epoch in range(self.position["epoch"], phase.epochs):
                self.run_epoch(index, phase, epoch)
                self.position.update(epoch=epoch + 1)
                due = (epoch + 1) % self.cfg.train.eval_every == 0 or epoch + 1 == phase.epochs
                if phase.evaluate and due and self.rank == 0:
                    self.select(epoch)
                self.save()
            self.position.update(phase=index + 1, epoch=0)
            self.save()
        if self.writer is not None:
            self.writer.close()
        self.health = self.check_health()
        return self.best

    def check_health(self) -> dict[str, Any]:
        """Collapse flags of the finished run (see :func:`evaluation.health_flags`), logged loudly."""
        split_name, metric = PROTOCOLS[self.cfg.eval.protocol]
        e = self.cfg.eval
        flags = (
            health_flags(
                self.history,
                self.best,
                thresholds(e.threshold_start, e.threshold_stop, e.threshold_step),
                f"{split_name}_{metric}",
            )
            if self.data.num_classes == 2 and self.best
            else []
        )
        for flag in flags:
            self.log(
                f"[superdiffusion] WARNING: possible collapse ({flag}): {FLAG_ADVICE[flag]}; see README, "
                "'When a run collapses'",
                logging.WARNING,
            )
        return {"ok": not flags, "flags": flags}

    def run_epoch(self, phase_index: int, phase, epoch: int) -> None:
        cfg = self.cfg
        self.model.train()
        weight = self.method.weight(epoch, phase.epochs)
        batches = self.plan.epoch(cfg.train.seed, phase_index, epoch)
        sums: dict[str, float] = {}
        diag: dict[str, list[float]] = {}
        start = time.perf_counter()
        bar = tqdm(
            batches,
            desc=f"{phase.name} {epoch + 1}/{phase.epochs}",
            leave=False,
            disable=None if self.rank == 0 else True,
        )
        for i, (lab, unl) in enumerate(bar):
            seed = step_seed(cfg.train.seed, phase_index, epoch, i)
            torch.manual_seed(seed)
            batch = make_batch(self.data, lab, unl, torch.Generator().manual_seed(seed), cfg.data.patch_size)
            batch = self.plan.shard(batch)
            batch = Batch(batch.images.to(self.device), batch.labels.to(self.device), batch.labeled.to(self.device))
            ctx = StepContext(phase.name, epoch, phase.epochs, self.position["step"], weight)
            with torch.autocast("cuda", torch.bfloat16, enabled=cfg.train.amp and self.device.type == "cuda"):
                losses = self.model(batch, ctx) if self.world > 1 else self.method.losses(batch, ctx)
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
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            for k, v in self.method.diagnostics.items():
                diag.setdefault(k, []).append(v)
            self.method.diagnostics = {}
            bar.set_postfix(loss=f"{float(total.detach()):.3f}")
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        seconds = time.perf_counter() - start
        self.elapsed += seconds
        means = {k: v / len(batches) for k, v in sums.items()}
        raw = {f"raw_{k}": means[k] / weight for k in self.method.weighted_terms if k in means and weight > 0}
        record = {"phase": phase.name, "epoch": epoch + 1, "weight": weight, "lr": lr, "seconds": seconds, **means}
        record.update(raw)  # the unsupervised terms before lambda: a rising weighted term may hide a falling raw one
        record.update({k: sum(v) / len(v) for k, v in diag.items()})
        self.history.append(record)
        if self.writer is not None:
            for k, v in means.items():  # raw (before lambda) where the method weights the term
                self.writer.add_scalar(f"{phase.name}/loss_{k}", raw.get(f"raw_{k}", v), self.position["step"])
                if f"raw_{k}" in raw:
                    self.writer.add_scalar(f"{phase.name}/weighted_{k}", v, self.position["step"])
            self.writer.add_scalar(f"{phase.name}/lambda", weight, self.position["step"])
            self.writer.add_scalar(f"{phase.name}/lr", lr, self.position["step"])
            for k in diag:
                self.writer.add_scalar(f"{phase.name}/{k}", record[k], self.position["step"])
        terms = " ".join(f"{k}={v:.4f}" for k, v in means.items())
        if "pseudo_fg" in record:
            terms += f"  pseudo-label foreground {100 * record['pseudo_fg']:.1f}%"
        self.log(f"{phase.name} epoch {epoch + 1}/{phase.epochs}  {terms}  ({seconds:.1f}s)")

    def select(self, epoch: int) -> None:
        """Score the selection split, keep the best checkpoint and its threshold."""
        split_name, metric = PROTOCOLS[self.cfg.eval.protocol]
        split: Split = getattr(self.data, split_name)
        score = selection_scores(self.method, split, self.cfg, self.device)
        best = best_threshold(score, metric) if self.data.num_classes == 2 else score[0]
        if self.writer is not None:
            for k in ("dice_per_image", "jaccard_per_image", "dice_pooled", "jaccard_pooled"):
                if k in best:
                    self.writer.add_scalar(f"{split_name}/{k}", best[k], self.position["step"])
        self.history[-1][f"{split_name}_{metric}"] = best[metric]
        for k in ("threshold", "predicted_fraction", "true_fraction"):
            if k in best:
                self.history[-1][k] = best[k]
        improved = not self.best or best[metric] > self.best["score"]
        if improved:
            self.best = {
                "score": best[metric],
                "metric": metric,
                "split": split_name,
                "epoch": epoch + 1,
                "threshold": best.get("threshold", 0.5),
                **{k: best[k] for k in ("predicted_fraction", "true_fraction") if k in best},
            }
            self.save("best")
        self.log(
            f"  {split_name} {metric}={best[metric]:.4f} (threshold {best.get('threshold', 0.5):.2f})"
            f"{'  * best' if improved else ''}"
        )
        pseudo, true = self.history[-1].get("pseudo_fg"), best.get("true_fraction")
        if pseudo is not None and pseudo_label_drift(pseudo, true) == "pseudo_labels_background":
            self.log(
                f"  WARNING: the pseudo-labels are {100 * pseudo:.1f}% foreground against {100 * true:.1f}% in the "
                f"{split_name} masks: the unsupervised terms are teaching the networks to miss the structure "
                "(README, 'When a run collapses')",
                logging.WARNING,
            )
