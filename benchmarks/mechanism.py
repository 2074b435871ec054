"""What the teacher teaches, measured directly (issue 42): every run of this grid scores, at each
evaluated epoch, the student's targets and its prediction (and the paper's teacher) against the
masks the label regime hides (``eval.hidden_labels``), and records the intensity-prior control
(Otsu's threshold, polarity read from the labeled images) beside the teacher's zero-label score.

Grid (one code state, seeds 0-5, 5 % labels, the evidence grid's datasets, split and 96x96):
PH2: the default, pretraining off, R = 0, the intensity-prior control (``method.teacher=otsu``:
the student learns Otsu's classes instead of the diffusion teacher's) and CPS; InP-Pupil: the
default, the control and CPS. Primary
outcome: the hidden-label Dice of the student's targets and of its prediction, averaged over the
last quarter of the evaluated epochs; secondary: honest test Dice. For each variant minus the
default, paired by seed: the mean, its 90 % interval, the standard deviation of the
differences and the smallest effect the seeds could detect (80 % power, two-sided 10 %).

    python benchmarks/mechanism.py --root runs/mechanism --out benchmarks/results/mechanism.json --threads 1
    python benchmarks/mechanism.py --root runs/mechanism --out benchmarks/results/mechanism.json --report-only

Resumable: finished runs are never redone, an interrupted one resumes from its checkpoint, and
the JSON is written from whatever has finished. A run trained at another code state than the
grid's first is marked in the JSON (``code`` per run) and left out of the paired tables.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
from pathlib import Path
from typing import Any

import evidence  # benchmarks/evidence.py: the grid's datasets, split and records
from scipy import stats

from superdiffusion.config import resolve
from superdiffusion.experiments.sweep import RunSpec, run_sweep

SEEDS = [0, 1, 2, 3, 4, 5]
PLAN = [  # (dataset, method, variant), most important first
    ("ph2-full", "superdiffusion", ""),
    ("ph2-full", "superdiffusion", "otsu"),
    ("ph2-full", "cps", ""),
    ("pupil", "superdiffusion", ""),
    ("pupil", "superdiffusion", "otsu"),
    ("pupil", "cps", ""),
    ("ph2-full", "superdiffusion", "nopretrain"),
    ("ph2-full", "superdiffusion", "rounds0"),
]
VARIANTS = {
    "nopretrain": ["method.pretrain_epochs=0"],
    "rounds0": ["method.rounds=0"],
    "otsu": ["method.teacher=otsu", "method.rounds=0", "method.pretrain_epochs=0"],  # the intensity-prior control
}
QUICK = ["train.epochs=2", "train.steps_per_epoch=2", "train.lr_step=3", "method.pretrain_epochs=1"]


def build_specs(root: Path, size: int, threads: int, quick: bool = False) -> list[RunSpec]:
    specs = []
    for seed in SEEDS[:1] if quick else SEEDS:  # seed by seed: paired comparisons complete early
        for dataset, method, variant in PLAN[:2] if quick else PLAN:
            overrides = [
                f"dataset={dataset}",
                f"data.root={evidence.DATASETS[dataset]}",
                f"data.size=[{size}, {size}]",
                f"method={method}",
                "data.labeled_percent=5",
                f"train.seed={seed}",
                f"train.threads={threads}",
                "eval.hidden_labels=true",
                *evidence.GRID_SPLIT,
                *VARIANTS.get(variant, []),
            ]
            if quick:
                own = method == "superdiffusion" and variant != "otsu"
                overrides += [o for o in QUICK if own or "pretrain" not in o]
            resolve(overrides)  # every setting checked before anything runs
            specs.append(RunSpec(overrides, evidence.folder_for(root, dataset, method, 5, seed, variant)))
    return specs


def last_quarter(rows: list[dict[str, Any]], key: str) -> float | None:
    """The mean of ``key`` over the last quarter of the evaluated co-training epochs."""
    values = [r[key] for r in rows if r.get("phase") == "train" and isinstance(r.get(key), float)]
    if not values:
        return None
    tail = values[-max(1, math.ceil(len(values) / 4)) :]
    return sum(tail) / len(tail)


def record(spec: RunSpec) -> dict[str, Any]:
    base = evidence.run_record(spec)
    result = json.loads((spec.folder / "results.json").read_text())
    rows = evidence.history(spec.folder)
    hidden = {
        who: last_quarter(rows, f"hidden_{who}_dice") for who in ("targets", "student", "teacher")
    } | {"targets_fg": last_quarter(rows, "hidden_targets_fg"), "true_fg": last_quarter(rows, "hidden_true_fg")}
    return base | {
        "code": result.get("code"),
        "teacher_zero_label": result.get("pretrain"),
        "intensity_prior": result.get("intensity_prior"),
        "hidden_last_quarter": hidden,
    }


def detectable(sd: float, n: int, alpha: float = 0.10, power: float = 0.80) -> float:
    """The smallest mean paired difference a two-sided t-test at ``alpha`` detects with ``power``."""
    return (stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)) * sd / math.sqrt(n)


def paired(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each variant minus the default of its dataset, paired by seed, for each outcome."""
    outcomes = {
        "hidden targets Dice": lambda r: r["hidden_last_quarter"]["targets"],
        "hidden student Dice": lambda r: r["hidden_last_quarter"]["student"],
        "test Dice": lambda r: r["honest"]["dice"],
    }
    by = {(r["dataset"], r["method"], r["variant"], r["seed"]): r for r in records}
    rows = []
    for dataset, method, variant in PLAN:
        if (method, variant) == ("superdiffusion", ""):
            continue
        for outcome, value in outcomes.items():
            diffs = []
            for seed in SEEDS:
                a, b = by.get((dataset, method, variant, seed)), by.get((dataset, "superdiffusion", "", seed))
                if a and b and value(a) is not None and value(b) is not None:
                    diffs.append(100 * (value(a) - value(b)))
            if len(diffs) < 2:
                continue
            mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
            half = stats.t.ppf(0.95, len(diffs) - 1) * sd / math.sqrt(len(diffs))
            rows.append({
                "dataset": dataset, "comparison": f"{method}{' (' + variant + ')' if variant else ''} - default",
                "outcome": outcome, "seeds": len(diffs), "per_seed": [round(d, 2) for d in diffs],
                "mean": round(mean, 2), "ci90": round(half, 2), "sd": round(sd, 2),
                "detectable_80": round(detectable(sd, len(diffs)), 2),
            })  # fmt: skip
    return rows


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def markdown(result: dict[str, Any]) -> str:
    """The runs and the paired differences as Markdown (``--out`` with ``.md``)."""
    lines = [
        f"# Mechanism grid: {result['finished']} of {result['planned']} runs finished "
        f"(package tree {result['code_state']})",
        "",
        "Per run: the teacher's zero-label Dice / AUROC on the labeled images (`pretrain`), the "
        "intensity-prior control's on the same images, the hidden-label Dice of the student's targets "
        "and of its prediction (mean over the last quarter of the evaluated epochs), honest test Dice, "
        "train minutes.",
        "",
        "| dataset | run | seed | teacher | Otsu control | hidden targets | hidden student | test | minutes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        teacher, prior = r.get("teacher_zero_label") or {}, r.get("intensity_prior") or {}
        hidden = r["hidden_last_quarter"]
        run = r["method"] + (f" ({r['variant']})" if r["variant"] else "")
        lines.append(
            f"| {r['dataset']} | {run}{'' if r['same_code_state'] else ' *'} | {r['seed']} | "
            f"{_pct(teacher.get('dice'))} / {teacher.get('auroc', float('nan')):.3f} | "
            f"{_pct(prior.get('dice'))} / {prior.get('auroc', float('nan')):.3f} | {_pct(hidden['targets'])} | "
            f"{_pct(hidden['student'])} | {_pct(r['honest']['dice'])} | {r['train_minutes']:.1f} |"
        )
    lines += ["", "\\* another code state: left out of the paired table.", ""]
    if result["paired"]:
        lines += [
            "| dataset | comparison | outcome | seeds | per seed | mean ± 90 % | SD | detectable (80 %) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in result["paired"]:
            lines.append(
                f"| {p['dataset']} | {p['comparison']} | {p['outcome']} | {p['seeds']} | "
                f"{', '.join(f'{d:+.2f}' for d in p['per_seed'])} | {p['mean']:+.2f} ± {p['ci90']:.2f} | "
                f"{p['sd']:.2f} | {p['detectable_80']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="runs/mechanism")
    p.add_argument("--out", default="benchmarks/results/mechanism.json")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--quick", action="store_true", help="two tiny runs: checks the path only")
    args = p.parse_args()
    specs = build_specs(Path(args.root), args.size, args.threads, args.quick)
    out = Path(args.out)

    def report() -> None:
        records = [record(s) for s in specs if s.finished]
        codes = [r["code"] for r in records if r["code"]]
        first = codes[0].get("tree") if codes else None  # the package's files: docs-only commits share it
        for r in records:
            tree = (r["code"] or {}).get("tree")
            r["same_code_state"] = bool(tree) and tree == first and not r["code"]["modified"]
        comparable = [r for r in records if r["same_code_state"]]
        result = {
            "machine": {"platform": platform.platform(), "processor": platform.processor()},
            "plan": [list(x) for x in PLAN],
            "seeds": SEEDS,
            "finished": len(records),
            "planned": len(specs),
            "code_state": first,
            "runs": records,
            "paired": paired(comparable),
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(markdown(result))
        print(f"{len(records)} of {len(specs)} runs finished ({len(comparable)} at one clean code state) -> {out}")

    if not args.report_only:
        for spec in specs:  # one at a time, the JSON rewritten after each
            run_sweep([spec])
            report()
    report()


if __name__ == "__main__":
    main()
