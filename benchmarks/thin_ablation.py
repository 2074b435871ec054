"""Thin-structure ablation: why the paper's method can collapse on 1-3 px structures where
CPS does well, one factor at a time (issue "thin-structure collapse").

Data: the seeded generator of `superdiffusion make-dataset thin` (48 images, 24 train / 24
test, 20 % of the training images labeled). Every run: honest protocol, same schedule; each
variant changes one setting of the paper's method (lambda_max = 5, teacher pretraining, R = 2,
pure-noise mask input, cross-entropy terms, no confidence threshold). One resumable sweep,
then a table (mean +- 90 % interval over seeds) and the per-run collapse flags in JSON:

    python benchmarks/thin_ablation.py --root runs/thin --out benchmarks/results/thin-ablation.json

The candidate defaults are then checked against the paper's settings, CPS and supervised on
real data with the same schedule (PH2 and InP-Pupil at 5 % labels, read from ../shared/data):

    python benchmarks/thin_ablation.py --datasets ph2-full,pupil --root runs/default-check \
        --out benchmarks/results/default-check.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from run import matmul_gflops  # benchmarks/run.py: states how fast this machine is

from superdiffusion.config import resolve
from superdiffusion.data.synthetic import write_thin_structures
from superdiffusion.experiments.report import aggregate, collect, markdown
from superdiffusion.experiments.sweep import RunSpec, run_sweep

SIZE = 64  # generated and trained at 64x64 so that the grid fits a 2-core CPU session
SCHEDULE = [
    f"data.size=[{SIZE}, {SIZE}]",
    "train.epochs=15",
    "train.steps_per_epoch=20",
    "train.lr_step=11",
]  # 300 updates, lr x0.1 after 220
PAPER = [
    "method=superdiffusion",
    "method.lambda_max=5",
    "method.rounds=2",
    "method.pretrain_epochs=3",
    "method.mask_noise=paper",
]
VARIANTS = {
    "paper": PAPER,
    "lambda1": PAPER + ["method.lambda_max=1"],
    "lambda0.1": PAPER + ["method.lambda_max=0.1"],
    "nopretrain": PAPER + ["method.pretrain_epochs=0"],
    "rounds0": PAPER + ["method.rounds=0"],
    "zeronoise": PAPER + ["method.mask_noise=zero"],
    "cedice": PAPER + ["method.supervised_loss=ce_dice", "method.pseudo_loss=ce_dice"],
    "confidence0.9": PAPER + ["method.pseudo_confidence=0.9"],
    "cps": ["method=cps"],
    "supervised": ["method=supervised"],
}

# the check on real data: the paper's settings, the candidate defaults and the two baselines
CHECK_VARIANTS = ["paper", "zeronoise", "lambda0.1", "cps", "supervised"]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL = {"ph2-full": SHARED / "PH2", "pupil": SHARED / "InP-Pupil"}
REAL_PERCENT = 5


def specs_for(root: Path, dataset: str, data: Path, seeds: list[int], threads: int) -> list[RunSpec]:
    if dataset == "thin":
        base, names, percent = [f"data.root={data}", "data.name=thin"], list(VARIANTS), 20
    else:
        base, names, percent = [f"dataset={dataset}", f"data.root={data}"], CHECK_VARIANTS, REAL_PERCENT
    specs = []
    for seed in seeds:
        for name in names:
            # later overrides win, so a variant's lambda_max replaces the paper's
            full = [*base, *SCHEDULE, f"data.labeled_percent={percent}", *VARIANTS[name], f"train.seed={seed}"]
            full.append(f"train.threads={threads}")
            cfg = resolve(full)  # checks every setting before anything runs
            folder = root / cfg.data.name / cfg.method.name / f"p{percent}-s{seed}-{name}"
            specs.append(RunSpec(full, folder))
    return specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("runs/thin"))
    parser.add_argument("--datasets", default="thin", help="comma-separated: thin, ph2-full, pupil")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--report-only", action="store_true", help="tabulate the finished runs; train nothing")
    args = parser.parse_args()
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    for name in datasets:
        if name != "thin" and name not in REAL:
            parser.error(f"--datasets: unknown dataset {name!r}; choose among thin, {', '.join(REAL)}")
    specs = []
    for name in datasets:
        if name == "thin":
            data = args.root / "data"
            if not (data / "split.csv").exists():
                write_thin_structures(data, count=48, size=SIZE, seed=0)
        else:
            data = REAL[name]
            if not (data / "split.csv").exists():
                parser.error(f"--datasets {name}: {data} has no split.csv (the converted dataset is not there)")
        specs += specs_for(args.root, name, data.resolve(), list(range(args.seeds)), args.threads)
    gflops = matmul_gflops()
    start = time.perf_counter()
    counts = (
        {"finished_before": sum(s.finished for s in specs)} if args.report_only else run_sweep(specs, jobs=args.jobs)
    )
    wall = time.perf_counter() - start
    rows = collect([args.root / name for name in datasets])
    table = aggregate(rows)
    runs = [
        {
            "folder": r["folder"],
            "variant": r["variant"],
            "seed": r["seed"],
            "dice": r["test"]["resized"]["dice_per_image"],
            "threshold": r["selection"]["threshold"],
            "flags": r.get("health", {}).get("flags"),
        }
        for r in rows
    ]
    result = {
        "command": "python benchmarks/thin_ablation.py --datasets " + ",".join(datasets),
        "machine": platform.platform(),
        "matmul_gflops_fp32": gflops,
        "schedule": SCHEDULE,
        "variants": VARIANTS,
        "labeled_percent": {name: 20 if name == "thin" else REAL_PERCENT for name in datasets},
        "counts": counts,
        "wall_seconds_this_invocation": wall,
        "table": table,
        "runs": runs,
        "markdown": markdown(table),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(result["markdown"])
    print(f"{counts}; wall {wall:.0f}s")


if __name__ == "__main__":
    main()
