"""Configuration precedence: defaults < profile < dataset < method < --config < overrides."""

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
