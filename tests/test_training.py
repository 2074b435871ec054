import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image

from superdiffusion import api, checkpoint
from superdiffusion.data import build_data
from superdiffusion.errors import RunFolderError, TrainingDiverged
from superdiffusion.training import Trainer

TINY = ["train.epochs=3", "method.pretrain_epochs=1", "method.rounds=1", "train.lr_step=2", "train.keep_state=true"]


def _weights(run_dir, name="last.pt"):
    return checkpoint.load(run_dir / "checkpoints" / name)["model"]


def _same(a, b):
    return all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


# right after pretraining; after one training epoch; right after pretraining, with the pretraining
# optimizer carried over (rebuilt from the checkpoint on resume) and the teacher's own lr
KEEP = ("method.carry_optimizer=true", "method.teacher_lr_factor=0.1", "method.pseudo_labels=mean")


@pytest.mark.parametrize("crash_at, options", [(1, ()), (2, ()), (1, KEEP)])
def test_training_writes_results_and_resume_matches_uninterrupted(tmp_path, monkeypatch, crash_at, options):
    TINY = (*globals()["TINY"], *options)
    cfg = tiny_config(*TINY)
    full = api.train(cfg, tmp_path / "full")
    assert set(full["test"]) == {"resized", "original"}
    assert json.loads((tmp_path / "full" / "results.json").read_text())["method"] == "superdiffusion"
    assert (tmp_path / "full" / "config.yaml").exists() and (tmp_path / "full" / "tensorboard").is_dir()

    calls = {"n": 0}
    original = Trainer.run_epoch

    def crash_after_two(self, *args):
        if calls["n"] == crash_at:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(self, *args)

    monkeypatch.setattr(Trainer, "run_epoch", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        api.train(tiny_config(*TINY), tmp_path / "resumed")
    monkeypatch.setattr(Trainer, "run_epoch", original)
    with pytest.raises(RunFolderError, match="--resume"):
        api.train(tiny_config(*TINY), tmp_path / "resumed")
    resumed = api.train(tiny_config(*TINY), tmp_path / "resumed", resume=True)
    assert _same(_weights(tmp_path / "full"), _weights(tmp_path / "resumed"))
    assert resumed["test"] == full["test"]


def test_sigkill_mid_run_then_resume_gives_the_same_weights(tmp_path):
    args = [
        sys.executable,
        "-m",
        "superdiffusion",
        "train",
        *TINY,
        "train.epochs=4",
        "data.size=[32, 32]",
        "model.features=[8, 16, 32]",
        "train.steps_per_epoch=3",
        "train.batch_size=4",
        "train.labeled_batch_size=2",
        "train.threads=1",
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    subprocess.run(args + ["--out", str(tmp_path / "a")], check=True, env=env, capture_output=True)
    proc = subprocess.Popen(args + ["--out", str(tmp_path / "b")], env=env, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # kill as soon as the second training epoch has started
        if "train epoch 1/4" in line:
            break
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = checkpoint.load(tmp_path / "b" / "checkpoints" / "last.pt")
    assert state["position"]["phase"] == 1 and state["position"]["epoch"] < 4  # really interrupted
    done = subprocess.run(args + ["--out", str(tmp_path / "b"), "--resume"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"format": 1, "value": 1}, path)
    checkpoint.save_atomic({"format": 1, "value": 2}, path)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.warns(UserWarning, match="unreadable"):
        assert checkpoint.load(path)["value"] == 1


def test_nan_loss_stops_with_step_terms_and_checkpoint(tmp_path, monkeypatch):
    from superdiffusion.methods.superdiffusion import SuperDiffusion

    def nan_losses(self, batch, ctx):
        return {"sup": torch.tensor(float("nan"), requires_grad=True), "semi": torch.tensor(0.5)}

    monkeypatch.setattr(SuperDiffusion, "losses", nan_losses)
    with pytest.raises(TrainingDiverged, match=r"step 0 .*sup=nan, semi=0.5.*no checkpoint was written yet"):
        api.train(tiny_config(*TINY), tmp_path / "nan")


def test_predict_round_trip_on_real_images(tmp_path):
    cfg = tiny_config(*TINY)
    api.train(cfg, tmp_path / "run")
    source = tmp_path / "in"
    source.mkdir()
    from superdiffusion.data import resolve_root

    for name in ("IMD002.png", "IMD003.png"):
        img = Image.open(resolve_root("builtin:ph2_128") / "images" / name).resize((90, 70))
        img.save(source / name)
    written = api.predict(tmp_path / "run", source, tmp_path / "out", samples=3)
    assert len(written) == 4
    mask = np.asarray(Image.open(tmp_path / "out" / "IMD002.png"))
    assert mask.shape == (70, 90) and set(np.unique(mask)) <= {0, 255}
    assert np.asarray(Image.open(tmp_path / "out" / "IMD002_uncertainty.png")).shape == (70, 90)
    with pytest.raises(RunFolderError, match="already exists"):  # nothing a user has is overwritten
        api.predict(tmp_path / "run", source, tmp_path / "out")
    assert len(api.predict(tmp_path / "run", source, tmp_path / "out", force=True)) == 2


def test_cli_errors_are_one_line(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "superdiffusion",
        "train",
        f"data.root={tmp_path / 'missing'}",
        "--out",
        str(tmp_path / "x"),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "missing" in out.stderr and "Traceback" not in out.stderr


def test_short_real_training_on_ph2_beats_trivial_predictors(tmp_path):
    from superdiffusion.data import build_data
    from superdiffusion.evaluation import binary_scores

    overrides = [
        "data.size=[64, 64]",
        "model.features=[8, 16, 32, 64]",
        "train.epochs=4",
        "train.lr_step=3",
        "method.pretrain_epochs=1",
        "method.rounds=1",
        "data.labeled_percent=20",
    ]
    cfg = tiny_config(*overrides, "train.steps_per_epoch=0", "train.batch_size=8", "train.labeled_batch_size=4")
    results = api.train(cfg, tmp_path / "run")
    test_masks = build_data(cfg.data, 0).test.stack_masks()
    all_background = binary_scores(torch.zeros(test_masks.shape), test_masks, 0.5)["dice_per_image"]
    all_foreground = binary_scores(torch.ones(test_masks.shape), test_masks, 0.5)["dice_per_image"]
    dice = results["test"]["resized"]["dice_per_image"]
    assert all_background == 0.0 and all_foreground < 0.45
    assert dice > 0.6 and dice > all_foreground + 0.2, results["test"]


def test_the_loop_applies_lambda_once_to_the_unsupervised_terms_only():
    from superdiffusion.methods import METHODS
    from superdiffusion.training import weigh

    sup, cps = torch.tensor(2.0), torch.tensor(3.0)
    assert weigh({"sup": sup, "cps": cps}, ("cps",), 0.1) == {"sup": sup, "cps": 0.1 * cps}
    # every method names its unsupervised terms; none multiplies a term by lambda itself
    import inspect

    for name, cls in METHODS.items():
        source = inspect.getsource(inspect.getmodule(cls))
        assert "ctx.weight" not in source, f"method {name} weighs its own terms"
        assert isinstance(cls.unsupervised_terms, tuple)


def test_training_on_a_cpu_flushes_subnormal_floats(tmp_path):
    # a teacher's decayed deep blocks filled with subnormals made CPU epochs 8x slower mid-run
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormal floats")
    torch.set_flush_denormal(False)
    assert float(torch.tensor([1e-40]) * 1) != 0
    cfg = tiny_config("train.device=cpu")
    try:
        Trainer(cfg, build_data(cfg.data, cfg.train.seed), tmp_path / "run")
        assert float(torch.tensor([1e-40]) * 1) == 0
    finally:
        torch.set_flush_denormal(False)


def test_subnormals_are_flushed_on_every_thread_of_the_pool_however_late():
    """torch.set_flush_denormal reaches the calling thread only: an OpenMP worker created
    before it (by loading the data, say) kept computing on subnormals, half of every parallel
    operation (the cause of a run slowing down as its teacher decayed). After set_up_device,
    every thread of the pool flushes them. Checked without timing: a subnormal times 1e30 is 0
    on a thread that flushes. In a fresh process, whose pool exists before the flush."""
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormal floats")
    torch.set_flush_denormal(False)
    code = (
        "import torch\n"
        "torch.set_num_threads(2)\n"
        "(torch.rand(1_000_000) + 1).sqrt().sum()\n"  # the pool exists, as after loading the data
        "from superdiffusion.subnormals import every_thread_flushes\n"
        "from superdiffusion.inference import set_up_device\n"
        "torch.set_flush_denormal(True)\n"
        "only_this_thread = every_thread_flushes()\n"
        "set_up_device('cpu')\n"
        "print(only_this_thread, every_thread_flushes())\n"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert found.stdout.split() == ["False", "True"], found.stderr


def test_a_piped_log_shows_progress_inside_an_epoch(tmp_path, caplog, monkeypatch):
    """Where stderr is not a terminal (nohup, Slurm) no bar is drawn: a line inside each epoch
    says the update reached and its recent seconds an update (was: silent until the epoch
    ended), at most every PROGRESS_SECONDS; the epoch's last update has the epoch's own line."""
    import logging

    from superdiffusion import monitor

    monkeypatch.setattr(monitor, "PROGRESS_SECONDS", 0.0)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    cfg = tiny_config("method=supervised", "train.epochs=1", "train.steps_per_epoch=3")
    with caplog.at_level(logging.INFO, logger="superdiffusion"):
        api.train(cfg, tmp_path / "run")
    lines = [r.getMessage() for r in caplog.records if ": update " in r.getMessage()]
    assert [line.split(",")[0].strip() for line in lines] == ["train epoch 1/1: update 1/3", "train epoch 1/1: update 2/3"]
    assert "s an update (last 2)" in lines[1]
    assert ": update 1/3" in (tmp_path / "run" / "train.log").read_text()
