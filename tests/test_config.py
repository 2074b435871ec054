"""Configuration precedence: defaults < profile < dataset < method < --config < overrides."""

import math

import pytest
import yaml

from superdiffusion.config import resolve
from superdiffusion.errors import ConfigError


def _yaml(path, content):
    path.write_text(yaml.safe_dump(content))
    return str(path)


def test_each_layer_overrides_the_one_before(tmp_path):
    # every layer sets train.lr, and each one more key than the next layer sets
    profile = _yaml(tmp_path / "p.yaml", {"train": {"lr": 1.0, "seed": 1, "epochs": 1, "batch_size": 1, "lr_step": 1}})
    dataset = _yaml(tmp_path / "d.yaml", {"train": {"lr": 2.0, "seed": 2, "epochs": 2, "batch_size": 2}})
    method = _yaml(tmp_path / "m.yaml", {"method": {"name": "cps"}, "train": {"lr": 3.0, "seed": 3, "epochs": 3}})
    user = _yaml(tmp_path / "u.yaml", {"train": {"lr": 4.0, "seed": 4}})
    cfg = resolve([f"profile={profile}", f"dataset={dataset}", f"method={method}", "train.lr=5"], user)
    t = cfg.train
    assert (t.lr, t.seed, t.epochs, t.batch_size, t.lr_step) == (5.0, 4, 3, 2, 1)
    assert t.weight_decay == 5e-5  # the default, set by no layer
    assert cfg.method.name == "cps"


def test_a_profile_setting_for_one_method_beats_the_methods_file_but_not_the_user():
    assert resolve([]).method.lambda_max == 0.1  # the default profile's value for the paper's method
    assert resolve(["profile=paper"]).method.lambda_max == 5.0  # the paper's settings stay reachable
    assert resolve(["method.lambda_max=2"]).method.lambda_max == 2.0
    assert resolve(["method=cps"]).method.lambda_max == 0.1  # CPS's own reference value


def test_presets_in_the_config_file_lose_to_the_command_line(tmp_path):
    user = _yaml(tmp_path / "u.yaml", {"method": "cps", "train": {"seed": 7}})
    assert resolve([], user).method.name == "cps"
    assert resolve(["method=mt"], user).method.name == "mt"
    with pytest.raises(ConfigError, match="unknown key train.sed"):
        resolve(["train.sed=1"])


def test_every_error_is_one_line_naming_its_layer(tmp_path):
    user = _yaml(tmp_path / "u.yaml", {"train": {"epochs": 0}})
    with pytest.raises(ConfigError, match=r"u.yaml: train.epochs: input should be greater than or equal to 1; got 0"):
        resolve([], user)
    with pytest.raises(ConfigError, match="command line: eval.protocol must be one of honest or paper; got 'fair'"):
        resolve(["eval.protocol=fair"])
    with pytest.raises(ConfigError, match="method=nope: unknown method 'nope'; available: supervised, em"):
        resolve(["method=nope"])
    with pytest.raises(ConfigError, match="unknown setting 'rounds' of method cps; its settings: lambda_max"):
        resolve(["method=cps", "method.rounds=2"])  # the paper's method's setting, not CPS's
    with pytest.raises(ConfigError, match="eval.inference_t=1000 is outside the 1000 diffusion steps"):
        resolve(["eval.inference_t=1000"])  # checked across sections, before anything runs
    for bad in (["method.rounds=2.5"], ["train.device=gpu"], ["data.size=[64]"], ["model.norm=layer"]):
        with pytest.raises(ConfigError) as err:
            resolve(bad)
        assert "\n" not in str(err.value)


def test_method_defaults_come_from_the_method_and_the_profile_only():
    from superdiffusion.method_settings import SETTINGS

    for name, settings in SETTINGS.items():
        cfg = resolve([f"method={name}", "profile=paper"])
        assert type(cfg.method) is settings
        own = settings()  # the reference's lambda and ramp live on the method's settings class
        assert (cfg.method.lambda_max, cfg.method.ramp) == (own.lambda_max, own.ramp)
    assert resolve(["method=dtc"]).method.lambda_max == 1.0
    assert resolve(["method=supervised"]).method.ramp == "constant"
    # the cpu profile lowers the paper's method's lambda (README, "Thin structures"), and only its
    assert resolve(["method=superdiffusion"]).method.lambda_max == 0.1
    assert resolve(["method=superdiffusion", "profile=paper"]).method.lambda_max == 5.0


def test_command_line_values_take_the_fields_types():
    cfg = resolve(
        ["data.spatial_dims=3", "method.x0_clip=1e-1", "train.amp=true", "data.name=123", "data.patch_size=[64, 64, 32]"]
    )
    assert cfg.data.spatial_dims == 3 and cfg.method.x0_clip == 0.1 and cfg.train.amp is True
    assert cfg.data.name == "123" and cfg.data.patch_size == [64, 64, 32]
    assert resolve(["data.unlabeled_root=null"]).data.unlabeled_root is None


def test_saved_configs_of_older_runs_still_load():
    from superdiffusion.config import from_dict

    old = resolve(["method=superdiffusion"]).to_dict()
    method = old["method"]
    old["method"] = {k: method[k] for k in ("name", "lambda_max", "ramp", "lambda_schedule", "supervised_loss")}
    old["method"]["params"] = {"rounds": 3, "pretrain_epochs": 1}  # the layout before the typed sections
    old["train"]["max_steps_per_epoch"] = old["train"].pop("steps_per_epoch")
    cfg = from_dict(old)
    assert (cfg.method.rounds, cfg.method.pretrain_epochs, cfg.train.steps_per_epoch) == (3, 1, 50)
    assert cfg.method.timesteps == 1000  # a setting the old record did not hold takes its default


def test_a_method_is_built_from_its_own_settings_and_a_unet_factory():
    import torch

    from superdiffusion.method_settings import CPSSettings, SuperDiffusionSettings
    from superdiffusion.methods import METHODS
    from superdiffusion.nn import UNetFactory

    unets = UNetFactory(spatial_dims=2, features=(4, 8))
    cps = METHODS["cps"](CPSSettings(), unets, channels=1, num_classes=2)
    assert cps.weight(10, 10) == pytest.approx(0.1)  # its reference's sigmoid ramp to 0.1
    assert cps.weight(5, 10) == pytest.approx(0.1 * math.exp(-5 * 0.25))
    sd = METHODS["superdiffusion"](SuperDiffusionSettings(rounds=1, pretrain_epochs=-1), unets, 1, 2)
    assert [(p.name, p.epochs) for p in sd.phases(8)] == [("pretrain", 2), ("train", 8)]
    images = torch.randn(2, 1, 8, 8)
    draw = lambda seed: sd.eval().predict(images, 1, torch.Generator().manual_seed(seed), step=999).probs  # noqa: E731
    assert torch.equal(draw(1), draw(1)) and not torch.equal(draw(1), draw(2))
    with pytest.raises(ConfigError, match="needs SuperDiffusionSettings"):
        METHODS["superdiffusion"](CPSSettings(), unets, 1, 2)


def test_the_resolved_config_says_which_layer_set_lambda(tmp_path):
    from superdiffusion import api

    assert resolve([]).origin("method.lambda_max") == "profile cpu"
    assert resolve(["method.lambda_max=0.3"]).origin("method.lambda_max") == "command line"
    assert resolve(["method=cps"]).origin("method.lambda_max") == "default"
    paper = resolve(["method=cps", "method.lambda_schedule=paper"])
    assert paper.method.lambda_max == 5 and paper.origin("method.lambda_max") == "method.lambda_schedule=paper"
    cfg = resolve(["method=cps", "data.size=[32, 32]", "model.features=[8, 16]", "train.epochs=1",
                   "train.steps_per_epoch=1", "train.batch_size=4", "train.labeled_batch_size=2"])  # fmt: skip
    api.train(cfg, tmp_path / "run")
    assert "lambda: max 0.1 (default), ramp sigmoid (default), for cps" in (tmp_path / "run" / "train.log").read_text()


def test_quick_takes_the_method_settings_from_cpu_which_owns_them(tmp_path):
    from superdiffusion.config import builtin_config, load_yaml

    quick, cpu = resolve(["profile=quick"]).method, resolve(["profile=cpu"]).method
    assert load_yaml(builtin_config("profiles", "quick"))["extends"] == "cpu"
    assert set(load_yaml(builtin_config("profiles", "quick"))["methods"]["superdiffusion"]) == {"pretrain_epochs"}
    assert quick.model_dump(exclude={"pretrain_epochs"}) == cpu.model_dump(exclude={"pretrain_epochs"})
    assert (quick.pretrain_epochs, cpu.pretrain_epochs) == (3, 4)
    assert resolve(["profile=quick"]).train.batch_size == 8  # from cpu
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"extends: {loop}\n")
    with pytest.raises(ConfigError, match="extends itself"):
        resolve([f"profile={loop}"])


def test_mask_values_name_one_grey_value_per_class():
    cfg = resolve(["data.mask_mode=index", "data.num_classes=3", "data.mask_values=[0, 128, 255]"])
    assert cfg.data.mask_values == [0, 128, 255]
    with pytest.raises(
        ConfigError, match="data.mask_values names the value of each class: it needs data.mask_mode=index"
    ):
        resolve(["data.num_classes=3", "data.mask_values=[0, 128, 255]"])
    with pytest.raises(ConfigError, match=r"needs 3 distinct values, one per class .*got \[0, 128, 128\]"):
        resolve(["data.mask_mode=index", "data.num_classes=3", "data.mask_values=[0, 128, 128]"])


def test_runs_of_a_users_folder_are_named_after_it_planned_or_not():
    """With the plan off (or a dataset.json folder before it was planned) runs went to
    runs/ph2/..., the built-in data's name, mixing a user's runs with the quick start's."""
    assert resolve(["data.root=/data/My Lungs (v2)", "data.plan=false"]).data.name == "My-Lungs-v2-"
    assert resolve(["data.root=/data/lungs", "data.plan=false", "data.name=mine"]).data.name == "mine"
    assert resolve([]).data.name == "ph2" and resolve(["dataset=pupil"]).data.name == "pupil"


def test_a_profiles_pretraining_keeps_its_share_of_a_shorter_or_longer_run():
    """The cpu profile pretrains 4 of its 20 epochs: a 2-epoch run pretrains 1 (was: 4, twice
    its training), a 40-epoch run 8; a length set anywhere else is kept, and the origin says so."""
    assert resolve([]).method.pretrain_epochs == 4
    short = resolve(["train.epochs=2"])
    assert short.method.pretrain_epochs == 1 and "scaled to train.epochs" in short.origin("method.pretrain_epochs")
    assert resolve(["train.epochs=40"]).method.pretrain_epochs == 8
    assert resolve(["train.epochs=2", "method.pretrain_epochs=3"]).method.pretrain_epochs == 3
    assert resolve(["profile=quick", "train.epochs=18"]).method.pretrain_epochs == 6
    assert resolve(["method.pretrain_epochs=0", "train.epochs=2"]).method.pretrain_epochs == 0


# how each data setting acts in the 2D build, the 3D build and an nnU-Net or MSD folder: used,
# refused with one line when it would do nothing, or said (a warning); a new setting must say
DATA_SETTINGS = {
    "name": "used everywhere: the run folder's name",
    "root": "used everywhere",
    "spatial_dims": "used everywhere; dataset.json's value wins, a contradicting one is refused",
    "size": "2D: used; 3D: refused when given (volumes train on patches)",
    "patch_size": "3D and 2D at native size: used; 2D resized: said (a sweep may set both)",
    "num_classes": "used everywhere; dataset.json's value wins, a contradicting one is refused",
    "mask_mode": "used everywhere; dataset.json folders take binary or index only",
    "mask_threshold": "threshold mode: used; any other mode: refused",
    "mask_values": "index mode: used everywhere",
    "normalize": "used everywhere (each mode defined for 2D and volumes)",
    "labeled_percent": "used everywhere (unless labeled_ids)",
    "val_fraction": "used everywhere",
    "test_fraction": "used everywhere without split.csv",
    "group_column": "used everywhere",
    "unlabeled_root": "used everywhere (2D images; 3D volumes, was dropped)",
    "masks": "2D and 3D folders: used; dataset.json folders: refused",
    "labeled_ids": "used everywhere",
    "plan": "used everywhere",
}


def test_every_data_setting_says_how_each_build_treats_it():
    from superdiffusion.config import DataConfig

    assert set(DataConfig.model_fields) == set(DATA_SETTINGS)


def test_a_data_setting_that_would_do_nothing_is_refused(tmp_path):
    import json

    import numpy as np
    from PIL import Image

    from superdiffusion.data import build_data
    from superdiffusion.errors import ConfigError, DataError

    with pytest.raises(ConfigError, match=r"data.size=\[64, 64\] applies to 2D images"):
        resolve(["data.spatial_dims=3", "data.size=[64, 64]"])
    assert resolve(["data.spatial_dims=3", "data.size=null"]).data.size is None
    root = tmp_path / "Dataset001_Toy"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(4):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(root / "imagesTr" / f"c{i}_0000.png")
        Image.fromarray(np.eye(16, dtype=np.uint8)).save(root / "labelsTr" / f"c{i}.png")
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "x"}, "labels": {"background": 0, "a": 1}, "file_ending": ".png"})
    )
    with pytest.raises(DataError, match="names its labels folder itself; drop data.masks=labelsTr"):
        build_data(resolve([f"data.root={root}", "data.masks=labelsTr", "data.plan=false"]).data, 0)
