"""A grid of runs (datasets x methods x label regimes x seeds x any other setting), each in
its own folder keyed by its settings. A finished run (``results.json``) is never redone; an
interrupted one resumes from its checkpoint. Runs go in parallel local processes, or to a
Slurm cluster (or submitit's local executor) through submitit."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import safefs
from ..config import list_valued, load_yaml, resolve
from ..errors import ConfigError, RunFolderError
from ..methods import METHODS
from ..runfolder import RunFolder

PRESETS: dict[str, dict[str, Any]] = {
    # Table 1 on one dataset: every 2D method at the paper's five regimes, 3 seeds
    "table1": {
        "grid": {
            "method": [name for name, method in METHODS.items() if method.in_table1],
            "data.labeled_percent": [1, 2, 5, 10, 20],
            "train.seed": [0, 1, 2],
        }
    },
    # Fig. 4: teacher pretraining on/off
    "ablation-pretrain": {
        "grid": {
            "method": ["superdiffusion"],
            "method.pretrain_epochs": [0, -1],
            "data.labeled_percent": [5, 20],
            "train.seed": [0, 1, 2],
        }
    },
    # Fig. 5: number of rounds of diffusion
    "ablation-rounds": {
        "grid": {
            "method": ["superdiffusion"],
            "method.rounds": [0, 1, 2, 3, 5],
            "data.labeled_percent": [10],
            "train.seed": [0, 1, 2],
        }
    },
}

KEYED = ("dataset", "method", "data.labeled_percent", "train.seed")


@dataclass
class RunSpec:
    overrides: list[str]
    folder: Path

    @property
    def finished(self) -> bool:
        return RunFolder(self.folder).finished

    @property
    def started(self) -> bool:
        return RunFolder(self.folder).started


def _fmt(value: Any) -> str:
    """A grid value in a folder name: ``0.1``, ``cps``, ``0.9x0.999`` for a list, ``null``."""
    if isinstance(value, list):
        return "x".join(_fmt(v) for v in value)
    return "null" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value) if isinstance(value, list) or value is None else _fmt(value)}"


def parse_grid_args(items: list[str]) -> tuple[dict[str, list[Any]], list[str]]:
    """``key=[a,b]`` entries become grid axes; plain ``key=value`` entries are fixed. A setting
    that holds a list (its field type says: ``data.size``, ``train.betas``, ...) is a value when
    given one list and an axis when given a list of lists (or ``null``):
    ``train.betas=[0.9,0.999]`` is fixed, ``train.betas=[[0.9,0.999],[0.9,0.99]]`` is an axis."""
    grid, fixed = {}, []
    for item in items:
        key, _, value = item.partition("=")
        parsed = yaml.safe_load(value) if value.startswith("[") and value.endswith("]") else None
        if isinstance(parsed, list) and (
            not list_valued(key) or (parsed and all(v is None or isinstance(v, list) for v in parsed))
        ):
            grid[key] = parsed
        else:
            fixed.append(item)
    return grid, fixed


def expand(grid: dict[str, list[Any]], fixed: list[str], root: Path) -> list[RunSpec]:
    """Every combination of the grid, with a folder named after its settings."""
    keys = list(grid)
    specs = []
    for values in itertools.product(*(grid[k] for k in keys)):
        setting = dict(zip(keys, values))
        overrides = fixed + [_override(k, v) for k, v in setting.items()]
        cfg = resolve(overrides)  # checks every setting before anything runs, the method's own included
        extra = "-".join(f"{k.split('.')[-1]}{_fmt(v)}" for k, v in setting.items() if k not in KEYED)
        name = f"p{cfg.data.labeled_percent:g}-s{cfg.train.seed}" + (f"-{extra}" if extra else "")
        specs.append(RunSpec(overrides, root / cfg.data.name / cfg.method.name / name))
    folders = [s.folder for s in specs]
    if len(set(folders)) != len(folders):
        raise ConfigError("two grid points map to the same run folder; vary dataset, method, regime or seed")
    return specs


def load_grid(path: str | None, preset: str | None, items: list[str]) -> tuple[dict[str, list[Any]], list[str]]:
    grid: dict[str, list[Any]] = {}
    fixed: list[str] = []
    if preset:
        if preset not in PRESETS:
            raise ConfigError(f"unknown sweep preset {preset!r}; presets: {', '.join(PRESETS)}")
        grid.update(PRESETS[preset]["grid"])
    if path:
        spec = load_yaml(path)
        grid.update(spec.get("grid", {}))
        fixed += [f"{k}={v}" for k, v in (spec.get("fixed") or {}).items()]
    cli_grid, cli_fixed = parse_grid_args(items)
    grid.update(cli_grid)
    return grid, fixed + cli_fixed


def command(spec: RunSpec, threads: int) -> list[str]:
    cmd = [sys.executable, "-m", "superdiffusion", "train", *spec.overrides]
    if threads and not any(o.startswith("train.threads=") for o in spec.overrides):
        cmd.append(f"train.threads={threads}")
    cmd += ["--out", str(spec.folder)]
    if spec.started:
        cmd.append("--resume")
    return cmd


def run_one(spec: RunSpec, threads: int = 0) -> str:
    """Train one grid point in a child process: ``finished`` or ``failed``; ``skipped`` or
    ``busy`` when, by its turn, another sweep over the same folders has finished it or is training
    it (two sweeps side by side, or jobs on a cluster, share their grid's runs this way). The run
    keeps its log in ``folder/train.log``; the child's console (progress, errors before training
    starts) goes to ``folder/console.log``."""
    folder = RunFolder(spec.folder)
    if folder.finished:
        return "skipped"
    if folder.busy:
        return "busy"
    try:
        folder.take()  # a folder of someone else's files is refused before anything is written in it
        folder.claim(folder.path / "console.log")
    except RunFolderError as err:
        print(f"superdiffusion: error: {err}", file=sys.stderr)
        return "failed"
    with safefs.append(spec.folder / "console.log") as log:
        code = subprocess.run(command(spec, threads), stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    if code.returncode != 0 and folder.busy:  # another sweep took it between the check and the child's lock
        return "busy"
    return "finished" if code.returncode == 0 else "failed"


def slurm_parameters(items: list[str]) -> dict[str, Any]:
    """``--slurm KEY=VALUE`` items as submitit parameters, each value read as YAML (``600``, ``gpu``,
    ``[a, b]``); a malformed item is one line naming it."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--slurm {item!r}: expected KEY=VALUE, e.g. slurm_partition=gpu")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ConfigError(f"--slurm {item!r}: the value is not valid YAML ({str(err).splitlines()[0]})") from None
    return out


def run_sweep(
    specs: list[RunSpec], jobs: int = 1, executor: str = "local", slurm: dict | None = None
) -> dict[str, int]:
    """Run every unfinished spec that no other process is training; returns counts of
    skipped (finished), busy (locked by another process), finished and failed runs."""
    todo = [s for s in specs if not s.finished]
    busy = [s for s in todo if RunFolder(s.folder).busy]  # being trained by another sweep or job
    todo = [s for s in todo if s not in busy]
    counts = {"total": len(specs), "skipped": len(specs) - len(todo) - len(busy), "busy": len(busy)}
    counts.update(finished=0, failed=0)
    if executor == "local":
        threads = max(1, (os.cpu_count() or 1) // max(1, jobs)) if jobs > 1 else 0
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            codes = list(pool.map(lambda s: run_one(s, threads), todo))
    elif executor in ("slurm", "submitit-local"):
        import submitit

        folder = (specs[0].folder.parents[2] if specs else Path(".")) / "submitit"
        ex = submitit.AutoExecutor(folder=str(folder), cluster="local" if executor == "submitit-local" else None)
        try:
            ex.update_parameters(**(slurm or {}))
        except (NameError, TypeError, ValueError) as err:  # submitit names what it does not know, at length
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ConfigError(f"--slurm: {first[:300]}") from None
        jobs_ = [ex.submit(run_one, s) for s in todo]
        codes = [j.result() for j in jobs_]
    else:
        raise ConfigError(f"sweep executor must be local, slurm or submitit-local, got {executor!r}")
    for outcome in codes:
        counts[outcome] += 1
    return counts
