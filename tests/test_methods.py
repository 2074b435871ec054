import numpy as np
import pytest
import torch

from superdiffusion.methods import METHODS, Batch, StepContext, build_method
from superdiffusion.methods.dtc import signed_distance


def _batch(b=4, size=16, labeled=2, dims=2):
    torch.manual_seed(0)
    spatial = (size,) * dims
    return Batch(torch.randn(b, 1, *spatial), (torch.rand(b, *spatial) > 0.6).long(), torch.arange(b) < labeled)


EXPECTED = {
    "superdiffusion": {"sup", "semi", "align", "recon"},
    "supervised": {"sup"},
    "em": {"sup", "entropy"},
    "mt": {"sup", "consistency"},
    "uamt": {"sup", "consistency"},
    "cct": {"sup", "consistency"},
    "urpc": {"sup", "consistency"},
    "cps": {"sup", "cps"},
    "dtc": {"sup", "sdf", "consistency"},
}


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("dims", [2, 3])
def test_every_method_gives_finite_named_losses_in_2d_and_3d(tiny_cfg, name, dims):
    cfg = tiny_cfg(f"method={name}", "method.rounds=1" if name == "superdiffusion" else "train.seed=0")
    method = build_method(cfg, 1, 2, dims)
    losses = method.losses(_batch(size=8 if dims == 3 else 16, dims=dims), StepContext("train", 0, 2, 0, 1.0))
    assert set(losses) == EXPECTED[name]
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    pred = method.eval().predict(torch.randn(2, 1, *(8,) * dims))
    assert pred.probs.shape == (2, 2, *(8,) * dims)


def test_signed_distance_of_a_known_square():
    mask = np.zeros((9, 9), bool)
    mask[2:7, 2:7] = True  # 5x5 square, centre (4, 4)
    sdf = signed_distance(mask)
    assert sdf[4, 4] == -1.0  # deepest inside point
    assert sdf[2, 2] == 0 and sdf[2, 4] == 0  # boundary
    assert sdf[0, 0] == 1.0  # farthest outside point
    assert (sdf[mask] <= 0).all() and (sdf[~mask] > 0).all()
    assert abs(sdf[4, 0] - 2 / np.hypot(2, 2)) < 1e-6  # 2 px from the square, max outside distance is the corner
    assert signed_distance(np.zeros((4, 4))).sum() == 0


def test_unknown_method_and_setting_are_clear_errors(tiny_cfg):
    from superdiffusion.errors import ConfigError

    with pytest.raises(ConfigError, match="available"):
        tiny_cfg("method=nope")
    with pytest.raises(ConfigError, match="unknown setting 'roundz'"):
        build_method(tiny_cfg("method.roundz=2"), 1, 2, 2)
