"""Does a refactor change what training does? Ten updates of every method (and the paper's
method with teacher pretraining) on the built-in PH2 copy at 32x32, one thread: each epoch's
losses (as trained and before lambda) and validation Dice, the test Dice and a hash of the
trained segmenter's weights. Run it at two commits and compare:

    python benchmarks/same_updates.py --out /tmp/after.json
    git worktree add /tmp/before REV && PYTHONPATH=/tmp/before/src python benchmarks/same_updates.py --out /tmp/before.json
    python benchmarks/same_updates.py --compare /tmp/before.json /tmp/after.json --out benchmarks/results/same-updates.json
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import subprocess
import tempfile
from pathlib import Path

import torch

BASE = ["data.size=[32, 32]", "model.features=[8, 16, 32]", "train.epochs=2", "train.steps_per_epoch=5",
        "train.batch_size=4", "train.labeled_batch_size=2", "eval.batch_size=64", "train.threads=1"]  # fmt: skip
CASES = [[f"method={m}"] for m in ("supervised", "em", "mt", "cct", "uamt", "urpc", "cps", "dtc", "superdiffusion")]
CASES += [["method=superdiffusion", "method.pretrain_epochs=1"]]


def measure() -> dict:
    import superdiffusion
    from superdiffusion import api
    from superdiffusion.config import resolve

    torch.set_num_threads(1)
    out = {}
    for case in CASES:
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch) / "run"
            results = api.train(resolve(BASE + case), folder)
            with open(folder / "history.csv", newline="") as handle:
                rows = [
                    {k: v for k, v in r.items() if k in ("sup", "val_dice_per_image") or k.startswith("raw_") or "loss" in k}
                    for r in csv.DictReader(handle)
                ]  # fmt: skip
            weights = torch.load(folder / "model.pt", weights_only=False)["segmenter"]
            digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in weights.values())).hexdigest()
            out[" ".join(case)] = {"history": rows, "test_dice": results["test"]["resized"]["dice_per_image"],
                                   "weights_sha256": digest}  # fmt: skip
            print(" ".join(case), results["test"]["resized"]["dice_per_image"], digest[:12], flush=True)
    source = Path(superdiffusion.__file__).resolve().parents[2]
    commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    return {"commit": commit.strip(), "torch": torch.__version__, "runs": out}


def compare(before: dict, after: dict) -> dict:
    cases = sorted(set(before["runs"]) | set(after["runs"]))
    differ = [c for c in cases if before["runs"].get(c) != after["runs"].get(c)]
    return {
        "benchmark": "same_updates",
        "before": before["commit"],
        "after": after["commit"],
        "torch": after["torch"],
        "cases": cases,
        "identical": not differ,
        "different": differ,
        "test_dice": {c: after["runs"][c]["test_dice"] for c in cases if c in after["runs"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        result = compare(*(json.loads(p.read_text()) for p in args.compare))
        print("identical" if result["identical"] else f"different: {result['different']}")
    else:
        result = measure()
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
