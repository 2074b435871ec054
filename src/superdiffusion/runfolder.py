"""A run folder and everything it holds, in one place:

    config.yaml     the resolved settings (every method setting, defaults included)
    results.json    test scores of the selected checkpoint: present once the run has finished
    history.csv     one row per epoch: losses, lambda, learning rate, seconds, validation score
    test_per_case.csv  test scores of each image or volume (id, dice, jaccard; volumes: hd95, asd)
    progress.png    the history drawn: losses, validation score and threshold, lambda and lr
    train.log       the run's log, appended across resumes
    model.pt        what prediction needs: the segmenter's weights (and the teacher's, where the
                    method has one), normalisation, threshold and the config; written at the end
    checkpoints/    last.pt and best.pt, the full training state (atomic; the previous one kept as
                    *.prev.pt while training); removed at the end unless train.keep_state=true
    tensorboard/    TensorBoard events
    .lock           held by the process that trains into the folder

Checkpoints carry a format number; a file of a format this version cannot read is refused
with a clear message instead of failing somewhere inside ``load_state_dict``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from . import checkpoint
from .config import RESUMABLE_KEYS, Config, flat, from_dict, load_yaml
from .errors import RunFolderError

# the version of the checkpoint dictionary's layout this code writes and reads. 2: volumes'
# data.normalize=zscore means the training set's statistics, as in 2D (per volume in format 1,
# which now reads as per_image)
CHECKPOINT_FORMAT = 2

log = logging.getLogger("superdiffusion")
log.setLevel(logging.INFO)  # a library user silences the package with log.setLevel(logging.WARNING)


class RunFolderBusy(RunFolderError):
    """Another process is training into this run folder."""


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_handle = None

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # --- paths ---------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def results_path(self) -> Path:
        return self.path / "results.json"

    @property
    def history_path(self) -> Path:
        return self.path / "history.csv"

    @property
    def log_path(self) -> Path:
        return self.path / "train.log"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def model_path(self) -> Path:
        return self.path / "model.pt"

    def checkpoint_path(self, which: str = "last") -> Path:
        return self.checkpoints / f"{which.removesuffix('.pt')}.pt"

    # --- state ---------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self.config_path.exists()

    @property
    def finished(self) -> bool:
        return self.results_path.exists()

    def has_checkpoint(self, which: str = "last") -> bool:
        path = self.checkpoint_path(which)
        return path.exists() or checkpoint.previous_path(path).exists()

    def clear(self) -> None:
        """Remove what a training writes (for ``--force``); other files are left alone."""
        for name in (self.checkpoints, self.tensorboard):
            shutil.rmtree(name, ignore_errors=True)
        for path in (self.results_path, self.config_path, self.history_path, self.model_path):
            path.unlink(missing_ok=True)

    # --- contents ------------------------------------------------------------------------
    def read_config(self) -> Config:
        if not self.started:
            raise RunFolderError(f"{self.path}: no config.yaml (not a run folder, or the run never started)")
        return from_dict(load_yaml(self.config_path))

    def write_config(self, cfg: Config) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _atomic_text(self.config_path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    def read_results(self) -> dict[str, Any]:
        return json.loads(self.results_path.read_text())

    def write_results(self, results: dict[str, Any]) -> None:
        write_json(self.results_path, results)

    @property
    def per_case_path(self) -> Path:
        return self.path / "test_per_case.csv"

    def write_history(self, history: list[dict[str, Any]]) -> None:
        """``history.csv``: one row per epoch, the union of the records' keys as columns."""
        write_rows(self.history_path, history)

    @property
    def progress_path(self) -> Path:
        return self.path / "progress.png"

    def write_progress(self, history: list[dict[str, Any]]) -> None:
        """``progress.png``: per epoch, the losses of each phase (log scale), the validation
        score with its selected threshold, and lambda with the learning rate."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        skip = {
            "phase",
            "epoch",
            "weight",
            "lr",
            "seconds",
            "threshold",
            "predicted_fraction",
            "true_fraction",
            "pseudo_fg",
        }
        x = list(range(1, len(history) + 1))
        fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
        for key in dict.fromkeys(
            k for h in history for k in h if k not in skip and not k.startswith(("val_", "test_"))
        ):
            points = [(i, h[key]) for i, h in zip(x, history) if key in h and h[key] is not None and h[key] > 0]
            if points:
                axes[0].plot(*zip(*points), label=key)
        axes[0].set_yscale("log")
        axes[0].set_title("losses (as trained; raw_*: before lambda)")
        for key in dict.fromkeys(k for h in history for k in h if k.startswith(("val_", "test_"))):
            points = [(i, h[key]) for i, h in zip(x, history) if key in h]
            axes[1].plot(*zip(*points), marker=".", label=key)
        for key, label in (("threshold", "selected threshold"), ("pseudo_fg", "pseudo-label foreground share")):
            points = [(i, h[key]) for i, h in zip(x, history) if key in h]
            if points:
                axes[1].plot(*zip(*points), ls=":", label=label)
        axes[1].set_ylim(0, 1)
        axes[1].set_title("selection split")
        axes[2].plot(x, [h.get("weight", 0) for h in history], label="lambda")
        axes[2].set_title("lambda (left), learning rate (right)")
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
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        fig.tight_layout()
        tmp = self.path / f".progress.tmp-{os.getpid()}.png"
        fig.savefig(tmp, dpi=80)
        plt.close(fig)
        tmp.replace(self.progress_path)

    def save_checkpoint(self, state: dict[str, Any], which: str = "last") -> None:
        checkpoint.save_atomic({**state, "format": CHECKPOINT_FORMAT}, self.checkpoint_path(which))

    def load_checkpoint(self, which: str = "last") -> dict[str, Any]:
        path = self.checkpoint_path(which)
        if not self.has_checkpoint(which):
            raise RunFolderError(f"{self.path}: no checkpoint {path.name} (has this run finished an evaluation epoch?)")
        return _readable(checkpoint.load(path), path)

    def write_model(self, model: dict[str, Any]) -> None:
        checkpoint.save_atomic({**model, "format": CHECKPOINT_FORMAT, "kind": "model"}, self.model_path, False)

    def load_model(self) -> dict[str, Any]:
        return _readable(checkpoint.load(self.model_path, fallback=False), self.model_path)

    def finish_checkpoints(self, keep_state: bool) -> None:
        """After ``model.pt`` is written: drop the training state, or (``keep_state``) keep
        last.pt and best.pt once each reads back, without their ``*.prev.pt`` fallbacks."""
        if not keep_state:
            shutil.rmtree(self.checkpoints, ignore_errors=True)
            return
        for which in ("last", "best"):
            path = self.checkpoint_path(which)
            if path.exists():
                checkpoint.load(path, fallback=False)  # verified before its fallback goes
                checkpoint.previous_path(path).unlink(missing_ok=True)

    # --- one writer at a time -------------------------------------------------------------
    def lock(self) -> None:
        """Take the folder for this process, or raise :class:`RunFolderBusy` naming the holder.
        The lock is an advisory ``flock`` on ``.lock``: the system releases it when the process
        ends, however it ends, so a killed run never leaves the folder locked."""
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunFolderBusy(
                f"{self.path} is being trained by another process (pid {holder}); wait for it, or train into "
                "another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_handle = handle

    def unlock(self) -> None:
        if self._lock_handle is not None:
            self._lock_handle.close()  # closing the file releases the flock
            self._lock_handle = None

    @property
    def busy(self) -> bool:
        """Whether another process holds the lock now."""
        if not (self.path / ".lock").exists():
            return False
        try:
            probe = RunFolder(self.path)
            probe.lock()
        except RunFolderBusy:
            return True
        probe.unlock()
        return False

    def check_resume(self, saved: Config, cfg: Config) -> None:
        """Refuse to resume with settings other than :data:`RESUMABLE_KEYS`, in one line."""
        old, new = flat(saved), flat(cfg)
        changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k) and k not in RESUMABLE_KEYS]
        if changed:
            diffs = ", ".join(f"{k} ({old.get(k)} -> {new.get(k)})" for k in changed)
            raise RunFolderError(
                f"{self.path} was trained with other settings; --resume may change only {', '.join(RESUMABLE_KEYS)}, "
                f"but this command changes {diffs}: drop those, or train into a new --out"
            )

    def prepare(self, cfg: Config, resume: bool, force: bool) -> dict[str, Any] | None:
        """Ready the folder for a training of ``cfg``: the last checkpoint's state when resuming
        one (None otherwise). A folder that holds a run is never overwritten without ``force``."""
        if resume and self.has_checkpoint():
            state = self.load_checkpoint()
            self.check_resume(from_dict(state["config"]), cfg)  # the checkpoint's settings, as it reads them
            self.write_config(cfg)  # e.g. a longer run
            return state
        if resume and self.started and self.finished:
            raise RunFolderError(
                f"{self.path}: this finished run kept no training state (train.keep_state=false), so it "
                "cannot train further: train into a new --out (with train.keep_state=true to extend it later)"
            )
        if not resume and self.started:
            if not force:
                raise RunFolderError(
                    f"{self.path} already holds a run; pass --resume to continue it or --force to replace it"
                )
            self.clear()
        self.write_config(cfg)
        return None

    def log_to_file(self) -> logging.Handler:
        """Append the package's log to ``train.log`` (the caller removes the handler)."""
        handler = logging.FileHandler(self.log_path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        log.addHandler(handler)
        return handler


def _readable(state: dict[str, Any], path: Path) -> dict[str, Any]:
    """``state`` when this version can read its format; one clear line otherwise."""
    if state["format"] > CHECKPOINT_FORMAT:
        raise RunFolderError(
            f"{path}: format {state['format']} was written by a newer superdiffusion; this version reads "
            f"formats up to {CHECKPOINT_FORMAT}: upgrade the package"
        )
    data = state.get("config", {}).get("data", {})
    if state["format"] < 2 and data.get("spatial_dims") == 3 and data.get("normalize") == "zscore":
        state["config"]["data"] = dict(data, normalize="per_image")  # the same per-volume z-score, renamed
    return state


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """A CSV of ``rows`` (columns: the union of their keys, in order), written atomically."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def write_json(path: Path, obj: Any) -> None:
    _atomic_text(Path(path), json.dumps(obj, indent=2))
