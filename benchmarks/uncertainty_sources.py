"""Which uncertainty source says where a model is wrong? For finished runs of the paper's
method, re-score the test split with K noise draws and compare, on the same predictions:

- the predictive entropy of the averaged foreground probability;
- the spread of the foreground probability over the K draws;
- the teacher-student disagreement (the paper's two mask pathways).

Each is scored by the AUROC of separating wrong pixels from right ones, Spearman's
correlation between an image's mean uncertainty and its Dice, and the mean value; the
calibration (ECE, 15 bins) of the foreground probability goes beside them. The spread is
also reported against K, to show whether the draws differ at all. A baseline run (e.g. mean
teacher, whose student has dropout) is listed with its own sources, MC dropout included, as
a reference point.

    python benchmarks/uncertainty_sources.py RUN [RUN ...] --out benchmarks/results/uncertainty-sources.json
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import torch

from superdiffusion import api


def spread_by_step(run: Path, samples: int, steps: list[int]) -> dict[str, Any]:
    """The mean spread of the foreground probability over ``samples`` draws on the test split,
    with the pure-noise mask at each diffusion step ``t`` (``eval.inference_t``), and the
    test Dice of the mean prediction at the run's threshold."""
    from superdiffusion.api import load_run
    from superdiffusion.data import build_data
    from superdiffusion.evaluation import binary_scores, foreground_probability
    from superdiffusion.inference import predict_tensor
    from superdiffusion.protocol import uses_validation

    cfg, method, state = load_run(run)
    data = build_data(cfg.data, cfg.train.seed, validation=uses_validation(cfg))
    threshold = float(state["best"].get("threshold", 0.5))
    out = {"run": str(run), "samples": samples}
    for t in steps:
        pred = predict_tensor(method, data.test.stack(), torch.device("cpu"), 16, samples, seed=cfg.train.seed, step=t)
        dice = binary_scores(foreground_probability(pred.probs), data.test.stack_masks(), threshold)["dice_per_image"]
        out[str(t)] = {"mean_spread": float(pred.spread.mean()), "test_dice": dice}
        print(f"inference_t={t}: mean spread {out[str(t)]['mean_spread']:.4f}, test Dice {dice:.4f}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--draws", default="2,8", help="K values; the last one gives the source comparison")
    parser.add_argument("--steps", default="999,500,100", help="eval.inference_t values for the spread (first run)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/uncertainty-sources.json"))
    args = parser.parse_args()
    draws = [int(k) for k in args.draws.split(",")]
    rows = []
    for run in args.runs:
        row = {"run": str(run), "by_draws": {}}
        saved = json.loads((run / "results.json").read_text())
        if saved["method"] != "superdiffusion":  # a baseline: one prediction, its MC dropout as reference
            u = saved["uncertainty"]
            row.update(method=saved["method"], seed=saved["seed"], baseline=True)
            row["by_draws"][1] = {"test_dice": saved["test"]["resized"]["dice_per_image"], "ece": u["ece"]}
            row["by_draws"][1]["sources"] = u["sources"]
            rows.append(row)
            print(run, json.dumps(u["sources"]), flush=True)
            continue
        for k in draws:
            target = run / f"evaluation-honest-k{k}.json"
            result = json.loads(target.read_text()) if target.exists() else api.evaluate(run, samples=k, device="cpu")
            u = result["uncertainty"]
            row["by_draws"][k] = {
                "test_dice": result["test"]["resized"]["dice_per_image"],
                "ece": u["ece"],
                "sources": u["sources"],
            }
            print(run, k, json.dumps(u["sources"]), flush=True)
        row["method"], row["seed"] = result["method"], result["seed"]
        rows.append(row)
    last = str(draws[-1])
    diffusion = [r["by_draws"][draws[-1]]["sources"] for r in rows if not r.get("baseline")]
    summary = {}
    for source in sorted({s for found in diffusion for s in found}):
        found = [sources[source] for sources in diffusion if source in sources]
        summary[source] = {
            metric: sum(f[metric] for f in found) / len(found) for metric in ("error_auroc", "dice_spearman", "mean")
        } | {"runs": len(found)}
    first = next((Path(r["run"]) for r in rows if not r.get("baseline")), None)
    by_step = spread_by_step(first, draws[-1], [int(t) for t in args.steps.split(",")]) if first else {}
    result = {
        "spread_by_inference_t": by_step,
        "command": "python benchmarks/uncertainty_sources.py "
        + " ".join(map(str, args.runs))
        + f" --draws {args.draws}",
        "machine": f"{platform.machine()}, torch {torch.__version__}",
        "draws_compared": int(last),
        "runs": rows,
        "mean_over_diffusion_runs": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
