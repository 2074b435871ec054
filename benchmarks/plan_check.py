"""Does the plan help a user's own folder? Thin structures at 512x512 (the seeded generator of
`superdiffusion make-dataset thin`), trained as a new user would, `train data.root=FOLDER`:
once with the plan (native resolution on patches, as it chooses for 1-3 px structures), once at
the fixed 128x128 of the defaults before the plan (`data.size=[128, 128]`, everything else
planned alike). Test Dice at the images' own resolution, supervised and CPS, the cpu profile's
default length (1,000 updates), seeds as given. One resumable sweep:

    python benchmarks/plan_check.py --root runs/plan-check --out benchmarks/results/plan-check.json --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from run import matmul_gflops

from superdiffusion.config import load_yaml
from superdiffusion.data.synthetic import write_thin_structures
from superdiffusion.experiments.report import mean_ci
from superdiffusion.experiments.sweep import RunSpec, run_sweep
from superdiffusion.plan import plan_for

SIZE = 512
COUNT, TEST = 40, 20  # 20 training images (as the fundus folder that showed the problem), 20 test
VARIANTS = {"plan": [], "fixed128": ["data.size=[128, 128]"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("runs/plan-check"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--methods", default="supervised,cps")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--percent", type=float, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="4 updates a run: checks the path only")
    args = parser.parse_args()
    data = args.root / "data"
    if not (data / "split.csv").exists():
        write_thin_structures(data, COUNT, SIZE, seed=0, test_count=TEST)
    plan = plan_for(data)
    specs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for method in args.methods.split(","):
            for variant, settings in VARIANTS.items():
                overrides = [
                    f"data.root={data}",
                    f"method={method}",
                    f"data.labeled_percent={args.percent:g}",
                    f"train.seed={seed}",
                    f"train.threads={args.threads}",
                    *settings,
                ]
                if args.quick:
                    overrides += ["train.epochs=2", "train.steps_per_epoch=2", "train.lr_step=3"]
                specs.append(RunSpec(overrides, args.root / method / f"p{args.percent:g}-s{seed}-{variant}"))
    start = time.perf_counter()
    counts = run_sweep(specs, jobs=1)
    runs = []
    for spec in specs:
        if not spec.finished:
            continue
        result = json.loads((spec.folder / "results.json").read_text())
        native = result["test"].get("original", result["test"]["resized"])
        runs.append(
            {
                "method": result["method"],
                "variant": spec.folder.name.rsplit("-", 1)[1],
                "seed": result["seed"],
                "data_size": load_yaml(spec.folder / "config.yaml")["data"]["size"],  # as trained
                "native_dice": native["dice_per_image"],
                "native_jaccard": native["jaccard_per_image"],
                "updates": result.get("updates"),
                "train_minutes": result["train_seconds"] / 60,
                "flags": result.get("health", {}).get("flags", []),
            }
        )
    table = []
    for method in args.methods.split(","):
        for variant in VARIANTS:
            found = [r for r in runs if r["method"] == method and r["variant"] == variant]
            if found:
                dice = mean_ci([100 * r["native_dice"] for r in found])
                table.append({"method": method, "variant": variant, "seeds": len(found), "native_dice": dice,
                              "minutes": sum(r["train_minutes"] for r in found) / len(found)})  # fmt: skip
    result = {
        "benchmark": "plan-check",
        "command": f"python benchmarks/plan_check.py --methods {args.methods} --seeds {args.seeds} "
        f"--percent {args.percent:g} --threads {args.threads}" + (" --quick" if args.quick else ""),
        "machine": platform.platform(),
        "matmul_gflops_fp32": matmul_gflops(),
        "data": {"generator": "make-dataset thin", "size": SIZE, "count": COUNT, "test": TEST, "seed": 0},
        "plan": plan.record(),
        "counts": counts,
        "wall_seconds_this_invocation": time.perf_counter() - start,
        "table": table,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for row in table:
        print(f"{row['method']:12s} {row['variant']:9s} native Dice {row['native_dice'][0]:.2f} "
              f"({row['seeds']} seed(s), {row['minutes']:.1f} min/run)")  # fmt: skip


if __name__ == "__main__":
    main()
