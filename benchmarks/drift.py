"""Does an update get slower as a run goes on? Trains a method (the default: the paper's, at the
``cpu`` profile's settings) for a few hundred updates in blocks and records, per block, the
seconds of each update and where subnormal floats sit (parameters, gradients, Adam's second
moments and, on one probe batch a block, each layer's activations and output gradients).
Fails (exit 1) when, in any phase, the median update of the last block is more than
``--limit`` (1.5) times that of the first, or when subnormal values reach the gradients: what
they cost depends on the CPU (many times an operation on some x86 CPUs, little on others), so
their presence is checked on every machine, their cost only where it shows.

    python benchmarks/drift.py --out benchmarks/results/drift-cpu.json
    python benchmarks/drift.py --flush main --out benchmarks/results/drift-cpu-main-flush.json
    python benchmarks/drift.py --from-run runs/drift --flush none --out late-none.json

``--flush``: ``all`` (the package: every thread of the OpenMP pool flushes subnormals), ``main``
(``torch.set_flush_denormal`` alone, as the package did before: the calling thread only) or
``none``. ``--from-run RUN`` times ``--train-updates`` co-training updates from a run's last
checkpoint instead (a late state, where subnormals have appeared). ``--set`` passes any setting
(``data.root=...``, ``data.patch_size=[256,256]``); timings mean something only on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from superdiffusion import training
from superdiffusion.api import saved_config
from superdiffusion.config import resolve
from superdiffusion.data import build_data
from superdiffusion.runfolder import RunFolder
from superdiffusion.subnormals import every_thread_flushes
from superdiffusion.training import Trainer, make_batch, make_optimizer

FLUSH = {
    "all": training.set_up_device,
    "main": lambda name: (torch.set_flush_denormal(True), torch.device("cpu"))[1],  # before the fix
    "none": lambda name: torch.device("cpu"),
}

TINY = torch.finfo(torch.float32).tiny


def subnormal(t: torch.Tensor) -> int:
    return int(((t != 0) & (t.abs() < TINY)).sum())


def op_costs(repeats: int = 7) -> dict:
    """Milliseconds of a few operations on one million normal and subnormal float32 values, on
    one thread with nothing flushed (a fresh process): what subnormals cost on this CPU."""
    torch.set_num_threads(1)
    torch.set_flush_denormal(False)
    values = {
        "normal": torch.rand(1_000_000) + 0.5,
        "subnormal": torch.full((1_000_000,), 0x00400000, dtype=torch.int32).view(torch.float32),
    }
    conv = torch.nn.Conv2d(16, 16, 3, padding=1).requires_grad_(False)
    ops = {
        "mul": lambda x: x * 0.5,
        "add": lambda x: x + x,
        "div": lambda x: x / 3.0,
        "sqrt": lambda x: x.sqrt(),
        "exp": lambda x: x.exp(),
        "conv3x3": lambda x: conv(x.view(4, 16, 125, 125)),
        "matmul": lambda x: x.view(1000, 1000) @ x.view(1000, 1000),
    }
    found = {}
    for name, op in ops.items():
        for kind, x in values.items():
            op(x)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                op(x)
                times.append(time.perf_counter() - start)
            found.setdefault(name, {})[kind] = round(1000 * statistics.median(times), 3)
        found[name]["ratio"] = round(found[name]["subnormal"] / found[name]["normal"], 2)
    return found


def code_version() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "modified": bool(git("status", "--porcelain", "--untracked-files=no"))}


def stored_subnormals(trainer: Trainer) -> dict[str, int]:
    """Subnormal values among the parameters, their last gradients and Adam's moments."""
    params = list(trainer.method.parameters())
    state = trainer.optimizer.state
    return {
        "params": sum(subnormal(p.detach()) for p in params),
        "grads": sum(subnormal(p.grad) for p in params if p.grad is not None),
        "adam_exp_avg": sum(subnormal(s["exp_avg"]) for s in state.values() if "exp_avg" in s),
        "adam_exp_avg_sq": sum(subnormal(s["exp_avg_sq"]) for s in state.values() if "exp_avg_sq" in s),
    }


def probe_layers(trainer: Trainer, phase) -> dict[str, dict[str, int]]:
    """One forward and backward pass on a fixed batch (no update): per layer that holds any,
    the subnormal values of its output and of the gradient of its output."""
    method, found = trainer.method, {}
    hooks = []

    def on_forward(name):
        def hook(module, inputs, output):
            if torch.is_tensor(output) and (n := subnormal(output.detach())):
                found.setdefault(name, {})["activations"] = n

        return hook

    def on_backward(name):
        def hook(module, grad_in, grad_out):
            n = sum(subnormal(g) for g in grad_out if g is not None)
            if n:
                found.setdefault(name, {})["output_grads"] = n

        return hook

    for name, module in method.named_modules():
        if not list(module.children()):
            hooks.append(module.register_forward_hook(on_forward(name)))
            hooks.append(module.register_full_backward_hook(on_backward(name)))
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    try:
        lab, unl = trainer.plan.epoch(trainer.cfg.train.seed, 99, 0)[0]
        g = torch.Generator().manual_seed(0)
        batch = make_batch(trainer.data, lab, unl, g, trainer.cfg.data.patch_size).to(trainer.device)
        ctx = training.StepContext(phase.name, 0, phase.epochs, 0, 1.0)
        torch.manual_seed(0)
        sum(method(batch, ctx).values()).backward()
        method.zero_grad(set_to_none=True)
    finally:
        for h in hooks:
            h.remove()
    return found


def from_checkpoint(trainer: Trainer, run: Path) -> None:
    """Co-training updates (as many as the trainer's plan has steps) from ``run``'s last
    checkpoint: its weights and optimizer state, at the epoch it reached."""
    state = RunFolder(run).load_checkpoint()
    trainer.method.load_state_dict(state["model"])
    index = next(i for i, p in enumerate(trainer.phases) if p.name == "train")
    phase = trainer.phases[index]
    params = trainer.method.parameters_for(phase.name)
    trainer.optimizer, trainer.scheduler = make_optimizer(params, trainer.cfg.train, state)
    trainer.run_epoch(index, phase, 0)


def run(args) -> dict:
    block = args.block
    overrides = [
        f"train.steps_per_epoch={block}",
        f"train.epochs={args.train_updates // block}",
        f"method.pretrain_epochs={args.pretrain_updates // block}",
        f"train.eval_every={args.train_updates // block}",  # evaluated once, at the end, untimed
        f"train.lr_step={args.train_updates // block + 1}",
        f"train.threads={args.threads}",
        *args.set,
    ]
    training.set_up_device = FLUSH[args.flush]
    if args.from_run:  # the run's own settings, one block of --train-updates updates
        cfg = saved_config(args.from_run)
        cfg.train.steps_per_epoch, cfg.train.threads = args.train_updates, args.threads
        overrides = [f"from {args.from_run}", f"train.steps_per_epoch={args.train_updates}"]
    else:
        cfg = resolve(overrides)
    data = build_data(cfg.data, cfg.train.seed)  # before the trainer, as a run does: the thread pool exists
    trainer = Trainer(cfg, data, Path(args.root))
    blocks = []
    run_epoch = trainer.run_epoch

    def timed_epoch(index, phase, epoch):
        run_epoch(index, phase, epoch)
        seconds = list(trainer.update_seconds)
        row = {
            "phase": phase.name,
            "block": epoch,
            "median_s": round(statistics.median(seconds), 3),
            "mean_s": round(statistics.fmean(seconds), 3),
            "seconds": [round(s, 3) for s in seconds],
            "subnormal": stored_subnormals(trainer),
        }
        if args.probe:
            row["subnormal_layers"] = probe_layers(trainer, phase)
        blocks.append(row)
        print(f"{phase.name} block {epoch + 1}: median {row['median_s']:.2f}s an update; {row['subnormal']}", flush=True)

    trainer.run_epoch = timed_epoch
    start = time.perf_counter()
    if args.from_run:
        from_checkpoint(trainer, Path(args.from_run))
    else:
        trainer.fit(force=True)
    verdicts = {}
    for phase in dict.fromkeys(b["phase"] for b in blocks):
        rows = [b for b in blocks if b["phase"] == phase]
        ratio = rows[-1]["median_s"] / rows[0]["median_s"]
        verdicts[phase] = {"first_s": rows[0]["median_s"], "last_s": rows[-1]["median_s"], "ratio": round(ratio, 3)}
    return {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},  # fmt: skip
        "code": code_version(),
        "command": " ".join(sys.argv),
        "flush": args.flush,
        "every_thread_flushes": every_thread_flushes(),
        "from_run": args.from_run,
        "settings": overrides,
        "limit": args.limit,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "phases": verdicts,
        "subnormal_gradients": max(b["subnormal"]["grads"] for b in blocks),
        "passed": all(v["ratio"] <= args.limit for v in verdicts.values())
        and not any(b["subnormal"]["grads"] for b in blocks),
        "blocks": blocks,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--root", default="runs/drift", help="run folder (overwritten)")
    p.add_argument("--pretrain-updates", type=int, default=200)
    p.add_argument("--train-updates", type=int, default=200)
    p.add_argument("--block", type=int, default=25, help="updates a block (one epoch)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--limit", type=float, default=1.5)
    p.add_argument("--flush", choices=list(FLUSH), default="all", help="which threads flush subnormals (see above)")
    p.add_argument("--from-run", help="time co-training updates from this run's last checkpoint")
    p.add_argument("--no-probe", dest="probe", action="store_false", help="skip the per-layer probe pass")
    p.add_argument("--set", nargs="*", default=[], help="further settings, key=value")
    p.add_argument("--ops", action="store_true", help="only time operations on normal and subnormal values")
    args = p.parse_args()
    if args.ops:
        result = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                              "torch": torch.__version__}, "code": code_version(), "command": " ".join(sys.argv),
                  "ms_per_op": op_costs()}  # fmt: skip
        Path(args.out).write_text(json.dumps(result, indent=1))
        for name, row in result["ms_per_op"].items():
            print(f"{name:8s} normal {row['normal']:8.3f} ms  subnormal {row['subnormal']:8.3f} ms  x{row['ratio']}")
        return 0
    result = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    for phase, v in result["phases"].items():
        print(f"{phase}: {v['first_s']:.2f}s -> {v['last_s']:.2f}s an update (x{v['ratio']:.2f})")
    if result["subnormal_gradients"]:
        print(f"subnormal values reached the gradients (up to {result['subnormal_gradients']} in a block)")
    print("passed" if result["passed"] else "FAILED: an update slowed, or subnormals reached the training")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
