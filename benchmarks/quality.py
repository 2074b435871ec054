"""Quality benchmark: supervised vs CPS vs the paper's method on the built-in PH2 copy at 5 %
and 20 % labels, 3 seeds each, CPU profile, honest protocol; one resumable sweep, then the
table (mean +- 90 % CI) and the wall time in one JSON file.

    python benchmarks/quality.py --root runs/quality --out benchmarks/results/quality-ph2-cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from run import matmul_gflops  # benchmarks/run.py: states how fast this machine is

from superdiffusion.experiments.report import aggregate, collect, markdown
from superdiffusion.experiments.sweep import expand, run_sweep

GRID = {
    "method": ["supervised", "cps", "superdiffusion"],
    "data.labeled_percent": [5, 20],
    "train.seed": [0, 1, 2],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("runs/quality"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    grid = dict(GRID, **{"train.seed": list(range(args.seeds))})
    specs = expand(grid, [], args.root)
    gflops = matmul_gflops()
    start = time.perf_counter()
    counts = run_sweep(specs, jobs=args.jobs)
    wall = time.perf_counter() - start
    table = aggregate(collect([args.root]))
    per_run = {}
    for s in specs:
        if s.finished:
            r = json.loads((s.folder / "results.json").read_text())
            per_run[str(s.folder)] = r.get("train_seconds")
    result = {
        "command": "python benchmarks/quality.py",
        "machine": platform.platform(),
        "matmul_gflops_fp32": gflops,
        "grid": grid,
        "counts": counts,
        "wall_seconds_this_invocation": wall,
        "train_seconds_per_run": per_run,
        "table": table,
        "markdown": markdown(table),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(result["markdown"])
    print(f"{counts}; wall {wall:.0f}s")


if __name__ == "__main__":
    main()
