"""Cost at a patch size: one training step (default width) of the paper's method and of the
supervised UNet, and sliding-window inference of one image or volume, each in its own process
so that peak memory (max RSS) is its own. 3D at the paper's patch (96x96x80, batch 2), or 2D
at the plan's patches for large images (256x256, batch 8: the plan's 2D budget), half of each
batch labeled.

    python benchmarks/volumes.py --out benchmarks/results/volumes-cpu.json
    python benchmarks/volumes.py --patch 256 256 --volume 512 512 --batch 8 --out benchmarks/results/memory-2d-cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss it does not inherit the
    parent's peak across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(
    what: str, method: str, rounds: int, patch: list[int], volume: list[int], batch: int, repeats: int, ckpt: bool
) -> dict:
    import torch

    from superdiffusion.config import resolve
    from superdiffusion.inference import predict_tensor
    from superdiffusion.methods import Batch, StepContext, build_method

    dims = len(patch)
    overrides = [f"method={method}", f"data.spatial_dims={dims}", f"data.patch_size={patch}", "data.size=null"]
    overrides += [f"model.checkpointing={ckpt}", f"train.batch_size={batch}", f"train.labeled_batch_size={batch // 2}"]
    if method == "superdiffusion":
        overrides.append(f"method.rounds={rounds}")
    cfg = resolve(overrides)
    torch.manual_seed(0)
    m = build_method(cfg, 1, 2, dims)
    times = []
    if what == "train":
        opt = torch.optim.Adam(m.parameters_for("train"), lr=1e-4)
        labeled = torch.arange(batch) < batch // 2
        items = Batch(torch.randn(batch, 1, *patch), (torch.rand(batch, *patch) > 0.7).long(), labeled)
        ctx = StepContext("train", 1, 10, 1, 1.0)
        for _ in range(repeats + 1):
            start = time.perf_counter()
            losses = m.losses(items, ctx)
            opt.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            opt.step()
            times.append(time.perf_counter() - start)
    else:
        x = torch.randn(1, 1, *volume)
        for _ in range(repeats + 1):
            start = time.perf_counter()
            predict_tensor(m, x, torch.device("cpu"), batch_size=batch, window=tuple(patch), overlap=0.5)
            times.append(time.perf_counter() - start)
    times = sorted(times[1:])
    return {
        "what": what,
        "method": method,
        "rounds": rounds if method == "superdiffusion" else None,
        "seconds": times[len(times) // 2],
        "peak_rss_mb": peak_rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--patch", type=int, nargs="+", default=[96, 96, 80], help="2 or 3 sides: 2D or 3D")
    parser.add_argument("--volume", type=int, nargs="+", default=[160, 160, 88], help="the image inferred")
    parser.add_argument("--batch", type=int, default=2, help="items a training step (half labeled)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", nargs=4, metavar=("WHAT", "METHOD", "ROUNDS", "CHECKPOINTING"))
    args = parser.parse_args()
    if args.child:
        what, method, rounds, ckpt = args.child
        row = child(what, method, int(rounds), args.patch, args.volume, args.batch, args.repeats, ckpt == "true")
        print(json.dumps(row))
        return
    if len(args.patch) not in (2, 3) or len(args.volume) != len(args.patch):
        parser.error("--patch and --volume: 2 sides each (2D) or 3 each (3D)")
    runs = [
        ("train", "supervised", 0, "false"),
        ("train", "superdiffusion", 0, "false"),
        ("train", "superdiffusion", 2, "false"),
        ("train", "superdiffusion", 2, "true"),
        ("infer", "superdiffusion", 0, "false"),
    ]
    results = []
    for what, method, rounds, ckpt in runs:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            what,
            method,
            str(rounds),
            ckpt,
            "--patch",
            *map(str, args.patch),
            "--volume",
            *map(str, args.volume),
            "--repeats",
            str(args.repeats),
            "--batch",
            str(args.batch),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(
                f"{what} {method} R={rounds} checkpointing={ckpt} failed ({done.returncode}):\n{done.stderr[-2000:]}"
            )
        row = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(row)
        label = f"{method}" + (f" R={rounds}" if method == "superdiffusion" and what == "train" else "")
        label += " ckpt" if ckpt == "true" else ""
        print(f"{what:5s} {label:20s} {row['seconds']:7.2f} s  peak RSS {row['peak_rss_mb']:7.0f} MB")
    out = {"machine": platform.platform(), "command": " ".join(["python benchmarks/volumes.py", *sys.argv[1:]]),
           "patch": args.patch, "volume": args.volume, "batch": args.batch, "runs": results}  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
