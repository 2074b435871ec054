"""Screening of the options that let the paper's mechanism act, to choose the default profile's
settings on validation only (test is read back but never used to choose).

Short runs (the ``quick`` length, 64x64, 5 % labels, seeds 0-2) on PH2 and InP-Pupil, one
per combination below, beside CPS and supervised at the same length. For each run it records
the pretrained teacher's zero-label Dice and AUROC against the labeled images, the best
validation Dice (the selection score) and the test Dice; and, by cross-validation inside the
validation split, whether a threshold chosen there beats a fixed 0.5.

One resumable command (finished runs are never redone); the tables come from what has finished:

    python benchmarks/screening.py --root runs/screening --out benchmarks/results/screening.json --threads 1
    python benchmarks/screening.py --root runs/screening --out benchmarks/results/screening.json --report-only
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from superdiffusion import api
from superdiffusion.config import resolve
from superdiffusion.data import build_data
from superdiffusion.evaluation import foreground_probability, sweep, thresholds
from superdiffusion.experiments.report import mean_ci
from superdiffusion.experiments.sweep import RunSpec, run_sweep
from superdiffusion.protocol import split_probabilities, uses_validation

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = {"ph2-full": SHARED / "PH2", "pupil": SHARED / "InP-Pupil"}
SEEDS = [0, 1, 2]
# the quick profile's method before this screening (its settings are the profile's now): the
# class defaults (noisy image, noise-space loss, round-0 targets, CE, a fresh teacher) with
# lambda ramped linearly to 0.1; written out, so that the rows mean what they meant
OLD = {
    "method.pretrain_image_input": "noisy",
    "method.recon_space": "noise",
    "method.teacher_lr_factor": "1",
    "method.carry_optimizer": "false",
    "method.lambda_max": "0.1",
    "method.ramp": "linear",
    "method.pseudo_labels": "round0",
    "method.rounds_t_max": "0",
    "method.supervised_loss": "ce",
}
EQ67 = {"method.pretrain_image_input": "noise", "method.recon_space": "image"}
KEEP = {"method.teacher_lr_factor": "0.1", "method.carry_optimizer": "true", "method.ramp": "constant"}
ROUNDS = {"method.pseudo_labels": "mean", "method.rounds_t_max": "300"}
CEDICE = {"method.supervised_loss": "ce_dice"}


def _settings(*layers: dict[str, str]) -> list[str]:
    merged: dict[str, str] = {}
    for layer in layers:
        merged.update(layer)
    return [f"{k}={v}" for k, v in merged.items()]


# name -> (method, settings); the method's combinations build on each other
COMBOS: dict[str, tuple[str, list[str]]] = {
    "supervised": ("supervised", []),
    "cps": ("cps", []),
    "old": ("superdiffusion", _settings(OLD)),
    "eq67": ("superdiffusion", _settings(OLD, EQ67)),
    "eq67-keep": ("superdiffusion", _settings(OLD, EQ67, KEEP)),
    "eq67-keep-rounds": ("superdiffusion", _settings(OLD, EQ67, KEEP, ROUNDS)),
    "eq67-keep-rounds-cedice": ("superdiffusion", _settings(OLD, EQ67, KEEP, ROUNDS, CEDICE)),
}
FOLDS = 4  # cross-validation of the threshold inside the validation split


def build_specs(root: Path, size: int, threads: int) -> list[RunSpec]:
    specs = []
    for seed in SEEDS:  # seed by seed: every combination of a seed finishes before the next seed
        for dataset in DATASETS:
            for combo, (method, settings) in COMBOS.items():
                overrides = [
                    f"dataset={dataset}",
                    f"data.root={DATASETS[dataset]}",
                    f"data.size=[{size}, {size}]",
                    "profile=quick",
                    f"method={method}",
                    "data.labeled_percent=5",
                    "data.group_column=null",
                    f"train.seed={seed}",
                    f"train.threads={threads}",
                    *settings,
                ]
                resolve(overrides)  # checks every setting before anything runs
                specs.append(RunSpec(overrides, root / dataset / combo / f"s{seed}"))
    return specs


def threshold_cv(folder: Path) -> dict[str, float]:
    """Dice per image on held-out folds of the validation split: with the threshold that
    maximises it on the other folds, and with a fixed 0.5."""
    cfg, method, state = api.load_run(folder)
    data = build_data(cfg.data, cfg.train.seed, validation=uses_validation(cfg))
    probs, masks = split_probabilities(method, data.val, cfg, torch.device("cpu"))
    fg = foreground_probability(probs)
    grid = thresholds(cfg.eval.threshold_start, cfg.eval.threshold_stop, cfg.eval.threshold_step)
    n = len(fg)
    folds = [list(range(i, n, FOLDS)) for i in range(FOLDS)]
    tuned, fixed = [], []
    for held in folds:
        rest = [i for i in range(n) if i not in held]
        rows = sweep(fg[rest], masks[rest], grid)
        best = max(rows, key=lambda r: r["dice_per_image"])["threshold"]
        tuned += [sweep(fg[[i]], masks[[i]], [best])[0]["dice_per_image"] for i in held]
        fixed += [sweep(fg[[i]], masks[[i]], [0.5])[0]["dice_per_image"] for i in held]
    return {"tuned": sum(tuned) / n, "fixed_0.5": sum(fixed) / n, "val_images": n}


def run_record(spec: RunSpec, combo: str) -> dict[str, Any]:
    result = json.loads((spec.folder / "results.json").read_text())
    with open(spec.folder / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    val = [float(r["val_dice_per_image"]) for r in rows if r.get("val_dice_per_image")]
    record = {
        "dataset": result["dataset"],
        "combo": combo,
        "seed": result["seed"],
        "pretrain": result.get("pretrain"),
        "updates": result.get("updates"),
        "val_dice": max(val),
        "test_dice": result["test"]["resized"]["dice_per_image"],
        "threshold": result["selection"]["threshold"],
        "train_minutes": result["train_seconds"] / 60,
        "flags": result.get("health", {}).get("flags", []),
    }
    cv_path = spec.folder / "threshold-cv.json"
    if not cv_path.exists():
        cv_path.write_text(json.dumps(threshold_cv(spec.folder), indent=1))
    record["threshold_cv"] = json.loads(cv_path.read_text())
    return record


def ci(values: list[float]) -> dict[str, float]:
    mean, half = mean_ci(values)
    return {"mean": mean, "half_width": half}


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for dataset in DATASETS:
        for combo in COMBOS:
            runs = [r for r in records if r["dataset"] == dataset and r["combo"] == combo]
            if not runs:
                continue
            row = {"dataset": dataset, "combo": combo, "seeds": sorted(r["seed"] for r in runs)}
            for key in ("val_dice", "test_dice"):
                row[key] = ci([100 * r[key] for r in runs])
            pre = [r["pretrain"] for r in runs if r["pretrain"]]
            if pre:
                row["teacher_zero_label_dice"] = ci([100 * p["dice"] for p in pre])
                row["teacher_zero_label_auroc"] = ci([p["auroc"] for p in pre])
                row["swapped"] = sum(p["swapped"] for p in pre)
            row["threshold_cv_tuned_minus_fixed"] = ci(
                [100 * (r["threshold_cv"]["tuned"] - r["threshold_cv"]["fixed_0.5"]) for r in runs]
            )
            rows.append(row)
    return rows


def choose(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The method's combination with the best validation Dice averaged over both datasets
    (only combinations complete on both, on the same seeds)."""
    scores = {}
    for combo, (method, _) in COMBOS.items():
        if method != "superdiffusion":
            continue
        mine = [r for r in rows if r["combo"] == combo]
        if len(mine) == len(DATASETS) and all(r["seeds"] == SEEDS for r in mine):
            scores[combo] = sum(r["val_dice"]["mean"] for r in mine) / len(mine)
    if not scores:
        return {}
    best = max(scores, key=scores.get)
    return {"chosen": best, "by": "mean validation Dice over PH2 and Pupil, seeds 0-2", "val_dice": scores}


def markdown(rows: list[dict[str, Any]], choice: dict[str, Any]) -> str:
    fmt = lambda s: f"{s['mean']:.2f} ± {s['half_width']:.2f}" if s else ""  # noqa: E731
    lines = [
        "| dataset | combination | seeds | teacher zero-label Dice | AUROC | swapped | val Dice | test Dice |"
        " CV: tuned - 0.5 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['combo']} | {len(r['seeds'])} | {fmt(r.get('teacher_zero_label_dice'))} | "
            f"{fmt(r.get('teacher_zero_label_auroc'))} | {r.get('swapped', '')} | {fmt(r['val_dice'])} | "
            f"{fmt(r['test_dice'])} | {fmt(r['threshold_cv_tuned_minus_fixed'])} |"
        )
    if choice:
        lines.append(f"\nChosen: **{choice['chosen']}** ({choice['by']}).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="runs/screening")
    parser.add_argument("--out", default="benchmarks/results/screening.json")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    root = Path(args.root)
    specs = build_specs(root, args.size, args.threads)
    combos = {spec.folder: spec.folder.parent.name for spec in specs}
    if not args.report_only:
        for spec in specs:  # one at a time, reporting after each, so an interrupted screening leaves tables
            run_sweep([spec], jobs=1)
            write(specs, combos, args)
    write(specs, combos, args)


def write(specs, combos, args) -> None:
    records = [run_record(s, combos[s.folder]) for s in specs if s.finished]
    rows = summarize(records)
    choice = choose(rows)
    torch.set_num_threads(args.threads)
    out = {
        "benchmark": "screening",
        "command": f"python benchmarks/screening.py --root {args.root} --out {args.out} --threads {args.threads}",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": torch.get_num_threads(),
        },
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        "code": subprocess.run(
            ["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "size": args.size,
        "combinations": {k: v[1] for k, v in COMBOS.items()},
        "runs": f"{len(records)} of {len(specs)}",
        "choice": choice,
        "summary": rows,
        "records": records,
    }
    Path(args.out).write_text(json.dumps(out, indent=1))
    Path(args.out).with_suffix(".md").write_text(markdown(rows, choice))


if __name__ == "__main__":
    main()
