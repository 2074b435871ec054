"""Resuming a run: extending ``train.epochs`` continues it; any other changed setting is refused."""

import torch
import yaml

from superdiffusion import checkpoint, cli

SMALL = [
    "method=supervised",
    "data.size=[32, 32]",
    "model.features=[8, 16, 32]",
    "train.steps_per_epoch=2",
    "train.batch_size=4",
    "train.labeled_batch_size=2",
    "train.lr_step=2",
    "train.threads=1",
    "train.keep_state=true",
]


def _train(*args: str) -> int:
    return cli.main(["train", *args])


def _weights(run):
    return checkpoint.load(run / "checkpoints" / "last.pt")["model"]


def test_resume_with_more_epochs_continues_as_if_planned_from_the_start(tmp_path):
    assert _train(*SMALL, "train.epochs=3", "--out", str(tmp_path / "straight")) == 0
    assert _train(*SMALL, "train.epochs=1", "--out", str(tmp_path / "run")) == 0
    assert _train(*SMALL, "train.epochs=3", "--out", str(tmp_path / "run"), "--resume") == 0
    state = checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert [h["epoch"] for h in state["history"] if h["phase"] == "train"] == [1, 2, 3]
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["epochs"] == 3
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "run")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_only_the_new_epochs_keeps_the_runs_other_settings(tmp_path):
    assert _train(*SMALL, "train.epochs=1", "--out", str(tmp_path / "run")) == 0
    assert _train("train.epochs=2", "--out", str(tmp_path / "run"), "--resume") == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["method"]["name"] == "supervised" and saved["train"]["epochs"] == 2
    assert saved["data"]["size"] == [32, 32]


def test_resume_refuses_other_changed_settings_and_names_them(tmp_path, capsys):
    assert _train(*SMALL, "train.epochs=1", "--out", str(tmp_path / "run")) == 0
    before = (tmp_path / "run" / "config.yaml").read_text()
    capsys.readouterr()
    code = _train(*SMALL, "train.epochs=2", "train.lr=0.001", "data.labeled_percent=20", "--out",
                  str(tmp_path / "run"), "--resume")  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "data.labeled_percent (10.0 -> 20.0)" in err and "train.lr (0.01 -> 0.001)" in err
    assert len(err.strip().splitlines()) == 1
    assert (tmp_path / "run" / "config.yaml").read_text() == before  # nothing changed


def test_resume_refuses_fewer_epochs_than_already_trained(tmp_path, capsys):
    assert _train(*SMALL, "train.epochs=2", "--out", str(tmp_path / "run")) == 0
    capsys.readouterr()
    assert _train(*SMALL, "train.epochs=1", "--out", str(tmp_path / "run"), "--resume") == 2
    assert "already trained 2" in capsys.readouterr().err


def test_a_finished_run_without_its_training_state_says_how_to_extend_next_time(tmp_path, capsys):
    lean = [o for o in SMALL if o != "train.keep_state=true"]
    assert _train(*lean, "train.epochs=1", "--out", str(tmp_path / "run")) == 0
    assert not (tmp_path / "run" / "checkpoints").exists()
    capsys.readouterr()
    assert _train(*lean, "train.epochs=2", "--out", str(tmp_path / "run"), "--resume") == 2
    assert "train.keep_state=true" in capsys.readouterr().err
