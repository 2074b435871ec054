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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .config import Config
from .data import SegmentationData
from .data.augment import flip_rotate
from .data.dataset import split_record
from .data.patches import random_patches
from .errors import ConfigError, DataError, RunFolderError, TrainingDiverged
from .inference import set_up_device
from .methods import Batch, Method, Phase, StepContext, build_method
from .monitor import EpochMeter, Monitor
from .protocol import (
    Selection,
    example_predictions,
    hidden_label_scores,
    intensity_prior_agreement,
    labeled_agreement,
    run_health,
    select_epoch,
)
from .runfolder import RunFolder


def leak_warning(leaks: list[list[str]]) -> str:
    """One line on held-out cases whose image is a training image's, byte for byte."""
    shown = ", ".join(f"{held} = {trained}" for trained, held in leaks[:3]) + (", ..." if len(leaks) > 3 else "")
    return (
        f"{len(leaks)} validation or test image(s) are byte-identical to training images ({shown}): their scores "
        "are not held out; remove the copies, or move them to one split (split.csv)"
    )


def step_seed(seed: int, phase: int, epoch: int, step: int) -> int:
    return (((seed * 1_000_003 + phase) * 10_007 + epoch) * 100_003 + step) % (2**63 - 1)


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
    cases = [data.labeled.images[i] for i in lab.tolist()] + [data.unlabeled.images[i] for i in unl.tolist()]
    labels = [data.labeled.masks[i].long() for i in lab.tolist()]  # held in one byte: widened per batch
    labels += [torch.zeros(data.unlabeled.images[i].shape[1:], dtype=torch.long) for i in unl.tolist()]
    if data.labeled.size is None:  # each case at its own size: one random patch of each
        images, labels = random_patches(cases, labels, tuple(patch), generator)
    else:
        images, labels = torch.stack(cases), torch.stack(labels)
    labeled = torch.cat([torch.ones(len(lab), dtype=torch.bool), torch.zeros(len(unl), dtype=torch.bool)])
    images, labels = flip_rotate(images, labels, generator)
    return Batch(images, labels, labeled)


@dataclass
class Progress:
    """Where a run stands, saved in every checkpoint: the phase, epoch and step reached, the best
    evaluation so far, one history record per epoch, and the seconds trained."""

    position: dict[str, int] = field(default_factory=lambda: {"phase": 0, "epoch": 0, "step": 0})
    best: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0
    phase_records: dict[str, dict[str, Any]] = field(default_factory=dict)  # what each phase's end recorded

    def state(self) -> dict[str, Any]:
        history = list(self.history)
        state = {"position": dict(self.position), "best": dict(self.best), "history": history, "elapsed": self.elapsed}
        return state | {"phase_records": {k: dict(v) for k, v in self.phase_records.items()}}

    def updates(self) -> dict[str, int]:
        """Optimiser updates trained, per phase."""
        counts: dict[str, int] = {}
        for h in self.history:
            counts[h["phase"]] = counts.get(h["phase"], 0) + h.get("steps", 0)
        return counts

    def add(self, record: dict[str, Any]) -> None:
        """One trained epoch's record."""
        self.elapsed += record["seconds"]
        self.history.append(record)

    def consider(self, choice: Selection, epoch: int) -> bool:
        """Add an evaluation to the last epoch's record; whether it is the best so far (and kept)."""
        self.history[-1].update(choice.record)
        improved = not self.best or choice.score > self.best["score"]
        if improved:
            self.best = choice.best(epoch)
        return improved

    @classmethod
    def restored(cls, state: dict[str, Any], phases: list[Phase], where) -> Progress:
        """The progress a checkpoint saved, moved to where a resumed run goes on. After a resume
        with a larger ``train.epochs`` a finished run goes back into its last phase, to train the
        added epochs; a phase shorter than what it already trained is refused (the lr steps at
        ``train.lr_step`` and the lambda ramp follow the new length, as if it had been planned
        from the start)."""
        progress = cls(dict(state["position"]), dict(state["best"]), list(state["history"]), state.get("elapsed", 0.0))
        progress.phase_records = {k: dict(v) for k, v in state.get("phase_records", {}).items()}
        position = progress.position
        index = min(position["phase"], len(phases) - 1)
        phase = phases[index]
        trained = max((h["epoch"] for h in progress.history if h["phase"] == phase.name), default=0)
        if trained > phase.epochs:
            raise RunFolderError(
                f"{where}: already trained {trained} {phase.name} epochs; a run cannot be shortened "
                f"to {phase.epochs} (train into a new --out instead)"
            )
        if position["phase"] >= len(phases) and trained < phase.epochs:
            position.update(phase=index, epoch=trained)
        return progress


def check_method(state: dict[str, Any], name: str, where: Path) -> None:
    if state["method"] != name:
        raise RunFolderError(f"{where}: checkpoint is of method {state['method']}, not {name}")


def make_optimizer(parameters, t, saved: dict[str, Any] | None = None):
    """Adam with the lr divided by ``t.lr_gamma`` every ``t.lr_step`` epochs (one per phase);
    ``parameters``: parameters or groups (a group's ``lr_factor`` scales ``t.lr``); ``saved``: a
    checkpoint's optimizer and scheduler states to go on from."""
    parameters = list(parameters)
    if parameters and isinstance(parameters[0], dict):
        parameters = [g | {"lr": t.lr * g["lr_factor"]} if "lr_factor" in g else g for g in parameters]
    optimizer = torch.optim.Adam(parameters, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=t.lr_step, gamma=t.lr_gamma)
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    return optimizer, scheduler


def carry_state(source: torch.optim.Optimizer, target: torch.optim.Optimizer) -> None:
    """Give ``target`` the per-parameter state (Adam's moments and step) ``source`` holds for the
    parameters both optimise."""
    for group in target.param_groups:
        for p in group["params"]:
            if p in source.state:
                target.state[p] = {k: v.clone() if torch.is_tensor(v) else v for k, v in source.state[p].items()}


def non_finite_images(data: SegmentationData) -> list[str]:
    """The ids of the training images that hold a NaN or an infinity, as the networks see them."""
    found = []
    for split in (data.labeled, data.unlabeled):
        found += [i for i, image in zip(split.ids, split.images) if not bool(torch.isfinite(image).all())]
    return found


def weigh(losses: dict[str, torch.Tensor], unsupervised: tuple[str, ...], weight: float) -> dict[str, torch.Tensor]:
    """The losses as trained: each unsupervised term times lambda, the others as they are."""
    return {k: weight * v if k in unsupervised else v for k, v in losses.items()}


def check_finite(
    total: torch.Tensor, losses: dict[str, torch.Tensor], where: str, last: Path, data: SegmentationData
) -> None:
    """Stop a diverged training with what is known: the loss terms, the training images that hold
    non-finite values when the data is the cause, and the last checkpoint when there is one."""
    if torch.isfinite(total):
        return
    terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
    bad = non_finite_images(data)
    cause = (
        f"; the data is the cause: {len(bad)} training image(s) hold non-finite values after normalisation "
        f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})"
        if bad
        else "; the data is finite, so the training itself diverged: lower train.lr"
    )
    saved = f"last good checkpoint: {last}" if last.exists() else "no checkpoint was written yet"
    raise TrainingDiverged(f"non-finite loss at {where}: {terms}{cause}; {saved}")


class Trainer:
    """Runs (or resumes) one training of ``cfg`` on ``data`` into ``run_dir``: phases of epochs
    of steps; after each evaluated epoch the selection split picks the best checkpoint."""

    def __init__(self, cfg: Config, data: SegmentationData, run_dir: Path, rank: int = 0, world: int = 1):
        self.cfg, self.data, self.folder, self.rank = cfg, data, RunFolder(run_dir), rank
        self.device = set_up_device(cfg.train.device)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        torch.manual_seed(cfg.train.seed)
        if not any(bool((mask > 0).any()) for mask in data.labeled.masks):
            raise DataError(
                f"{cfg.data.root}: none of the {len(data.labeled)} labeled training images has any foreground in its "
                "mask; check the masks and data.mask_mode"
            )
        self.method: Method = build_method(cfg, data.channels, data.num_classes, data.spatial_dims).to(self.device)
        self.model = self.method  # what the steps call: the method, or its DDP wrapper
        if world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(self.method, find_unused_parameters=True)
        t = cfg.train
        self.plan = BatchPlan(
            len(data.labeled), len(data.unlabeled), t.batch_size, t.labeled_batch_size, t.steps_per_epoch, rank, world
        )
        self.phases = self.method.phases(t.epochs)
        self.monitor = Monitor(self.folder, enabled=rank == 0)
        self.progress, self.saved_optimizer = Progress(), None
        self.optimizer = self.finished_optimizer = None
        self.update_seconds: list[float] = []

    def state(self) -> dict[str, Any]:
        model = {"method": self.method.name, "config": self.cfg.to_dict(), "data": self.data.info()}
        model["model"] = self.method.state_dict()
        optimizer = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        return model | optimizer | {"optimizer_phase": self.optimizer_phase} | self.progress.state()

    def restore(self, state: dict[str, Any]) -> None:
        check_method(state, self.method.name, self.folder.path)
        self.method.load_state_dict(state["model"])
        self.progress = Progress.restored(state, self.phases, self.folder.path)
        if self.progress.position != state["position"]:  # a finished run given more epochs: unfinished until it ends
            self.folder.results_path.unlink(missing_ok=True)
        if state["optimizer_phase"] == self.progress.position["phase"]:  # else it is a finished phase's
            self.saved_optimizer = state
        elif state["optimizer_phase"] == self.progress.position["phase"] - 1 and self.progress.position["epoch"] == 0:
            self.finished_optimizer = state  # the phase before: carried over if the method asks

    def save(self, which: str = "last") -> None:
        if self.rank == 0:
            self.folder.save_checkpoint(self.state(), which)
            if which == "last":
                self.monitor.saved(self.progress.history)

    def fit(self, resume: bool = False, force: bool = False, plan: dict[str, Any] | None = None) -> dict[str, Any]:
        """Train every phase (or what is left of them); ``plan``: the record of the planned data
        settings, written to ``plan.json`` and logged, each value with its reason."""
        state = self.folder.prepare(self.cfg, resume, force) if self.rank == 0 else None
        if self.plan.world > 1:
            torch.distributed.barrier()  # rank 0 has checked and prepared the folder
            if self.rank != 0 and resume and self.folder.has_checkpoint():
                state = self.folder.load_checkpoint()
        if state is not None:
            self.restore(state)  # refuses a state it cannot go on from, before anything is written
            if self.rank == 0:
                self.folder.write_config(self.cfg)  # e.g. a longer run
        else:  # a new run: a method that learns from the intensity prior reads its polarity now
            prior = self.method.begin(lambda: intensity_prior_agreement(self.data.labeled))
            if prior is not None:
                self.progress.phase_records["prior"] = prior
        splits = self.folder.read_splits() if self.rank == 0 else None
        if self.rank == 0 and splits is None:
            splits = split_record(self.data)
            self.folder.write_splits(splits)
        self.leaks = (splits or {}).get("leaks", [])
        if self.rank == 0 and plan:
            self.folder.write_plan(plan)
        self.monitor.open()
        try:
            for key in (plan or {}).get("settings", {}):
                kept = "" if key in plan["applied"] else "  (yours kept)"
                self.monitor.info(f"plan: {key}={plan['settings'][key]}  # {plan['reasons'][key]}{kept}")
            self.monitor.info(
                f"[superdiffusion] {self.method.name} on {self.cfg.data.name}: {self.data.summary()}; "
                f"device {self.device}; run folder {self.folder.path}"
            )
            if self.leaks:
                self.monitor.info(f"[superdiffusion] WARNING: {leak_warning(self.leaks)}", logging.WARNING)
            if self.method.unsupervised_terms:  # where the unsupervised weight comes from, in one line
                m = self.cfg.method
                self.monitor.info(
                    f"lambda: max {m.lambda_max:g} ({self.cfg.origin('method.lambda_max')}), ramp {m.ramp} "
                    f"({self.cfg.origin('method.ramp')}), for {', '.join(self.method.unsupervised_terms)}"
                )
            if "prior" in self.progress.phase_records:
                found = self.progress.phase_records["prior"]
                self.monitor.info(
                    f"prior: the intensity prior against the labeled training images: dice={found['dice']:.4f}  "
                    f"auroc={found['auroc']:.4f}  swapped={found['swapped']}"
                )
            if self.phases[0].name == "pretrain":  # its length, and where it comes from
                self.monitor.info(
                    f"pretrain: {self.phases[0].epochs} epochs ({self.cfg.origin('method.pretrain_epochs')})"
                )
            for index, phase in enumerate(self.phases):
                if index >= self.progress.position["phase"]:
                    self.run_phase(index, phase)
            self.health = run_health(self.progress.history, self.progress.best, self.cfg.eval, self.data.num_classes)
            self.monitor.health(self.health["flags"])
        finally:
            self.monitor.close(self.progress.history)
        return self.progress.best

    def run_phase(self, index: int, phase: Phase) -> None:
        t = self.cfg.train
        previous = self.previous_optimizer(index)
        self.optimizer, self.scheduler = make_optimizer(self.method.parameters_for(phase.name), t, self.saved_optimizer)
        if self.saved_optimizer is None and previous is not None and self.method.carries_optimizer_state(phase.name):
            carry_state(previous, self.optimizer)
            self.monitor.info(f"{phase.name}: the optimizer goes on from {self.phases[index - 1].name}'s state")
        self.optimizer_phase, self.saved_optimizer = index, None
        for epoch in range(self.progress.position["epoch"], phase.epochs):
            self.run_epoch(index, phase, epoch)
            self.progress.position.update(epoch=epoch + 1)
            due = (epoch + 1) % t.eval_every == 0 or epoch + 1 == phase.epochs
            if phase.evaluate and due and self.rank == 0:
                self.select(epoch)
            self.save()
        if phase.name not in self.progress.phase_records:
            record = self.method.after_phase(
                phase.name, labeled_agreement(self.method, self.data, self.cfg, self.device)
            )
            if record is not None:
                self.record_phase(phase, record)
        self.progress.position.update(phase=index + 1, epoch=0)
        self.save()

    def previous_optimizer(self, index: int):
        """The optimizer of phase ``index - 1`` (this process's, or rebuilt from the checkpoint a
        resume starts from), or None."""
        if index == 0:
            return None
        if self.optimizer is not None and self.optimizer_phase == index - 1:
            return self.optimizer
        if self.finished_optimizer is not None:
            saved, self.finished_optimizer = self.finished_optimizer, None
            params = self.method.parameters_for(self.phases[index - 1].name)
            return make_optimizer(params, self.cfg.train, saved)[0]
        return None

    def record_phase(self, phase: Phase, record: dict[str, Any]) -> None:
        """What the end of ``phase`` measured (the pretrained teacher's agreement with the labeled
        images): in the log, in the phase's last history row (``history.csv``) and in results.json."""
        self.progress.phase_records[phase.name] = record
        if self.progress.history:
            self.progress.history[-1].update({f"{phase.name}_{k}": v for k, v in record.items()})
        shown = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
        self.monitor.info(f"{phase.name}: the teacher's mask against the labeled training images: {shown}")

    def run_epoch(self, phase_index: int, phase: Phase, epoch: int) -> None:
        t, meter = self.cfg.train, EpochMeter()
        self.model.train()
        weight = self.method.weight(epoch, phase.epochs)
        batches = self.plan.epoch(t.seed, phase_index, epoch)
        bar = tqdm(batches, desc=f"{phase.name} {epoch + 1}/{phase.epochs}", leave=False, disable=self.rank or None)
        self.update_seconds = []  # this epoch's seconds an update (progress lines, benchmarks/drift.py)
        for i, (lab, unl) in enumerate(bar):
            started = time.perf_counter()
            seed = step_seed(t.seed, phase_index, epoch, i)
            torch.manual_seed(seed)
            batch = make_batch(self.data, lab, unl, torch.Generator().manual_seed(seed), self.cfg.data.patch_size)
            batch = self.plan.shard(batch).to(self.device)
            ctx = StepContext(phase.name, epoch, phase.epochs, self.progress.position["step"], weight)
            with torch.autocast("cuda", torch.bfloat16, enabled=t.amp and self.device.type == "cuda"):
                raw = self.model(batch, ctx)
            losses = weigh(raw, self.method.unsupervised_terms, weight)  # lambda, applied here only
            total = sum(losses.values())
            where = f"step {self.progress.position['step']} ({phase.name} epoch {epoch + 1})"
            check_finite(total, raw, where, self.folder.checkpoint_path("last"), self.data)  # the method's terms
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
            self.method.after_step(ctx)
            self.progress.position["step"] += 1
            meter.add(losses, self.method.diagnostics, {k: raw[k] for k in self.method.unsupervised_terms if k in raw})
            self.method.diagnostics = {}
            loss = float(total.detach())
            bar.set_postfix(loss=f"{loss:.3f}")
            self.update_seconds.append(time.perf_counter() - started)
            self.monitor.update(phase.name, epoch + 1, phase.epochs, i + 1, len(batches), self.update_seconds, loss)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        record = meter.record(phase.name, epoch + 1, weight, lr)
        self.progress.add(record)
        self.monitor.epoch(record, list(meter.sums), list(meter.diagnostics), phase.epochs, ctx.step + 1)

    def select(self, epoch: int) -> None:
        """Score the selection split, keep the best checkpoint and its threshold."""
        choice = select_epoch(self.method, self.data, self.cfg, self.device)
        improved = self.progress.consider(choice, epoch + 1)
        if self.cfg.eval.hidden_labels:  # the mechanism, against the masks the regime hides (no update reads them)
            hidden = hidden_label_scores(self.method, self.data, self.cfg, self.device)
            self.progress.history[-1].update(hidden)
            self.monitor.hidden(hidden, self.progress.position["step"])
        if improved:
            self.save("best")
        step = self.progress.position["step"]
        self.monitor.selection(choice, improved, self.progress.history[-1], step)
        if self.monitor.wants_images(epoch) and self.data.spatial_dims == 2 and not choice.variable_size:
            shown = example_predictions(self.method, choice.split, self.cfg, self.device)
            self.monitor.examples(choice.split_name, *shown, choice.threshold, step)
