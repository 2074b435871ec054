"""The run folder: one writer at a time, a readable record, checkpoint formats."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import tiny_config

from superdiffusion import api, checkpoint
from superdiffusion.errors import RunFolderError
from superdiffusion.experiments.sweep import RunSpec, run_sweep
from superdiffusion.runfolder import CHECKPOINT_FORMAT, RunFolder, RunFolderBusy

SLOW = [
    "method=supervised",
    "data.size=[32, 32]",
    "model.features=[8, 16, 32]",
    "train.epochs=200",
    "train.steps_per_epoch=5",
    "train.batch_size=4",
    "train.labeled_batch_size=2",
    "train.threads=1",
]


def test_a_second_process_cannot_train_into_a_locked_folder(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "superdiffusion", "train", *SLOW, "--out", str(run)],
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        for line in proc.stderr:  # the first process holds the folder once it trains
            if "train epoch 1/200" in line:
                break
        folder = RunFolder(run)
        assert folder.busy
        with pytest.raises(RunFolderBusy, match=f"pid {proc.pid}"):
            api.train(tiny_config("method=supervised"), run, resume=True)
        spec = RunSpec([*SLOW], run)
        assert run_sweep([spec]) == {"total": 1, "skipped": 0, "busy": 1, "finished": 0, "failed": 0}
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    time.sleep(0.1)
    assert not RunFolder(run).busy  # the system released the lock of the killed process


def test_two_sweeps_side_by_side_leave_each_other_s_runs_alone(tmp_path):
    """A sweep plans its runs when it starts; a second sweep over the same grid (another
    terminal, a cluster job) may finish or take one of them before its turn comes. At its turn
    the run is checked again: not re-scored once finished, not launched while another process
    trains it."""
    from conftest import FAST

    from superdiffusion.experiments.sweep import run_one

    done = RunSpec(["method=supervised", *FAST], tmp_path / "done")
    api.train(tiny_config("method=supervised", *FAST), done.folder)  # finished by the other sweep
    stamp = (done.folder / "results.json").stat().st_mtime_ns
    assert run_one(done) == "skipped"
    assert (done.folder / "results.json").stat().st_mtime_ns == stamp and not (done.folder / "console.log").exists()

    taken = RunSpec(["method=supervised", *FAST], tmp_path / "taken")
    holder = RunFolder(taken.folder)
    holder.lock()  # the other sweep trains it now
    try:
        assert run_one(taken) == "busy" and not (taken.folder / "console.log").exists()
    finally:
        holder.unlock()
    assert run_one(taken) == "finished" and taken.finished


def test_a_run_writes_its_log_and_history(tmp_path):
    cfg = tiny_config("method=supervised", "train.epochs=3", "train.lr_step=2")
    results = api.train(cfg, tmp_path / "run")
    folder = RunFolder(tmp_path / "run")
    with open(folder.per_case_path, newline="") as handle:
        cases = list(csv.DictReader(handle))
    assert len(cases) == results["counts"]["test"] and "per_case" not in results
    dice = [float(c["dice"]) for c in cases]
    assert sum(dice) / len(dice) == pytest.approx(results["test"]["resized"]["dice_per_image"])
    with open(folder.history_path) as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.01, 0.01, 0.001])  # the step after 2 epochs
    assert all(float(r["val_dice_per_image"]) > 0 for r in rows)
    text = folder.log_path.read_text()
    assert "train epoch 3/3" in text and "val dice_per_image" in text
    assert folder.progress_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not folder.busy


def test_a_checkpoint_of_a_newer_format_is_refused_with_one_line(tmp_path):
    cfg = tiny_config("method=supervised", "train.epochs=1", "train.keep_state=true")
    api.train(cfg, tmp_path / "run")
    folder = RunFolder(tmp_path / "run")
    for path in (folder.model_path, folder.checkpoint_path("best")):
        state = checkpoint.load(path)
        assert state["format"] == CHECKPOINT_FORMAT
        checkpoint.save_atomic({**state, "format": CHECKPOINT_FORMAT + 1}, path, keep_previous=False)
        with pytest.raises(RunFolderError, match="newer superdiffusion"):
            api.load_run(tmp_path / "run")
        if path == folder.model_path:
            path.unlink()  # then the checkpoint is read


def test_a_finished_run_keeps_a_slim_model_that_predicts_like_the_full_state(tmp_path):
    import numpy as np
    from PIL import Image

    from superdiffusion.cli import main

    kept = tiny_config("method=cps", "train.epochs=2", "train.keep_state=true")
    api.train(kept, tmp_path / "full")
    lean = tiny_config("method=cps", "train.epochs=2")
    api.train(lean, tmp_path / "lean")
    full, slim = RunFolder(tmp_path / "full"), RunFolder(tmp_path / "lean")
    assert not slim.checkpoints.exists() and slim.model_path.exists()
    assert sorted(p.name for p in full.checkpoints.iterdir()) == ["best.pt", "last.pt"]  # no *.prev.pt
    size = lambda root: sum(p.stat().st_size for p in root.rglob("*") if p.is_file())  # noqa: E731
    assert size(slim.path) < size(full.path) / 3
    source = tmp_path / "in"
    source.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray((rng.random((40, 30, 3)) * 255).astype(np.uint8)).save(source / f"x{i}.png")
    # the same training, predicted from best.pt's full state and from model.pt alone
    assert main(["predict", str(full.path), str(source), str(tmp_path / "a")]) == 0
    full.model_path.unlink()
    assert main(["predict", str(full.path), str(source), str(tmp_path / "b")]) == 0  # from best.pt
    assert main(["predict", str(slim.path), str(source), str(tmp_path / "c")]) == 0  # from model.pt
    for i in range(3):
        a, b, c = (np.asarray(Image.open(tmp_path / d / f"x{i}.png")) for d in "abc")
        assert np.array_equal(a, b) and np.array_equal(a, c)
    # the probabilities the masks were thresholded from: 16-bit, at the image's size
    threshold = RunFolder(slim.path).load_model()["best"]["threshold"]
    assert main(["predict", str(slim.path), str(source), str(tmp_path / "p"), "--save-probabilities"]) == 0
    for i in range(3):
        prob = np.asarray(Image.open(tmp_path / "p" / f"x{i}_probability.png")).astype(np.float64) / 65535
        mask = np.asarray(Image.open(tmp_path / "p" / f"x{i}.png")) > 0
        assert prob.shape == (40, 30) and np.array_equal(
            mask[np.abs(prob - threshold) > 1e-4], (prob > threshold)[np.abs(prob - threshold) > 1e-4]
        )


def test_history_and_tensorboard_keep_the_unsupervised_terms_before_lambda(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config("method=cps", "train.epochs=3", "method.lambda_max=2")
    api.train(cfg, tmp_path / "run")
    folder = RunFolder(tmp_path / "run")
    with open(folder.history_path) as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        assert float(row["raw_cps"]) * float(row["weight"]) == pytest.approx(float(row["cps"]))
    # the same first update at another lambda: the raw term is the same loss, the weighted one scales
    one = ["train.epochs=1", "train.steps_per_epoch=1", "method.ramp=constant"]
    firsts = []
    for weight in (1, 3):
        api.train(tiny_config("method=cps", *one, f"method.lambda_max={weight}"), tmp_path / f"w{weight}")
        with open(RunFolder(tmp_path / f"w{weight}").history_path) as handle:
            firsts.append(next(csv.DictReader(handle)))
    assert float(firsts[0]["raw_cps"]) == pytest.approx(float(firsts[1]["raw_cps"]), rel=1e-6)
    assert float(firsts[1]["cps"]) == pytest.approx(3 * float(firsts[0]["cps"]), rel=1e-6)
    events = EventAccumulator(str(folder.tensorboard))
    events.Reload()
    logged = [e.value for e in events.Scalars("train/loss_cps")]
    assert logged == pytest.approx([float(r["raw_cps"]) for r in rows], rel=1e-5)
    assert "train/weighted_cps" in events.Tags()["scalars"] and "train/lambda" in events.Tags()["scalars"]
    # validation examples every five evaluated epochs (epoch 1 here): image | prediction | target
    (tag,) = [t for t in events.Tags()["images"] if t.startswith("val/examples")]
    shown = events.Images(tag)
    assert len(shown) == 1 and (shown[0].width, shown[0].height) == (3 * 32, 4 * 32)


def test_lambda_belongs_to_co_training_only_and_the_plot_names_every_line(tmp_path):
    from superdiffusion.monitor import draw_progress

    cfg = tiny_config("method=superdiffusion", "method.pretrain_epochs=2", "method.rounds=1", "method.lambda_max=0.5")
    api.train(cfg, tmp_path / "run")
    with open(RunFolder(tmp_path / "run").history_path) as handle:
        rows = list(csv.DictReader(handle))
    assert [r["phase"] for r in rows] == ["pretrain", "pretrain", "train", "train"]
    assert [r["weight"] for r in rows[:2]] == ["", ""]  # pretraining has no lambda
    assert all(float(r["weight"]) > 0 for r in rows[2:])

    def number(value):
        try:
            return float(value)
        except ValueError:
            return None

    history = [{"phase": r["phase"], **{k: number(v) for k, v in r.items() if k != "phase" and number(v) is not None}}
               for r in rows]  # fmt: skip
    figure = draw_progress(history)
    third = figure.axes[2]
    (line,) = [ln for ln in third.get_lines() if ln.get_label() == "lambda"]
    assert list(line.get_xdata()) == [3, 4]  # drawn over the co-training epochs only
    labels = [t.get_text() for t in third.get_legend().get_texts()]
    assert labels == ["lambda", "lr"]


def test_the_package_leaves_logging_levels_to_the_application_but_train_log_is_complete(tmp_path):
    import logging
    import subprocess
    import sys

    code = "import logging, superdiffusion.api; print(logging.getLogger('superdiffusion').level)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "0"
    package = logging.getLogger("superdiffusion")
    before = package.level
    package.setLevel(logging.WARNING)  # a library user who wants only warnings on the console
    try:
        api.train(tiny_config("method=supervised", "train.epochs=2"), tmp_path / "run")
    finally:
        package.setLevel(before)
    text = RunFolder(tmp_path / "run").log_path.read_text()
    assert "train epoch 1/2" in text and "train epoch 2/2" in text and "val dice_per_image" in text
