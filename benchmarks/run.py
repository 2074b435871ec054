"""Speed benchmarks of the training step and of inference, written as one JSON file.

    python benchmarks/run.py --quick --out benchmarks/results/speed-cpu.json

Measures (128x128 images, batch 8, default UNet width unless stated):
- the machine's fp32 matmul rate (GFLOP/s);
- one UNet training pass (forward + backward) and one inference pass: time, images/s,
  FLOPs (torch.utils.flop_counter) and the fraction of the matmul rate they reach;
- one optimisation step of every method (images/s) and its number of UNet passes;
- the paper's method at R = 0..5 and its ``step_overhead_ratio`` =
  step time / ((2 + 2R) x one timestep-conditioned UNet training pass);
- the paper's method at image sizes 64, 128, 256;
- inference images/s and peak memory for 1 and K noise draws.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from superdiffusion.config import resolve
from superdiffusion.methods import METHODS, Batch, StepContext, build_method
from superdiffusion.nn import UNet

PASSES = {"superdiffusion": None, "supervised": 1, "em": 1, "mt": 2, "uamt": 2, "cct": 1, "urpc": 1, "cps": 2, "dtc": 1}


WARMUP = 2  # untimed runs before timing; --quick uses 1


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss it does not inherit the
    parent's peak across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timeit(fn, repeats: int, warmup: int | None = None) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(WARMUP if warmup is None else warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    seconds = timeit(lambda: a @ b, repeats)
    return 2 * n**3 / seconds / 1e9


def unet_pass(size: int, batch: int, repeats: int, time_embedding: bool, features) -> dict:
    net = UNet(3 + (2 if time_embedding else 0), 2, 2, features, time_embedding=time_embedding)
    x = torch.randn(batch, net.blocks[0][0].in_channels, size, size)
    t = torch.randint(0, 1000, (batch,)) if time_embedding else None

    def train_pass():
        net.zero_grad(set_to_none=True)
        net(x, t).square().mean().backward()

    def infer_pass():
        with torch.inference_mode():
            net(x, t)

    with FlopCounterMode(display=False) as counter:
        train_pass()
    train_flops = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        infer_pass()
    infer_flops = counter.get_total_flops()
    net.train()
    train_s = timeit(train_pass, repeats)
    net.eval()
    infer_s = timeit(infer_pass, repeats)
    return {
        "train_pass_s": train_s,
        "train_images_per_s": batch / train_s,
        "train_gflop": train_flops / 1e9,
        "train_gflops_per_s": train_flops / train_s / 1e9,
        "infer_pass_s": infer_s,
        "infer_images_per_s": batch / infer_s,
        "infer_gflop": infer_flops / 1e9,
        "infer_gflops_per_s": infer_flops / infer_s / 1e9,
    }


def unet_variants(size: int, batch: int, repeats: int, features) -> dict:
    """The timestep UNet's training pass as is, in channels-last memory format, and compiled."""
    out = {}
    for name in ("eager", "channels_last", "compile"):
        torch.manual_seed(0)
        net = UNet(5, 2, 2, features, time_embedding=True)
        x = torch.randn(batch, 5, size, size)
        t = torch.randint(0, 1000, (batch,))
        if name == "channels_last":
            net = net.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        run = net
        if name == "compile":
            try:
                run = torch.compile(net)
            except Exception as err:  # noqa: BLE001
                out[name] = {"error": str(err)[:200]}
                continue

        def train_pass(net=net, run=run, x=x, t=t):
            net.zero_grad(set_to_none=True)
            run(x, t).square().mean().backward()

        try:
            seconds = timeit(train_pass, repeats, warmup=3)
        except Exception as err:  # noqa: BLE001 - compile needs a C++ toolchain; report, don't fail
            out[name] = {"error": f"{type(err).__name__}: {str(err)[:200]}"}
            continue
        out[name] = {"train_pass_s": seconds, "train_images_per_s": batch / seconds}
    return out


def method_step(name: str, size: int, batch: int, repeats: int, overrides: list[str]) -> dict:
    cfg = resolve([f"method={name}", f"data.size=[{size}, {size}]", *overrides])
    torch.manual_seed(0)
    method = build_method(cfg, 3, 2, 2)
    opt = torch.optim.Adam(method.parameters_for("train"), lr=1e-4)
    images = torch.randn(batch, 3, size, size)
    labels = (torch.rand(batch, size, size) > 0.5).long()
    data = Batch(images, labels, torch.arange(batch) < batch // 2)
    ctx = StepContext("train", 5, 10, 10, 1.0)

    def step():
        losses = method.losses(data, ctx)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()
        method.after_step(ctx)

    seconds = timeit(step, repeats)
    return {"step_s": seconds, "images_per_s": batch / seconds}


def data_batch(repeats: int) -> dict:
    """Time to gather and augment one training batch from the in-memory dataset."""
    from superdiffusion.data import build_data
    from superdiffusion.training import BatchPlan, make_batch

    cfg = resolve([])
    start = time.perf_counter()
    data = build_data(cfg.data, 0)
    load_s = time.perf_counter() - start
    plan = BatchPlan(len(data.labeled), len(data.unlabeled), 8, 4)
    lab, unl = plan.epoch(0, 0, 0)[0]
    seconds = timeit(lambda: make_batch(data, lab, unl, torch.Generator().manual_seed(0)), repeats * 10)
    return {"dataset_load_s": load_s, "batch_s": seconds}


def inference(size: int, batch: int, samples: int, repeats: int) -> dict:
    cfg = resolve([f"data.size=[{size}, {size}]"])
    method = build_method(cfg, 3, 2, 2).eval()
    images = torch.randn(batch, 3, size, size)
    before = peak_rss_mb()

    def run():
        with torch.inference_mode():
            method.predict(images, samples)

    seconds = timeit(run, repeats)
    peak = peak_rss_mb()
    return {
        "samples": samples,
        "seconds": seconds,
        "images_per_s": batch / seconds,
        "peak_rss_mb": peak,
        "rss_growth_mb": peak - before,
    }


def inference_in_child(size: int, batch: int, samples: int, repeats: int) -> dict:
    """:func:`inference` in a fresh process, so that its peak memory is its own."""
    import subprocess

    here = str(Path(__file__).parent)
    code = (
        f"import json, sys; sys.path.insert(0, {here!r}); import run; "
        f"print(json.dumps(run.inference({size}, {batch}, {samples}, {repeats})))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and sizes (under 45 s on 2 cores)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global WARMUP
    WARMUP = 1 if args.quick else 2
    repeats = 3 if args.quick else 7
    features = tuple(resolve([]).model.features)
    batch, size = 8, 128
    result: dict = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        },
        "settings": {"batch": batch, "size": size, "features": list(features), "quick": args.quick},
    }
    start = time.perf_counter()
    result["matmul_gflops_fp32"] = matmul_gflops()
    passes = ("unet_timestep",) if args.quick else ("unet_plain", "unet_timestep")
    for key in passes:
        result[key] = unet_pass(size, batch, repeats, key == "unet_timestep", features)
        for kind in ("train", "infer"):
            result[key][f"{kind}_fraction_of_matmul"] = (
                result[key][f"{kind}_gflops_per_s"] / result["matmul_gflops_fp32"]
            )
    if not args.quick:
        result["unet_variants"] = unet_variants(size, batch, repeats, features)
    one_pass = result["unet_timestep"]["train_pass_s"]
    # the steps below hold several passes each: in a smoke run two timings of each suffice
    step_repeats = 2 if args.quick else repeats
    rounds = [0, 2] if args.quick else [0, 1, 2, 3, 5]
    result["rounds"] = {}
    for r in rounds:
        step = method_step("superdiffusion", size, batch, step_repeats, [f"method.rounds={r}"])
        step["unet_passes"] = 2 + 2 * r
        step["step_overhead_ratio"] = step["step_s"] / ((2 + 2 * r) * one_pass)
        result["rounds"][str(r)] = step
    result["step_overhead_ratio"] = result["rounds"][str(rounds[-1])]["step_overhead_ratio"]
    names = ["supervised", "cps"] if args.quick else list(METHODS)
    result["methods"] = {}
    for name in names:
        over = ["method.rounds=5"] if name == "superdiffusion" else []
        result["methods"][name] = {
            **method_step(name, size, batch, step_repeats, over),
            "unet_passes": PASSES[name] or 12,
        }
    sizes = [64] if args.quick else [64, 128, 256]
    result["sizes"] = {
        str(s): method_step("superdiffusion", s, batch, max(2, step_repeats - 2), ["method.rounds=2"]) for s in sizes
    }
    result["data"] = data_batch(step_repeats)
    infer_batch = 8 if args.quick else 16
    result["inference"] = [
        inference_in_child(size, infer_batch, k, step_repeats) for k in ((1, 4) if args.quick else (1, 4, 16))
    ]
    result["seconds"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"matmul fp32: {result['matmul_gflops_fp32']:.1f} GFLOP/s")
    for key in passes:
        u = result[key]
        print(
            f"{key:14s} train {u['train_images_per_s']:6.1f} img/s ({100 * u['train_fraction_of_matmul']:.0f}% of matmul)"
            f"  infer {u['infer_images_per_s']:6.1f} img/s ({100 * u['infer_fraction_of_matmul']:.0f}%)"
        )
    for name, v in result.get("unet_variants", {}).items():
        print(f"variant {name:14s} " + (f"{v['train_images_per_s']:.1f} img/s" if "error" not in v else v["error"]))
    for r, s in result["rounds"].items():
        print(f"superdiffusion R={r}: {s['images_per_s']:.1f} img/s, overhead ratio {s['step_overhead_ratio']:.2f}")
    for name, s in result["methods"].items():
        print(f"{name:14s} {s['images_per_s']:6.1f} img/s/step ({s['unet_passes']} UNet passes)")
    print(
        f"data: load+decode+resize once {result['data']['dataset_load_s']:.2f}s, one batch {1000 * result['data']['batch_s']:.2f} ms"
    )
    for inf in result["inference"]:
        print(f"inference K={inf['samples']}: {inf['images_per_s']:.1f} img/s, peak RSS {inf['peak_rss_mb']:.0f} MB")
    print(f"wrote {args.out} in {result['seconds']:.0f}s")


if __name__ == "__main__":
    main()
