"""The decisive comparison: the paper's method with its mechanism restored (the ``cpu``
profile's default since benchmarks/screening.py chose it on validation) against supervised,
CPS and UAMT at 5 % labels, on PH2 and InP-Pupil, 6 seeds, at the evidence grid's schedule and
96x96; beside them the paper-literal method at the same length (lambda 5, linear ramp, R = 2,
Eq. 6/7 pretraining, round-0 pseudo-labels, CE), the new default's ablations on PH2 (pretraining
off, R = 0), and the new default at 20 % (seeds 0-2). UAMT keeps the evidence grid's seeds: its
new seeds 3-5 were the first the budget dropped (``--uamt-new-seeds`` runs them).

One resumable command, like the evidence grid (finished runs are never redone, interrupted ones
resume from their checkpoint, the tables are written from whatever has finished):

    python benchmarks/decisive.py --root runs/decisive --out benchmarks/results/decisive.json --threads 1
    python benchmarks/decisive.py --root runs/decisive --out benchmarks/results/decisive.json --report-only
    python scripts/generate_docs.py   # README.md's and docs/results.md's figures, from the JSON

Two of these commands may run side by side on one ``--root`` (each run is taken by one of them).

Nothing changed for the baselines since the evidence grid, so their runs of seeds 0-2 (and the
previous default of the method, as ``superdiffusion (previous-default)``) are read from
``results/evidence.json`` instead of being trained again; the first run of this grid retrains
one of them (supervised, PH2 5 %, seed 0) and the report states whether it reproduces.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import evidence  # benchmarks/evidence.py: the grid's run settings, records and tables
import torch
from run import matmul_gflops

from superdiffusion.config import resolve
from superdiffusion.experiments.sweep import RunSpec, run_sweep

EVIDENCE = Path(__file__).parent / "results" / "evidence.json"
BASELINES = ["supervised", "cps", "uamt"]
SEEDS = [0, 1, 2, 3, 4, 5]
REUSED_SEEDS = {0, 1, 2}  # the evidence grid's seeds
VARIANTS = {
    # the paper's settings at the grid's length: what the cpu profile changed, put back as printed
    "paper-literal": [
        "method.lambda_max=5",
        "method.ramp=linear",
        "method.teacher_lr_factor=1",
        "method.carry_optimizer=false",
        "method.pseudo_labels=round0",
        "method.rounds_t_max=0",
        "method.supervised_loss=ce",
        "method.pretrain_image_input=noise",
        "method.recon_space=image",
    ],
    "nopretrain": ["method.pretrain_epochs=0"],
    "rounds0": ["method.rounds=0"],
    # retrains one evidence-grid run: is the reuse of the baselines' seeds 0-2 sound?
    "reuse-check": [],
}
REUSE_CHECK = ("ph2-full", "supervised", 5, 0)


def plan(uamt_new_seeds: bool = False) -> list[tuple[str, str, float, int, str]]:
    """(dataset, method, percent, seed, variant), most important first: the new default on the
    seeds whose baselines already exist (a paired comparison after one run), then the new seeds
    of everything, then the paper-literal row, the ablations and 20 %. UAMT keeps its evidence
    grid's seeds: its new seeds, which the grid's budget dropped first, run with
    ``uamt_new_seeds``."""
    ph2, pupil, sd = "ph2-full", "pupil", "superdiffusion"
    order: list[tuple[str, str, float, int, str]] = [(*REUSE_CHECK, "reuse-check")]
    for seed in sorted(REUSED_SEEDS):
        order += [(d, sd, 5, seed, "") for d in (ph2, pupil)]
    for seed in [s for s in SEEDS if s not in REUSED_SEEDS]:
        order += [(d, m, 5, seed, "") for d in (ph2, pupil) for m in ["supervised", "cps", sd]]
    for seed in SEEDS:
        order += [(d, sd, 5, seed, "paper-literal") for d in (ph2, pupil)]
    for seed in SEEDS:
        order += [(ph2, sd, 5, seed, v) for v in ("nopretrain", "rounds0")]
    for seed in sorted(REUSED_SEEDS):
        order += [(d, sd, 20, seed, "") for d in (ph2, pupil)]
    for seed in [s for s in SEEDS if s not in REUSED_SEEDS and uamt_new_seeds]:  # the budget drops them first
        order += [(d, "uamt", 5, seed, "") for d in (ph2, pupil)]
    return order


def build_specs(
    root: Path, size: int, threads: int, quick: bool = False, uamt_new_seeds: bool = False
) -> list[RunSpec]:
    specs = []
    for dataset, method, percent, seed, variant in plan(uamt_new_seeds)[: 2 if quick else None]:
        overrides = [
            f"dataset={dataset}",
            f"data.root={evidence.DATASETS[dataset]}",
            f"data.size=[{size}, {size}]",
            f"method={method}",
            f"data.labeled_percent={percent}",
            f"train.seed={seed}",
            f"train.threads={threads}",
            *evidence.GRID_SPLIT,
            *VARIANTS.get(variant, []),
        ]
        if quick:
            overrides += evidence.QUICK + (["method.pretrain_epochs=1"] if method == "superdiffusion" else [])
        resolve(overrides)  # checks every setting before anything runs
        specs.append(RunSpec(overrides, evidence.folder_for(root, dataset, method, percent, seed, variant)))
    return specs


def reused_records(path: Path = EVIDENCE) -> list[dict[str, Any]]:
    """The evidence grid's runs that this grid does not retrain: the baselines at seeds 0-2, and
    the method's previous default (renamed ``previous-default``)."""
    grid = json.loads(path.read_text())
    out = []
    for r in grid["runs"]:
        if r["variant"] or r["seed"] not in REUSED_SEEDS or r["labeled_percent"] not in (5, 20):
            continue
        if r["method"] in BASELINES:
            out.append({**r, "reused": grid.get("code", "evidence grid")})
        elif r["method"] == "superdiffusion":
            out.append({**r, "variant": "previous-default", "reused": grid.get("code", "evidence grid")})
    return out


def teacher_score(folder: Path) -> dict[str, Any] | None:
    """The teacher's zero-label Dice and AUROC after pretraining (results.json ``pretrain``)."""
    result = json.loads((folder / "results.json").read_text())
    return result.get("pretrain")


def reuse_check(records: list[dict[str, Any]], reused: list[dict[str, Any]]) -> dict[str, Any] | None:
    dataset, method, percent, seed = REUSE_CHECK
    new = [r for r in records if r["variant"] == "reuse-check"]
    old = [
        r for r in reused
        if (r["dataset"], r["method"], r["labeled_percent"], r["seed"]) == (dataset, method, percent, seed)
    ]  # fmt: skip
    if not new or not old:
        return None
    a, b = new[0]["honest"]["dice"], old[0]["honest"]["dice"]
    return {"run": list(REUSE_CHECK), "retrained_dice": a, "evidence_dice": b, "difference_points": 100 * (a - b)}


def teacher_markdown(teachers: list[dict[str, Any]]) -> str:
    """The teacher's zero-label Dice and AUROC after pretraining, one row per dataset, labels and
    variant, its seeds in order: does pretraining learn a mask before any label is used?"""
    groups: dict[tuple[str, float, str], list[dict[str, Any]]] = {}
    for t in sorted(teachers, key=lambda t: (t["dataset"], t["labeled_percent"], t["method"], t["seed"])):
        groups.setdefault((t["dataset"], t["labeled_percent"], t["method"]), []).append(t)
    lines = [
        "The teacher after pretraining, before any label is used: its argmax Dice and its AUROC against the "
        "labeled training images (results.json `pretrain`), per seed; * marks a run whose channels were swapped.",
        "",
        "| dataset | labels | method | seeds | zero-label Dice (per seed) | mean Dice | AUROC (per seed) |",
        "|---|---|---|---|---|---|---|",
    ]
    for (dataset, percent, method), rows in groups.items():
        dice = [100 * r["dice"] for r in rows]
        per_seed = ", ".join(f"{d:.1f}{'*' if r.get('swapped') else ''}" for d, r in zip(dice, rows))
        auroc = ", ".join(f"{r['auroc']:.3f}" for r in rows)
        seeds = ",".join(str(r["seed"]) for r in rows)
        lines.append(
            f"| {dataset} | {percent:g} % | {method} | {seeds} | {per_seed} | {sum(dice) / len(dice):.1f} | {auroc} |"
        )
    return "\n".join(lines) + "\n"


def key(record: dict[str, Any]) -> tuple[str, str, float, int, str]:
    return (
        record["dataset"],
        record["method"],
        float(record["labeled_percent"]),
        int(record["seed"]),
        record["variant"],
    )


def carried_over(out: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The runs a previous invocation finished, read from its result file: run folders live under
    an ignored ``runs/`` and do not survive a fresh checkout, the committed JSON does. A run whose
    folder is still there is read from the folder instead."""
    if not out.exists():
        return [], None
    previous = json.loads(out.read_text())
    runs = [{**r, "carried_over": True} for r in previous.get("runs", []) if not r.get("reused")]
    return runs, previous.get("reuse_check")


ABLATIONS = ("nopretrain", "rounds0")


def ablation_pairs(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The new default minus each of its ablations, per seed, on the same split and labeled
    subset: what pretraining, and the rounds, add."""
    by_key = {(r["dataset"], r["labeled_percent"], evidence.name(r), r["seed"]): r for r in records}
    out = []
    for (dataset, percent, method, seed), r in sorted(by_key.items()):
        default = by_key.get((dataset, percent, "superdiffusion", seed))
        if r["variant"] in ABLATIONS and default is not None:
            out.append({
                "dataset": dataset, "labeled_percent": percent, "method": "superdiffusion", "reference": method,
                "seed": seed,
                "honest_dice": 100 * (default["honest"]["dice"] - r["honest"]["dice"]),
                "paper_threshold_dice": 100 * (default["paper_threshold"]["dice"] - r["paper_threshold"]["dice"]),
            })  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("runs/decisive"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--plots", type=Path, help="folder for one decisive-DATASET.png per dataset")
    parser.add_argument("--size", type=int, default=96, help="training resolution (square); the grid's is 96")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="the first two runs, 4 updates each: checks the path")
    parser.add_argument("--report-only", action="store_true", help="tabulate the finished runs; train nothing")
    parser.add_argument("--uamt-new-seeds", action="store_true", help="UAMT at seeds 3-5 too (dropped by the budget)")
    args = parser.parse_args()
    for dataset, root in evidence.DATASETS.items():
        if not (root / "split.csv").exists():
            parser.error(f"{dataset}: {root} has no split.csv (the converted dataset is not there)")
    torch.set_num_threads(args.threads)
    args.root = args.root.resolve()  # the result file names run folders by absolute path
    specs = build_specs(args.root, args.size, args.threads, args.quick, args.uamt_new_seeds)
    carried, carried_check = ([], None) if args.quick else carried_over(args.out)
    finished_here = {s.folder for s in specs if s.finished}
    carried = [r for r in carried if Path(r["folder"]) not in finished_here]
    # a run finished before (its record is in the result file) is not trained again
    done = {Path(r["folder"]) for r in carried}
    if carried_check:
        done.add(evidence.folder_for(args.root, *REUSE_CHECK, "reuse-check"))
    pending = [s for s in specs if s.folder not in done]
    print(f"{len(carried)} runs carried over from {args.out}; {len(pending)} to run")
    gflops = matmul_gflops()
    start = time.perf_counter()
    counts = (
        {"finished_before": sum(s.finished for s in specs)} if args.report_only else run_sweep(pending, jobs=args.jobs)
    )
    wall = time.perf_counter() - start
    trained = []
    for spec in specs:
        if spec.finished:
            record = evidence.run_record(spec)
            record["pretrain"] = teacher_score(spec.folder)
            trained.append(record)
    trained_keys = {key(r) for r in trained}
    trained += [r for r in carried if key(r) not in trained_keys]
    reused = reused_records()
    # the reuse check is not a run of the comparison: it only tests the reuse
    records = [r for r in trained if r["variant"] != "reuse-check"] + reused
    pairs = evidence.paired(records) + ablation_pairs(records)
    rows, diffs = evidence.summarize(records), evidence.paired_summary(pairs)
    teachers = [
        {"dataset": r["dataset"], "labeled_percent": r["labeled_percent"], "method": evidence.name(r),
         "seed": r["seed"], **r["pretrain"]}
        for r in trained if r.get("pretrain")
    ]  # fmt: skip
    result = {
        "benchmark": "decisive",
        "command": f"python benchmarks/decisive.py --size {args.size} --jobs {args.jobs} --threads {args.threads}"
        + (" --uamt-new-seeds" if args.uamt_new_seeds else ""),
        "machine": platform.platform(),
        "cpu_threads_per_run": args.threads,
        "runs_side_by_side": args.jobs,
        "matmul_gflops_fp32": gflops,
        "size": args.size,
        "planned_runs": len(specs),
        "finished_runs": len(trained),
        "reused_runs": len(reused),
        "reuse_check": reuse_check(trained, reused) or carried_check,
        "carried_over_runs": sum(bool(r.get("carried_over")) for r in trained),
        "counts": counts,
        "wall_seconds_this_invocation": wall,
        "summed_train_minutes_trained_here": sum(r["train_minutes"] for r in trained),
        "teacher_zero_label": teachers,
        "table": rows,
        "paired": diffs,
        "paired_per_seed": pairs,
        "runs": records,
        "markdown": evidence.markdown(rows, diffs, args.size) + "\n" + teacher_markdown(teachers),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(result["markdown"])
    if args.plots:
        for dataset in sorted({r["dataset"] for r in records}):
            evidence.plot(records, dataset, args.plots / f"decisive-{dataset}.png", args.size, args.threads, args.jobs)
    print(result["markdown"])
    print(f"{len(trained)}/{len(specs)} runs finished, {len(reused)} reused; {counts}; wall {wall:.0f}s")


if __name__ == "__main__":
    main()
