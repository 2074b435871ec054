"""The evaluation protocols: what each selects on, what it may be called, and the data
splits, noise seeds and ranges they rely on."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST as CLI_FAST
from conftest import tiny_config

from superdiffusion import api, cli, training
from superdiffusion import protocol as protocol_module
from superdiffusion.config import DataConfig
from superdiffusion.data import build_data
from superdiffusion.data.volumes import _normalize
from superdiffusion.errors import ConfigError
from superdiffusion.evaluation import health_flags, thresholds
from superdiffusion.experiments.report import aggregate, collect, markdown
from superdiffusion.inference import predict_tensor
from superdiffusion.methods import build_method

FAST = ["train.epochs=1", "train.steps_per_epoch=1", "method=supervised", "data.labeled_percent=20"]


def test_paper_protocol_has_no_validation_carve_out_and_counts_labels_on_all_training_images():
    honest = build_data(DataConfig(labeled_percent=10), seed=0)
    paper = build_data(DataConfig(labeled_percent=10), seed=0, validation=False)
    n_train = len(paper.labeled) + len(paper.unlabeled)
    assert len(paper.val) == 0 and n_train == len(honest.labeled) + len(honest.unlabeled) + len(honest.val)
    assert len(paper.labeled) == int(np.ceil(n_train * 10 / 100)) == 16  # Table 1's count for PH2 at 10 %
    assert len(honest.labeled) == 15 and len(honest.val) == 16
    assert paper.test.ids == honest.test.ids


def test_evaluate_never_calls_test_selected_numbers_honest(tmp_path):
    api.train(tiny_config(*FAST, "eval.protocol=paper"), tmp_path / "paper")
    with pytest.raises(ConfigError, match="cannot be reported as honest"):
        api.evaluate(tmp_path / "paper", protocol="honest")
    again = api.evaluate(tmp_path / "paper")
    assert again["protocol"] == "paper" and again["counts"]["val"] == 0
    honest = api.train(tiny_config(*FAST), tmp_path / "honest")
    assert honest["protocol"] == "honest" and honest["selection"]["threshold_split"] == "val"
    mixed = api.evaluate(tmp_path / "honest", protocol="paper")
    assert mixed["protocol"] == "paper-threshold"  # checkpoint from val, threshold from test
    assert mixed["selection"] | {"threshold": None} == {
        "split": "val",
        "metric": "dice_per_image",
        "epoch": 1,
        "threshold": None,
        "threshold_split": "test",
    }
    assert mixed["written_to"] == str(tmp_path / "honest" / "evaluation-paper-threshold-k1.json")
    assert json.loads(Path(mixed["written_to"]).read_text())["protocol"] == "paper-threshold"
    out = tmp_path / "scores" / "honest.json"
    assert cli.main(["evaluate", str(tmp_path / "honest"), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["protocol"] == "honest"
    assert cli.main(["evaluate", str(tmp_path / "honest"), "--out", str(out)]) == 2  # never overwritten


def test_honest_protocol_reads_the_test_split_only_for_the_final_scoring(tmp_path, monkeypatch):
    cfg = tiny_config(*FAST, "train.epochs=2")
    test_ids = set(build_data(cfg.data, cfg.train.seed).test.ids)
    seen = []
    state = {"fitted": False}
    original_predict, original_fit = protocol_module.predict_tensor, training.Trainer.fit

    def spy_predict(method, images, *args, **kwargs):
        seen.append((state["fitted"], images.clone()))
        return original_predict(method, images, *args, **kwargs)

    def spy_fit(self, *args, **kwargs):
        assert not set(self.data.val.ids) & test_ids
        out = original_fit(self, *args, **kwargs)
        state["fitted"] = True
        return out

    monkeypatch.setattr(protocol_module, "predict_tensor", spy_predict)  # every split is scored there
    monkeypatch.setattr(training.Trainer, "fit", spy_fit)
    api.train(cfg, tmp_path / "run")
    data = build_data(cfg.data, cfg.train.seed)
    during = [images for fitted, images in seen if not fitted]
    # validation images only: the whole split every epoch (and the first few shown in TensorBoard)
    assert during and all(torch.equal(images, data.val.stack(slice(0, len(images)))) for images in during)
    assert sum(len(images) == len(data.val) for images in during) == 2
    after = [images for fitted, images in seen if fitted]
    assert len(after) == 1 and torch.equal(after[0], data.test.stack())  # test once, after training


def test_report_uses_pooled_scores_for_test_selected_rows(tmp_path):
    for protocol, per_image, pooled in [("honest", 0.8, 0.6), ("paper", 0.7, 0.9)]:
        folder = tmp_path / protocol / "ph2" / "cps" / "p5-s0"
        folder.mkdir(parents=True)
        scores = {
            "dice_per_image": per_image,
            "jaccard_per_image": per_image,
            "dice_pooled": pooled,
            "jaccard_pooled": pooled,
        }
        result = {"method": "cps", "dataset": "ph2", "labeled_percent": 5, "seed": 0, "protocol": protocol}
        folder.joinpath("results.json").write_text(json.dumps(result | {"test": {"resized": scores}}))
    table = {e["protocol"]: e for e in aggregate(collect([tmp_path]))}
    assert table["honest"]["dice"] == pytest.approx(80.0) and table["paper"]["dice"] == pytest.approx(90.0)
    assert "pooled for test-selected rows" in markdown(list(table.values()))


def test_diffusion_inputs_share_the_minus_one_one_range():
    volume = torch.from_numpy(np.random.default_rng(0).gamma(2.0, 300.0, (1, 20, 20, 20)).astype(np.float32))
    scaled = _normalize(volume, "percentile")
    assert scaled.min() == -1 and scaled.max() == 1
    low, high = np.percentile(volume.numpy(), [0.5, 99.5])
    inside = (volume > low) & (volume < high)
    expected = (volume[inside] - low) / (high - low) * 2 - 1
    assert torch.allclose(scaled[inside], expected, atol=1e-5)
    builtin = build_data(DataConfig(labeled_percent=10), seed=0)
    assert builtin.labeled.stack().min() >= -1 and builtin.labeled.stack().max() <= 1
    for mode, dims in (("zscore", 2), ("per_image", 3)):
        with pytest.raises(ConfigError, match="unbounded"):  # refused with the settings, before any data is read
            tiny_config(f"data.normalize={mode}", f"data.spatial_dims={dims}")
    build_method(tiny_config("method=cps", "data.normalize=zscore"), 1, 2, 2)  # baselines take any range


def test_pure_noise_pretraining_input_needs_an_image_space_loss():
    with pytest.raises(ConfigError, match="recon_space=image"):
        build_method(tiny_config("method.pretrain_image_input=noise", "method.recon_space=noise"), 1, 2, 2)
    build_method(tiny_config("method.pretrain_image_input=noise", "method.recon_space=image"), 1, 2, 2)


def test_every_chunk_and_window_gets_its_own_reproducible_noise():
    method = build_method(tiny_config(), 1, 2, 2).eval()
    images = torch.randn(1, 1, 16, 16).repeat(4, 1, 1, 1)  # four identical images
    first = predict_tensor(method, images, torch.device("cpu"), batch_size=2).probs
    assert torch.equal(first, predict_tensor(method, images, torch.device("cpu"), batch_size=2).probs)
    assert not torch.allclose(first[0], first[2])  # different chunks: different noise
    volume_method = build_method(tiny_config("data.spatial_dims=3"), 1, 2, 3).eval()
    seeds = []
    original = volume_method.predict

    def spy(x, samples=1, generator=None, step=None, **kw):
        seeds.append(generator.initial_seed())
        return original(x, samples, generator, step, **kw)

    volume_method.predict = spy
    predict_tensor(volume_method, torch.randn(1, 1, 16, 16, 16), torch.device("cpu"), 1, 1, (8, 8, 8), 0.5)
    assert len(seeds) > 1 and len(set(seeds)) == len(seeds)
    again = list(seeds)
    seeds.clear()
    predict_tensor(volume_method, torch.randn(1, 1, 16, 16, 16), torch.device("cpu"), 1, 1, (8, 8, 8), 0.5)
    assert seeds == again


def test_collapse_flags_by_hand():
    grid = thresholds(0.0, 0.9, 0.02)
    healthy = {"score": 0.8, "threshold": 0.5, "predicted_fraction": 0.2, "true_fraction": 0.22}
    history = [{"val_dice_per_image": 0.8, "threshold": 0.5}]
    assert health_flags(history, healthy, grid, "val_dice_per_image") == []
    painted = dict(healthy, threshold=0.0, predicted_fraction=1.0, true_fraction=0.1)
    assert health_flags(history, painted, grid, "val_dice_per_image") == ["threshold_at_edge", "all_foreground"]
    empty = dict(healthy, predicted_fraction=0.001, true_fraction=0.08)
    assert health_flags(history, empty, grid, "val_dice_per_image") == ["all_background"]
    sinking = history + [{"val_dice_per_image": 0.5, "threshold": 0.06}]
    assert health_flags(sinking, healthy, grid, "val_dice_per_image") == ["degrading"]
    recovering = history + [{"val_dice_per_image": 0.5, "threshold": 0.5}]
    assert health_flags(recovering, healthy, grid, "val_dice_per_image") == []


def test_collapse_flags_reach_results_and_the_report(tmp_path):
    # one update of the paper's method on 32x32 images collapses: its predictions paint nearly
    # every pixel foreground, and the pseudo-labels on unlabeled images are almost all foreground
    run = tmp_path / "ph2" / "superdiffusion" / "p10-s0"
    overrides = ["method=superdiffusion", *CLI_FAST, "method.pretrain_epochs=0", "method.rounds=1"]
    assert cli.main(["train", *overrides, "--out", str(run)]) == 0
    saved = json.loads((run / "results.json").read_text())
    assert {"all_foreground", "pseudo_labels_foreground"} <= set(saved["health"]["flags"])
    assert saved["health"]["ok"] is False
    assert "(flagged: 1/1 runs)" in markdown(aggregate(collect([tmp_path])))


def test_a_run_trained_on_a_gpu_is_evaluated_and_predicts_on_this_machine(tmp_path):
    from superdiffusion import checkpoint
    from superdiffusion.cli import main

    api.train(tiny_config(*FAST), tmp_path / "run")
    model = tmp_path / "run" / "model.pt"
    state = checkpoint.load(model)
    state["config"]["train"]["device"] = "cuda:0"  # as saved by a GPU training
    checkpoint.save_atomic(state, model)
    assert api.evaluate(tmp_path / "run")["protocol"] == "honest"
    source = tmp_path / "in"
    source.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(source / "a.png")
    assert main(["predict", str(tmp_path / "run"), str(source), str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert (tmp_path / "out" / "a.png").exists()
