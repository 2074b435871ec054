import subprocess
import sys

from superdiffusion import checkpoint

ARGS = [
    "method=cps",
    "method.supervised_loss=ce",  # the Dice term is pooled over each process's share, not the global batch
    "model.norm=instance",
    "data.size=[32, 32]",
    "model.features=[8, 16, 32]",
    "train.epochs=2",
    "train.steps_per_epoch=3",
    "train.threads=1",
    "train.keep_state=true",  # the tests compare the final training state
]


def _train(out, *extra, procs=1):
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs)]
        if procs > 1
        else [sys.executable]
    )
    done = subprocess.run(
        [*launcher, "-m", "superdiffusion", "train", *ARGS, *extra, "--out", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return checkpoint.load(out / "checkpoints" / "last.pt")["model"]


def _max_diff(a, b):
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_two_processes_match_one_process_of_the_same_global_batch(tmp_path):
    batch = ["train.batch_size=4", "train.labeled_batch_size=2"]
    ddp = _train(tmp_path / "ddp", *batch, procs=2)
    single = _train(tmp_path / "single", *batch)
    half = _train(tmp_path / "half", "train.batch_size=2", "train.labeled_batch_size=1")
    assert _max_diff(ddp, single) < 5e-3  # float rounding through 6 Adam steps
    assert _max_diff(half, single) > 5 * _max_diff(ddp, single)  # a different batch is clearly farther
    assert (tmp_path / "ddp" / "results.json").exists()
