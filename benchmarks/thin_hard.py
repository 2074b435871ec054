"""Is the thin-structure generator hard enough to show the collapse a real folder showed?

On retinal fundus photographs (20 training images, 20 % labels, vessels 6-12 % of the pixels)
the quick profile's method as it was before the screening drifted its pseudo-labels to 0.6 %
foreground against 8.6 % in the masks, and scored below supervised. The generator at its
default contrast did not reproduce that. This benchmark makes the generator fainter and
noisier step by step (``make-dataset thin --contrast C --noise N``) and trains, at each step,
supervised, the method's previous quick settings (``old``, as benchmarks/screening.py spells
them) and the current default, with ``profile=quick``. It records, per run, the last
co-training epoch's pseudo-label foreground share against the labeled masks' share, the
collapse flags, and the validation and test Dice:

    python benchmarks/thin_hard.py --root runs/thin-hard --out benchmarks/results/thin-hard.json --threads 1

Resumable (one sweep); the hardest step runs first. ``--steps``, ``--methods`` and ``--seeds``
pick a part of the grid (CPS is a method here too), to repeat the step that shows the gap over
more seeds:

    python benchmarks/thin_hard.py --root runs/thin-hard --out benchmarks/results/thin-hard-seeds.json \
        --steps 0.5 --methods supervised cps default --seeds 0 1 2 --threads 1
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image
from run import matmul_gflops
from screening import OLD, _settings

from superdiffusion.config import resolve
from superdiffusion.data.synthetic import write_thin_structures
from superdiffusion.experiments.sweep import RunSpec, run_sweep

SIZE = 128  # generated at 128x128 and trained at that size: 1-3 px vessels, no resizing
COUNT, TEST = 40, 20  # 20 training images, as the real folder
STEPS = [(0.3, 0.04), (0.5, 0.03), (1.0, 0.02)]  # (contrast, noise), hardest first; (1, 0.02) is the default
METHODS = {
    "supervised": ["method=supervised"],
    "old": ["method=superdiffusion", *_settings(OLD)],
    "default": ["method=superdiffusion"],
    "cps": ["method=cps"],
    # candidates for a thin-structure guard, each one setting off the default: lambda ramped in as
    # CPS's is (the teacher is poor early), and the student's targets from round 0 alone (the
    # rounds' reconstructions may blur 1-3 px structures out of the mean)
    "default-sigmoid": ["method=superdiffusion", "method.ramp=sigmoid"],
    "default-round0": ["method=superdiffusion", "method.pseudo_labels=round0"],
}


def dataset(root: Path, contrast: float, noise: float) -> Path:
    folder = root / "data" / f"c{contrast:g}-n{noise:g}"
    if not (folder / "split.csv").exists():
        write_thin_structures(folder, COUNT, SIZE, seed=0, test_count=TEST, contrast=contrast, noise=noise)
    return folder


def specs(root: Path, threads: int, steps=None, methods=("supervised", "old", "default"), seeds=(0,)) -> list[RunSpec]:
    out = []
    for contrast, noise in STEPS:
        if steps and contrast not in steps:
            continue
        data = dataset(root, contrast, noise)
        for seed in seeds:
            for name in methods:
                overrides = [
                    "profile=quick",
                    f"data.root={data}",
                    f"data.size=[{SIZE}, {SIZE}]",
                    "data.plan=false",
                    "data.labeled_percent=20",
                    f"train.seed={seed}",
                    f"train.threads={threads}",
                    *METHODS[name],
                ]
                resolve(overrides)
                out.append(RunSpec(overrides, root / data.name / (name if seed == 0 else f"{name}-s{seed}")))
    return out


def record(spec: RunSpec) -> dict:
    results = json.loads((spec.folder / "results.json").read_text())
    with open(spec.folder / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    pseudo = [float(r["pseudo_fg"]) for r in rows if r.get("pseudo_fg")]
    splits = json.loads((spec.folder / "splits.json").read_text())
    data = Path(next(o.split("=", 1)[1] for o in spec.overrides if o.startswith("data.root=")))
    labeled = [np.asarray(Image.open(data / "masks" / f"{i}.png")) > 0 for i in splits["labeled"]]
    seed = int(next(o.split("=", 1)[1] for o in spec.overrides if o.startswith("train.seed=")))
    return {
        "data": data.name,
        "method": spec.folder.name.removesuffix(f"-s{seed}"),
        "seed": seed,
        "pseudo_fg_last": pseudo[-1] if pseudo else None,
        "labeled_fg": float(np.mean([m.mean() for m in labeled])),
        "flags": results["health"]["flags"],
        "val_dice": max(float(r["val_dice_per_image"]) for r in rows if r.get("val_dice_per_image")),
        "test_dice": results["test"]["resized"]["dice_per_image"],
        "threshold": results["selection"]["threshold"],
        "pretrain": results.get("pretrain"),
        "updates": results["updates"],
        "train_minutes": round(results["train_seconds"] / 60, 1),
    }


def key(spec: RunSpec) -> tuple[str, str, int]:
    data = Path(next(o.split("=", 1)[1] for o in spec.overrides if o.startswith("data.root=")))
    seed = int(next(o.split("=", 1)[1] for o in spec.overrides if o.startswith("train.seed=")))
    return data.name, spec.folder.name.removesuffix(f"-s{seed}"), seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("runs/thin-hard"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report-only", action="store_true", help="tabulate the finished runs; train nothing")
    parser.add_argument("--steps", type=float, nargs="+", help="contrasts to run (default: every step)")
    parser.add_argument("--methods", nargs="+", default=["supervised", "old", "default"], choices=sorted(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    start = time.perf_counter()
    todo = specs(args.root, args.threads, args.steps, args.methods, args.seeds)
    # runs a previous invocation finished are carried over from the result file (run folders
    # live under an ignored runs/ and do not survive a fresh checkout); the file is rewritten
    # after every run, so a session that ends mid-grid keeps what it finished
    previous = json.loads(args.out.read_text())["runs"] if args.out.exists() else []
    carried = {(r["data"], r["method"], r.get("seed", 0)): r for r in previous}

    def finished() -> list[dict]:  # every run of the file, those of this invocation's part read afresh
        runs = dict(carried)
        runs.update({key(s): record(s) for s in todo if s.finished})
        order = {(contrast, m): k for k, (contrast, m) in enumerate((c, m) for c, _ in STEPS for m in METHODS)}
        return sorted(runs.values(), key=lambda r: (order.get((float(r["data"].split("-")[0][1:]), r["method"]), 99),
                                                    r.get("seed", 0)))  # fmt: skip

    def write() -> None:
        runs = finished()
        table = ["| data (contrast, noise) | method | seed | pseudo-label fg, last epoch | labeled masks' fg | flags | val Dice | test Dice |",
                 "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in runs:
            pseudo = f"{100 * r['pseudo_fg_last']:.1f} %" if r["pseudo_fg_last"] is not None else "-"
            table.append(
                f"| {r['data']} | {r['method']} | {r.get('seed', 0)} | {pseudo} | {100 * r['labeled_fg']:.1f} % | "
                f"{', '.join(r['flags']) or '-'} | {100 * r['val_dice']:.2f} | {100 * r['test_dice']:.2f} |"
            )
        means = {}
        for r in runs:
            means.setdefault((r["data"], r["method"]), []).append(r)
        table += [
            "",
            "| data (contrast, noise) | method | seeds | mean val Dice | mean test Dice |",
            "|---|---|---|---|---|",
        ]
        for (data, method), group in means.items():
            if len(group) > 1:
                table.append(
                    f"| {data} | {method} | {', '.join(str(r.get('seed', 0)) for r in group)} | "
                    f"{100 * np.mean([r['val_dice'] for r in group]):.2f} | "
                    f"{100 * np.mean([r['test_dice'] for r in group]):.2f} |"
                )
        part = "".join(
            f" --{name} {' '.join(map(str, value))}"
            for name, value in (("steps", args.steps), ("methods", args.methods), ("seeds", args.seeds))
            if value and value != parser.get_default(name)
        )
        result = {
            "command": f"python benchmarks/thin_hard.py --root {args.root} --out {args.out} --threads {args.threads}{part}",
            "machine": f"{platform.machine()}, {platform.system()}, torch threads per run {args.threads}",
            "matmul_gflops_fp32": gflops,
            "size": SIZE,
            "steps": STEPS,
            "planned_runs": len(todo),
            "finished_runs": len(runs),
            "wall_seconds_this_invocation": round(time.perf_counter() - start, 1),
            "runs": runs,
            "markdown": "\n".join(table),
        }
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(result["markdown"])

    gflops = matmul_gflops()
    if not args.report_only:
        for spec in todo:
            if not spec.finished and key(spec) not in carried:
                run_sweep([spec], jobs=1)
                write()
    write()


if __name__ == "__main__":
    main()
