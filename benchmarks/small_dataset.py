"""Small-dataset check: `supervised` at the defaults on a 20-image subset of the built-in
PH2 copy (20 % labels), against the all-foreground predictor on the same test split, with
the run length in updates (the default) and with the former length in passes over the data
(10 epochs of one pass each: 30 updates on 20 images).

    python benchmarks/small_dataset.py --root runs/small --out benchmarks/results/small-dataset-ph2.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from superdiffusion import api
from superdiffusion.config import resolve
from superdiffusion.data import build_data, resolve_root
from superdiffusion.evaluation import binary_scores

VARIANTS = {
    "defaults": [],
    "former-length": ["train.steps_per_epoch=0", "train.epochs=10", "train.lr_step=7"],
}


def make_subset(dest: Path, count: int = 20, seed: int = 0) -> Path:
    """``count`` training images of the built-in copy, drawn with ``seed``, and its whole test split."""
    if (dest / "split.csv").exists():
        return dest
    source = resolve_root("builtin:ph2_128")
    rows = [line.split(",")[:2] for line in (source / "split.csv").read_text().split()[1:]]
    train = [i for i, s in rows if s == "train"]
    test = [i for i, s in rows if s == "test"]
    keep = sorted(np.random.default_rng(seed).choice(train, count, replace=False).tolist())
    for sub in ("images", "masks"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
        for name in keep + test:
            for f in (source / sub).glob(f"{name}.*"):
                shutil.copy(f, dest / sub / f.name)
    (dest / "split.csv").write_text(
        "id,split\n" + "".join(f"{i},train\n" for i in keep) + "".join(f"{i},test\n" for i in test)
    )
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("runs/small"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    data_root = make_subset(args.root / "data").resolve()
    result = {"command": "python benchmarks/small_dataset.py", "machine": platform.platform(), "runs": {}}
    for name, extra in VARIANTS.items():
        overrides = ["method=supervised", f"data.root={data_root}", "data.name=ph2-20", "data.labeled_percent=20"]
        overrides += extra + ([f"train.threads={args.threads}"] if args.threads else [])
        cfg = resolve(overrides)
        folder = args.root / name
        start = time.perf_counter()
        if (folder / "results.json").exists():
            res = json.loads((folder / "results.json").read_text())
        else:
            res = api.train(cfg, folder, resume=(folder / "config.yaml").exists())
        masks = build_data(cfg.data, cfg.train.seed).test.stack_masks()
        all_fg = binary_scores(torch.ones(masks.shape), masks, 0.5)
        result["runs"][name] = {
            "overrides": overrides,
            "updates": res["updates"]["train"],  # counted by the run, whatever steps_per_epoch says
            "counts": res["counts"],
            "test_dice_per_image": res["test"]["resized"]["dice_per_image"],
            "selected_threshold": res["selection"]["threshold"],
            "health": res.get("health"),
            "all_foreground_dice_per_image": all_fg["dice_per_image"],
            "wall_seconds": time.perf_counter() - start,
        }
        print(name, result["runs"][name])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
