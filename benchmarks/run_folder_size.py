"""Size of a finished run folder with its full training state, with train.keep_state=true
(last.pt and best.pt, no *.prev.pt) and by default (model.pt only). Works on a copy of a run
folder written before model.pt existed (the quick start's), so nothing is retrained:

    python benchmarks/run_folder_size.py runs/ph2/superdiffusion/p10-s0 --out benchmarks/results/run-folder-size.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
from pathlib import Path

from superdiffusion import api
from superdiffusion.runfolder import RunFolder


def size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run folder that still holds checkpoints/")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = {"command": f"python benchmarks/run_folder_size.py {args.run}", "machine": platform.platform()}
        for keep in (True, False):
            folder = RunFolder(Path(tmp) / ("keep" if keep else "slim"))
            shutil.copytree(args.run, folder.path)
            result.setdefault("full_state_bytes", size(folder.path))
            cfg, method, state = api.load_run(folder.path)  # from best.pt: the run predates model.pt
            folder.write_model(api.model_record(method, cfg, state["data"], state["best"]))
            folder.finish_checkpoints(keep_state=keep)
            result["keep_state_bytes" if keep else "default_bytes"] = size(folder.path)
            if not keep:
                result["model_pt_bytes"] = folder.model_path.stat().st_size
        result["method"] = cfg.method.name
    for key in [k for k in result if k.endswith("_bytes")]:
        result[key.replace("_bytes", "_mb")] = round(result[key] / 2**20, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
