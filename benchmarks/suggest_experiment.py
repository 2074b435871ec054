"""Does `superdiffusion suggest` choose better images to label than chance?

On PH2 (full resolution, resized to 96x96, the evidence grid's schedule), for seeds 0-2:

1. train on 5 % labels (the base run);
2. rank the base run's unlabeled training images with ``suggest`` (``--by entropy``, the
   mean predictive entropy of the image, the uncertainty sampling of the active-learning
   literature) and add the top N to the labeled set;
3. add N images drawn at random (seeded) from the same pool instead;
4. retrain both arms with the same method, seed, split and schedule, and compare their test
   Dice per image: the paired difference (suggest - random) and its 90 % Student-t interval.

One resumable command (finished runs are never redone):

    python benchmarks/suggest_experiment.py --root runs/suggest --out benchmarks/results/suggest-ph2.json

The method is ``supervised``: it uses only the labeled images, so the experiment isolates
the choice of what to label, and its three rounds of three seeds fit about an hour of one
CPU core. ``--method`` changes it (the paper's method costs about ten times as much).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import random
import time
from pathlib import Path
from typing import Any

import torch
from evidence import DATASETS, QUICK  # benchmarks/evidence.py: the grid whose schedule this reuses

from superdiffusion import api
from superdiffusion.config import resolve
from superdiffusion.experiments.report import mean_ci
from superdiffusion.experiments.sweep import RunSpec, run_sweep

SEEDS = [0, 1, 2]


def overrides(method: str, seed: int, size: int, threads: int, labeled_ids: Path | None = None) -> list[str]:
    out = [
        "dataset=ph2-full",
        f"data.root={DATASETS['ph2-full']}",
        f"data.size=[{size}, {size}]",
        f"method={method}",
        "data.labeled_percent=5",
        f"train.seed={seed}",
        f"train.threads={threads}",
    ]
    return out + ([f"data.labeled_ids={labeled_ids}"] if labeled_ids else [])


def choose(base: Path, count: int, seed: int, by: str) -> dict[str, Path]:
    """The two labeled sets of one seed: the base run's labeled ids plus the top ``count`` by
    ``suggest``, and plus ``count`` drawn at random from the same pool (written once)."""
    ranking = base / f"suggest-{by}-{count}.csv"
    following = base / "labeled_next.txt"
    if not ranking.exists():
        api.suggest(base, count, by=by, device="cpu")
    with open(ranking, newline="") as handle:
        pool = [row["id"] for row in csv.DictReader(handle)]
    chosen = following.read_text().split()
    labeled = chosen[: len(chosen) - count]
    drawn = base / "labeled_random.txt"
    if not drawn.exists():
        drawn.write_text("\n".join(labeled + random.Random(seed).sample(pool, count)) + "\n")
    return {"suggest": following, "random": drawn}


def test_dice(folder: Path) -> float:
    result = json.loads((folder / "results.json").read_text())
    return 100 * result["test"]["resized"]["dice_per_image"]


def table(rows: list[dict[str, Any]], summary: dict[str, Any], args) -> str:
    """The experiment as a markdown table: test Dice per seed and arm, paired difference."""
    out = [
        f"Test Dice per image (%), {args.method}, PH2 at {args.size}x{args.size}, +{args.count} labels by "
        f"`suggest --by {args.by}` or at random; mean ± 90 % Student-t interval.",
        "",
        "| seed | base | + suggest | + random | suggest - random |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if "suggest" in r and "random" in r:
            diff = r["suggest"] - r["random"]
            out.append(f"| {r['seed']} | {r['base']:.2f} | {r['suggest']:.2f} | {r['random']:.2f} | {diff:+.2f} |")
    if summary:
        cell = {k: f"{v['mean']:.2f} ± {v['ci90']:.2f}" for k, v in summary.items()}
        out.append(f"| mean | {cell['base']} | {cell['suggest']} | {cell['random']} | {cell['suggest_minus_random']} |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("runs/suggest"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/suggest-ph2.json"))
    parser.add_argument("--method", default="supervised")
    parser.add_argument("--by", default="entropy")
    parser.add_argument("--count", type=int, default=8, help="labels added (5 % of PH2's training images is 8)")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--quick", action="store_true", help="2 epochs of 2 updates: checks the path only")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    quick = QUICK if args.quick else []
    start = time.time()
    bases = [
        RunSpec(overrides(args.method, s, args.size, args.threads) + quick, args.root / "base" / f"s{s}") for s in seeds
    ]
    for spec in bases:
        resolve(spec.overrides)  # every setting checked before anything runs
    print(run_sweep(bases), flush=True)
    arms = []
    for seed, base in zip(seeds, bases):
        for arm, ids in choose(base.folder, args.count, seed, args.by).items():
            spec = RunSpec(
                overrides(args.method, seed, args.size, args.threads, ids) + quick, args.root / arm / f"s{seed}"
            )
            resolve(spec.overrides)
            arms.append((seed, arm, spec))
    print(run_sweep([spec for _, _, spec in arms]), flush=True)
    rows: list[dict[str, Any]] = []
    for seed, base in zip(seeds, bases):
        row = {"seed": seed, "base": test_dice(base.folder)}
        for s, arm, spec in arms:
            if s == seed and spec.finished:
                row[arm] = test_dice(spec.folder)
                row[f"{arm}_labeled"] = json.loads((spec.folder / "results.json").read_text())["counts"]["labeled"]
        rows.append(row)
    done = [r for r in rows if "suggest" in r and "random" in r]
    summary = {arm: mean_ci([r[arm] for r in done]) for arm in ("base", "suggest", "random")} if done else {}
    if done:
        summary["suggest_minus_random"] = mean_ci([r["suggest"] - r["random"] for r in done])
    result = {
        "command": "python benchmarks/suggest_experiment.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("quick",)),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "dataset": "ph2-full",
        "method": args.method,
        "by": args.by,
        "added_labels": args.count,
        "protocol": "honest: checkpoint and threshold chosen on validation; test Dice per image (%)",
        "seeds": rows,
        "summary": {k: {"mean": m, "ci90": h, "n": len(done)} for k, (m, h) in summary.items()},
        "wall_seconds_this_invocation": time.time() - start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table(rows, result["summary"], args))
    for r in rows:
        print(r)
    for k, v in result["summary"].items():
        print(f"{k}: {v['mean']:.2f} +- {v['ci90']:.2f} (n={v['n']})")


if __name__ == "__main__":
    main()
