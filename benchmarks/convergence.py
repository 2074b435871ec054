"""Convergence benchmark: validation Dice against the number of updates for `supervised`,
`cps` and the paper's method on the built-in PH2 copy at 5 % labels (seed 0, honest
protocol, constant learning rate so that the curve shows where each method levels off).
It is the measured basis of the CPU profile's length (configs/profiles/cpu.yaml).

One resumable sweep (a finished run is skipped, an interrupted one resumes), then the curves
in a JSON file and a plot:

    python benchmarks/convergence.py --root runs/convergence \
        --out benchmarks/results/convergence-ph2-p5.json --plot docs/convergence-ph2-p5.png
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import platform
import time
from pathlib import Path

from run import matmul_gflops  # benchmarks/run.py: states how fast this machine is

from superdiffusion.experiments.sweep import expand, run_sweep

STEPS_PER_EPOCH = 50
EPOCHS = {"supervised": 40, "cps": 30, "superdiffusion": 20}  # 2000 / 1500 / 1000 updates
COMMON = ["data.labeled_percent=5", "train.seed=0", f"train.steps_per_epoch={STEPS_PER_EPOCH}"]
EXTRA = {"superdiffusion": ["method.rounds=2", "method.pretrain_epochs=4"]}  # 200 pretraining updates
PLATEAU_TOLERANCE = 0.02  # levelled off: the smoothed value is within 2 Dice points of its maximum
WINDOW = 5  # trailing mean over 5 evaluations (250 updates): the 16-image validation Dice is noisy


def smoothed(values: list[float], window: int = WINDOW) -> list[float | None]:
    """Trailing moving average; None until a full window is available."""
    return [sum(values[i - window + 1 : i + 1]) / window if i >= window - 1 else None for i in range(len(values))]


def plateau(updates: list[int], dice: list[float]) -> dict[str, float]:
    """First number of updates at which the smoothed validation Dice comes within
    ``PLATEAU_TOLERANCE`` of its maximum, and that maximum."""
    smooth = smoothed(dice)
    full = [v for v in smooth if v is not None]
    if not full:
        return {"updates": None, "smoothed_dice": None, "max_smoothed_dice": None, "max_dice": max(dice)}
    top = max(full)
    first = next(i for i, v in enumerate(smooth) if v is not None and v >= top - PLATEAU_TOLERANCE)
    return {"updates": updates[first], "smoothed_dice": smooth[first], "max_smoothed_dice": top, "max_dice": max(dice)}


def curve(folder: Path) -> dict[str, list]:
    """Validation Dice per evaluation from the run's ``history.csv`` (training phase only), which
    a finished run keeps (its checkpoints go unless ``train.keep_state=true``)."""
    with open(folder / "history.csv", newline="") as handle:
        trained = [h for h in csv.DictReader(handle) if h["phase"] == "train"]
    done = itertools.accumulate(int(float(h["steps"])) for h in trained)  # updates after each epoch
    rows = [(n, h) for n, h in zip(done, trained) if h.get("val_dice_per_image")]
    return {
        "updates": [n for n, _ in rows],
        "val_dice": [float(h["val_dice_per_image"]) for _, h in rows],
        "threshold": [float(h["threshold"]) if h.get("threshold") else None for _, h in rows],
        "seconds_per_epoch": [float(h["seconds"]) for _, h in rows],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("runs/convergence"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="2 epochs of 2 updates each: checks the path only")
    parser.add_argument("--report-only", action="store_true", help="tabulate the finished runs; train nothing")
    args = parser.parse_args()
    specs = []
    for method, epochs in EPOCHS.items():
        fixed = COMMON + EXTRA.get(method, []) + [f"train.threads={args.threads}"]
        if args.quick:
            fixed += (
                ["train.steps_per_epoch=2", "method.pretrain_epochs=1"]
                if method == "superdiffusion"
                else ["train.steps_per_epoch=2"]
            )
            epochs = 2
        fixed += [f"train.epochs={epochs}", f"train.lr_step={epochs + 1}"]
        specs += expand({"method": [method]}, fixed, args.root)
    gflops = matmul_gflops()
    start = time.perf_counter()
    counts = {"finished_before": sum(s.finished for s in specs)} if args.report_only else run_sweep(specs, jobs=1)
    wall = time.perf_counter() - start
    curves = {}
    for spec in specs:
        if (spec.folder / "history.csv").exists():  # finished, or in progress (partial curve)
            method = spec.folder.parent.name
            curves[method] = curve(spec.folder) | {"command_overrides": spec.overrides, "finished": spec.finished}
            if not curves[method]["updates"]:
                del curves[method]
                continue
            curves[method]["plateau"] = plateau(curves[method]["updates"], curves[method]["val_dice"])
            if spec.finished:
                curves[method]["test"] = json.loads((spec.folder / "results.json").read_text())["test"]
    result = {
        "command": "python benchmarks/convergence.py",
        "machine": platform.platform(),
        "matmul_gflops_fp32": gflops,
        "counts": counts,
        "wall_seconds_this_invocation": wall,
        "plateau_rule": f"first evaluation whose {WINDOW}-point trailing mean is within {PLATEAU_TOLERANCE} of its maximum",
        "curves": curves,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    if args.plot and curves:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4))
        for method, c in curves.items():
            (line,) = ax.plot(c["updates"], c["val_dice"], alpha=0.35)
            smooth = smoothed(c["val_dice"])
            points = [(u, v) for u, v in zip(c["updates"], smooth) if v is not None]
            ax.plot(*zip(*points), color=line.get_color(), label=f"{method} ({WINDOW}-point mean)")
            if c["plateau"]["updates"]:
                ax.axvline(c["plateau"]["updates"], color=line.get_color(), ls=":", lw=1)
        ax.set_xlabel("updates (batch 8: 4 labeled + 4 unlabeled)")
        ax.set_ylabel("validation Dice (per image)")
        ax.set_title("Built-in PH2 128x128, 5 % labels, seed 0, constant lr")
        ax.legend()
        fig.tight_layout()
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=110)
    for method, c in curves.items():
        print(method, c["plateau"])
    print(f"{counts}; wall {wall:.0f}s")


if __name__ == "__main__":
    main()
