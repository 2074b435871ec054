"""Do the teacher's deep blocks survive pretraining? The decisive grid's method runs slowed 8x
on a CPU mid-run because the teacher's deepest blocks held subnormal floats: their weights had
decayed towards zero. This runs the pretraining phase alone (200 updates, the `cpu` default at
the grid's 96x96 and 5 % labels, PH2 and InP-Pupil, seeds 0-2), with the default weight decay
(Adam's L2 term, 5e-5, the paper's) and without it, and records per run:

- the teacher's zero-label Dice and AUROC against the labeled training images (what the
  trainer logs after pretraining);
- the norm of each encoder level's first convolution in both teacher pathways, after
  pretraining and at initialisation;
- how many stored values are subnormal (0 < |x| < 1.18e-38).

    python benchmarks/teacher_decay.py --root runs/teacher-decay --out benchmarks/results/teacher-decay.json

Resumable: the result file is rewritten after each run and finished runs are skipped.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import evidence  # benchmarks/evidence.py: the grid's datasets and split
import torch

from superdiffusion.config import resolve
from superdiffusion.data import build_data
from superdiffusion.training import Trainer

MODES = {"adam-l2-5e-5": [], "no-decay": ["train.weight_decay=0"]}
TINY = torch.finfo(torch.float32).tiny


def encoder_norms(state: dict[str, torch.Tensor]) -> dict[str, float]:
    return {
        k: round(float(v.norm()), 6)
        for k, v in state.items()
        if k.startswith("teacher_") and ".blocks." in k and ".decoder." not in k and k.endswith(".0.weight")
    }


def subnormals(state: dict[str, torch.Tensor]) -> int:
    return sum(int(((v != 0) & (v.abs() < TINY)).sum()) for v in state.values() if v.is_floating_point())


def pretrain_only(overrides: list[str], folder: Path) -> dict:
    cfg = resolve(overrides)
    data = build_data(cfg.data, cfg.train.seed)
    trainer = Trainer(cfg, data, folder)
    start_norms = encoder_norms(trainer.method.state_dict())
    trainer.folder.prepare(cfg, False, True)
    trainer.monitor.open()
    start = time.perf_counter()
    try:
        trainer.run_phase(0, trainer.phases[0])  # the pretraining phase: no label is used
    finally:
        trainer.monitor.close(trainer.progress.history)
    state = trainer.method.state_dict()
    return {
        "pretrain": trainer.progress.phase_records["pretrain"],
        "updates": trainer.progress.position["step"],
        "encoder_norm_initial": start_norms,
        "encoder_norm_pretrained": encoder_norms(state),
        "subnormal_values": subnormals(state),
        "wall_s": round(time.perf_counter() - start, 1),
    }


def table(records: list[dict]) -> str:
    lines = [
        "| dataset | weight decay | seed | zero-label Dice | AUROC | swapped | deepest block norm, mask / image (initial) | subnormal values |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(records, key=lambda r: (r["dataset"], r["mode"], r["seed"])):
        deep = [k for k in r["encoder_norm_pretrained"] if k.startswith("teacher_mask")][-1]
        twin = deep.replace("teacher_mask", "teacher_image")
        p = r["pretrain"]
        lines.append(
            f"| {r['dataset']} | {r['mode']} | {r['seed']} | {100 * p['dice']:.1f} | {p['auroc']:.3f} | "
            f"{'yes' if p['swapped'] else 'no'} | {r['encoder_norm_pretrained'][deep]:.3g} / "
            f"{r['encoder_norm_pretrained'][twin]:.3g} ({r['encoder_norm_initial'][deep]:.3g}) | "
            f"{r['subnormal_values']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--datasets", default="ph2-full,pupil")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="2 pretraining updates a run: checks the path")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    done = json.loads(args.out.read_text())["runs"] if args.out.exists() else []
    key = {(r["dataset"], r["mode"], r["seed"]) for r in done}
    for dataset in args.datasets.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            for mode, extra in MODES.items():
                if (dataset, mode, seed) in key:
                    continue
                overrides = [
                    f"dataset={dataset}",
                    f"data.root={evidence.DATASETS[dataset]}",
                    "data.size=[96, 96]",
                    "method=superdiffusion",
                    "data.labeled_percent=5",
                    f"train.seed={seed}",
                    f"train.threads={args.threads}",
                    *evidence.GRID_SPLIT,
                    *extra,
                ]
                if args.quick:
                    overrides += ["method.pretrain_epochs=1", "train.steps_per_epoch=2"]
                record = pretrain_only(overrides, args.root / dataset / f"s{seed}-{mode}")
                done.append({"dataset": dataset, "mode": mode, "seed": seed, "overrides": overrides, **record})
                result = {
                    "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads},
                    "runs": done,
                    "table": table(done),
                }
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(result, indent=1))
                print(table([done[-1]]).splitlines()[-1], flush=True)
    print(table(done))


if __name__ == "__main__":
    main()
