"""A run folder and everything it holds, in one place:

    config.yaml     the resolved settings (every method setting, defaults included)
    results.json    test scores of the selected checkpoint: present once the run has finished
    splits.json     the ids of every split (labeled, unlabeled, val, test) and each file's
                    fingerprint: evaluate and --resume use them, and refuse changed files
    history.csv     one row per epoch: losses, lambda, learning rate, seconds, validation score
    test_per_case.csv  test scores of each image or volume (id, dice, jaccard; volumes: hd95, asd)
    progress.png    the history drawn (monitor.draw_progress): losses, validation score and threshold, lambda and lr
    train.log       the run's log, appended across resumes
    model.pt        what prediction needs: the segmenter's weights (and the teacher's, where the
                    method has one), normalisation, threshold and the config; written at the end
    checkpoints/    last.pt and best.pt, the full training state (atomic; the previous one kept as
                    *.prev.pt while training); removed at the end unless train.keep_state=true
    tensorboard/    TensorBoard events
    .lock           held by the process that trains into the folder
    .superdiffusion-run.json  the marker: this folder is a run folder, and the files the
                    package wrote in it (the only ones ``--force`` and the end of training remove)

A folder is trained into only when it is new, empty or already marked: a folder holding
files the package did not write is refused, with or without ``--force``. No file is written
through a symbolic link (:mod:`superdiffusion.safefs`).

Checkpoints carry a format number; a file of a format this version cannot read is refused
with a clear message instead of failing somewhere inside ``load_state_dict``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

import yaml

from . import checkpoint, safefs
from .config import RESUMABLE_KEYS, Config, flat, from_dict, load_yaml
from .errors import RunFolderError

# the version of the checkpoint dictionary's layout this code writes and reads. 2: volumes'
# data.normalize=zscore means the training set's statistics, as in 2D (per volume in format 1,
# which now reads as per_image)
CHECKPOINT_FORMAT = 2

log = logging.getLogger("superdiffusion")  # its level is the application's (the CLI's: INFO)


class RunFolderBusy(RunFolderError):
    """Another process is training into this run folder."""


MARKER = ".superdiffusion-run.json"
MARKER_FORMAT = 1
# what a run folder written before the marker existed may hold (adopted on first use, see ``take``)
LEGACY_NAMES = (
    "config.yaml",
    "results.json",
    "history.csv",
    "test_per_case.csv",
    "progress.png",
    "train.log",
    "model.pt",
    "console.log",
    ".lock",
    "labeled_next.txt",
)
LEGACY_PATTERNS = (
    "checkpoints/last.pt",
    "checkpoints/best.pt",
    "checkpoints/last.prev.pt",
    "checkpoints/best.prev.pt",
    "tensorboard/events.out.tfevents.*",
    "evaluation-*.json",
    "evaluation-*-per-case.csv",
    "suggest-*.csv",
)


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

    # --- ownership: the marker and what it lists -------------------------------------------
    @property
    def marker_path(self) -> Path:
        return self.path / MARKER

    @property
    def owned(self) -> bool:
        return self.marker_path.is_file() and not self.marker_path.is_symlink()

    def written(self) -> set[str]:
        """The files (relative paths) the package wrote here, as the marker lists them now
        (read afresh: several objects of a process may write into one folder). A name that would
        leave the folder (absolute, ``..``, or through a linked subfolder), as only a tampered
        marker holds, is not listed: nothing outside the folder is ever the package's to remove."""
        if not self.owned:
            return set()
        names = read_json_object(self.marker_path).get("written")
        if not isinstance(names, list):
            raise RunFolderError(f"{self.marker_path}: not a marker superdiffusion wrote (no list of its files)")
        return {n for n in names if isinstance(n, str) and self._inside(n)}

    def _inside(self, name: str) -> bool:
        """Whether ``name`` (relative) names a file inside this folder, reached through no link."""
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            return False
        folder = self.path
        for part in relative.parts[:-1]:
            folder = folder / part
            if folder.is_symlink():
                return False
        return True

    def take(self) -> None:
        """Make sure this folder is a run folder before anything is written in it: create it (or
        an empty one) with its marker; adopt a run folder of an earlier version (a valid
        ``config.yaml`` beside a readable checkpoint or ``model.pt``); refuse anything else."""
        safefs.refuse_link(self.path)  # a linked run folder would put the run at the link's target
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"{self.path} is a file, not a folder: choose another --out")
        if self.owned:
            return
        for sub in (self.checkpoints, self.tensorboard, self.marker_path):
            safefs.refuse_link(sub)
        self.path.mkdir(parents=True, exist_ok=True)
        entries = sorted(os.listdir(self.path))
        if entries and not self._is_legacy_run():
            shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
            raise RunFolderError(
                f"{self.path} holds files superdiffusion did not write ({shown}); it never trains into such a "
                "folder, even with --force: choose a new or empty --out"
            )
        self._save_marker(set(self._legacy_files()) if entries else set())

    def _is_legacy_run(self) -> bool:
        if not self.config_path.is_file() or self.config_path.is_symlink():
            return False
        try:
            from_dict(load_yaml(self.config_path))
        except Exception:  # noqa: BLE001 - any unreadable or invalid config.yaml: not a run of ours
            return False
        for path in (self.checkpoint_path("last"), self.checkpoint_path("best"), self.model_path):
            if path.is_file() and not path.is_symlink():
                try:
                    checkpoint.load(path, fallback=False)
                    return True
                except RunFolderError:
                    continue
        return False

    def _legacy_files(self) -> list[str]:
        names = [n for n in LEGACY_NAMES if (self.path / n).is_file() and not (self.path / n).is_symlink()]
        for pattern in LEGACY_PATTERNS:
            names += [
                str(p.relative_to(self.path)) for p in self.path.glob(pattern) if p.is_file() and not p.is_symlink()
            ]
        return names

    def _save_marker(self, written: set[str]) -> None:
        content = {"format": MARKER_FORMAT, "written": sorted(written)}
        safefs.write_text(self.marker_path, json.dumps(content, indent=1) + "\n")

    def claim(self, *paths: Path | str) -> None:
        """Record files the package is about to write here (paths inside the folder)."""
        names = {self._relative(p) for p in paths}
        if not self.owned:
            self.take()
        written = self.written()
        if not names <= written:
            self._save_marker(written | names)

    def _relative(self, path: Path | str) -> str:
        try:
            return Path(path).relative_to(self.path).as_posix()
        except ValueError:
            return Path(path).as_posix()

    def _remove_written(self, under: str = "") -> None:
        """Delete the files the package wrote (those under ``under``, or all), then the folders
        they leave empty; everything else stays."""
        written = self.written()
        for name in sorted(n for n in written if n.startswith(under) and n != ".lock"):
            path = self.path / name
            if path.is_symlink() or path.is_file():
                path.unlink()
            written.discard(name)
        for sub in (self.checkpoints, self.tensorboard):
            if sub.is_dir() and not sub.is_symlink() and not any(sub.iterdir()):
                sub.rmdir()
        self._save_marker(written)

    def clear(self) -> None:
        """Remove what the package wrote here (for ``--force``); other files are left alone."""
        self._remove_written()

    # --- contents ------------------------------------------------------------------------
    def read_config(self) -> Config:
        if not self.started:
            raise RunFolderError(f"{self.path}: no config.yaml (not a run folder, or the run never started)")
        return from_dict(load_yaml(self.config_path))

    def write_config(self, cfg: Config) -> None:
        self.claim(self.config_path)
        safefs.write_text(self.config_path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    @property
    def splits_path(self) -> Path:
        return self.path / "splits.json"

    def write_splits(self, record: dict[str, Any]) -> None:
        """``splits.json``: the ids of every split and each file's fingerprint, written when the
        run starts, so that ``evaluate`` and ``--resume`` use the run's own splits."""
        self.write_json(self.splits_path, record)

    def read_splits(self) -> dict[str, Any] | None:
        """The recorded splits, or None for a run written before they were recorded."""
        if not self.splits_path.is_file():
            return None
        return read_json_object(self.splits_path)

    @property
    def plan_path(self) -> Path:
        return self.path / "plan.json"

    def write_plan(self, record: dict[str, Any]) -> None:
        """``plan.json``: the data settings planned for the run (:mod:`superdiffusion.plan`)."""
        self.write_json(self.plan_path, record)

    def read_plan(self) -> dict[str, Any] | None:
        return read_json_object(self.plan_path) if self.plan_path.is_file() else None

    def read_results(self) -> dict[str, Any]:
        return read_json_object(self.results_path)

    def write_results(self, results: dict[str, Any]) -> None:
        self.claim(self.results_path)
        write_json(self.results_path, results)

    def write_rows(self, path: Path, rows: list[dict[str, Any]]) -> None:
        """A CSV inside the folder (recorded as the package's)."""
        self.claim(path)
        write_rows(path, rows)

    def write_json(self, path: Path, obj: Any) -> None:
        """A JSON file inside the folder (recorded as the package's)."""
        self.claim(path)
        write_json(path, obj)

    @property
    def per_case_path(self) -> Path:
        return self.path / "test_per_case.csv"

    def write_history(self, history: list[dict[str, Any]]) -> None:
        """``history.csv``: one row per epoch, the union of the records' keys as columns."""
        self.write_rows(self.history_path, history)

    @property
    def progress_path(self) -> Path:
        return self.path / "progress.png"

    def write_progress(self, png: bytes) -> None:
        """``progress.png``: the history drawn (by :func:`superdiffusion.monitor.draw_progress`)."""
        self.claim(self.progress_path)
        safefs.write_bytes(self.progress_path, png)

    def save_checkpoint(self, state: dict[str, Any], which: str = "last") -> None:
        path = self.checkpoint_path(which)
        self.claim(path, checkpoint.previous_path(path))
        checkpoint.save_atomic({**state, "format": CHECKPOINT_FORMAT}, path)

    def load_checkpoint(self, which: str = "last") -> dict[str, Any]:
        path = self.checkpoint_path(which)
        if not self.has_checkpoint(which):
            raise RunFolderError(f"{self.path}: no checkpoint {path.name} (has this run finished an evaluation epoch?)")
        return _readable(checkpoint.load(path), path)

    def write_model(self, model: dict[str, Any]) -> None:
        self.claim(self.model_path)
        checkpoint.save_atomic({**model, "format": CHECKPOINT_FORMAT, "kind": "model"}, self.model_path, False)

    def load_model(self) -> dict[str, Any]:
        return _readable(checkpoint.load(self.model_path, fallback=False), self.model_path)

    def finish_checkpoints(self, keep_state: bool) -> None:
        """After ``model.pt`` is written: drop the training state, or (``keep_state``) keep
        last.pt and best.pt once each reads back, without their ``*.prev.pt`` fallbacks."""
        if not keep_state:
            self._remove_written("checkpoints/")
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

        self.take()
        self.claim(".lock")
        handle = safefs.open_lock(self.path / ".lock")
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

    def check_idle(self, command: str) -> None:
        """One line if another process is training this folder now: ``command`` would score a
        half-trained checkpoint, and write beside a run that may replace it."""
        if self.busy:
            raise RunFolderBusy(
                f"{self.path} is being trained by another process now; {command} scores a finished run: wait for the "
                "training to end"
            )

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
            return state  # config.yaml is rewritten (a longer run) once the trainer has accepted the state
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

    def tensorboard_writer(self, writer_class):
        """A TensorBoard writer into ``tensorboard/``, its event file recorded as the package's."""
        self.take()
        safefs.refuse_link(self.tensorboard)
        self.tensorboard.mkdir(exist_ok=True)
        before = set(os.listdir(self.tensorboard))
        writer = writer_class(str(self.tensorboard))
        writer.flush()
        self.claim(*(self.tensorboard / n for n in sorted(set(os.listdir(self.tensorboard)) - before)))
        return writer

    def log_to_file(self) -> logging.Handler:
        """Append the package's log to ``train.log`` (the caller removes the handler)."""
        self.claim(self.log_path)
        handler = _LogFile(safefs.append(self.log_path))
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        log.addHandler(handler)
        return handler


class _LogFile(logging.StreamHandler):
    """A log handler on an already opened file, which it closes."""

    def close(self) -> None:
        try:
            self.flush()
            self.stream.close()
        finally:
            super().close()


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


MODEL_KEYS = {"method": str, "config": dict, "data": dict, "format": int}  # what every saved model holds


def check_saved_model(state: Any, path: Path) -> None:
    """One line unless ``state`` has the structure of a model the package saved (``model.pt``
    or a checkpoint): a file of another program, or edited, is named rather than a traceback."""
    wrong = [k for k, kind in MODEL_KEYS.items() if not isinstance(state, dict) or not isinstance(state.get(k), kind)]
    weights = isinstance(state, dict) and (isinstance(state.get("segmenter"), dict) or isinstance(state.get("model"), dict))
    if not wrong:
        data = state["data"]
        wrong = [f"data.{k}" for k in ("channels", "num_classes", "spatial_dims") if not isinstance(data.get(k), int)]
    if wrong or not weights:
        what = f"its {wrong[0]} is missing or of the wrong kind" if wrong else "no weights"
        raise RunFolderError(f"{path}: not a model superdiffusion saved ({what}); train the run again, or restore the file")


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object the package wrote in a run folder; one line when it is not one (edited,
    truncated by a full disk)."""
    try:
        content = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise RunFolderError(f"{path}: unreadable ({str(err).splitlines()[0][:80]}); restore it, or train the run again") from None
    if not isinstance(content, dict):
        raise RunFolderError(f"{path}: not the JSON object superdiffusion wrote; restore it, or train the run again")
    return content


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """A CSV of ``rows`` (columns: the union of their keys, in order), written atomically."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with safefs.atomic(path, text=True, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_json(path: Path, obj: Any) -> None:
    safefs.write_text(Path(path), json.dumps(obj, indent=2))
