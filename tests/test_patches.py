"""2D images at their own resolution: training on random patches, prediction by sliding windows."""

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from superdiffusion import api
from superdiffusion.errors import ConfigError


def write_lines(root, n=10, size=(96, 112)):
    """Bright 1-2 pixel lines on a dark, noisy background; the masks are the lines."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        mask = np.zeros(size, np.uint8)
        for _ in range(4):
            if rng.random() < 0.5:
                row = int(rng.integers(4, size[0] - 6))
                mask[row : row + 1 + i % 2, :] = 1
            else:
                col = int(rng.integers(4, size[1] - 6))
                mask[:, col : col + 1 + i % 2] = 1
        image = (rng.random(size) * 50 + mask * 170).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"l{i}.png")
        Image.fromarray(mask * 255).save(root / "masks" / f"l{i}.png")
    rows = ["id,split"] + [f"l{i},{'test' if i >= n - 3 else 'train'}" for i in range(n)]
    (root / "split.csv").write_text("\n".join(rows) + "\n")
    return root


def test_patches_keep_thin_lines_that_resizing_loses(tmp_path):
    root = write_lines(tmp_path / "lines")
    common = [f"data.root={root}", "method=supervised", "data.labeled_percent=100", "train.epochs=6"]
    common += ["train.steps_per_epoch=6", "train.lr_step=10", "data.val_fraction=0.2"]
    resized = api.train(tiny_config(*common, "data.size=[32, 32]"), tmp_path / "resized")
    patches = api.train(tiny_config(*common, "data.size=null", "data.patch_size=[32, 32]"), tmp_path / "patches")
    at_native = resized["test"]["original"]["dice_per_image"]  # predicted at 32x32, scored at 96x112
    native = patches["test"]["resized"]["dice_per_image"]  # no resizing at all: scored at 96x112
    assert "original" not in patches["test"]
    assert native > 0.8 and native > at_native + 0.2, (native, at_native)
    written = api.predict(tmp_path / "patches", root / "images" / "l9.png", tmp_path / "pred")
    predicted = np.asarray(Image.open(written[0])) > 0
    truth = np.asarray(Image.open(root / "masks" / "l9.png")) > 0
    assert predicted.shape == truth.shape == (96, 112)
    assert 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum()) > 0.8


def test_native_resolution_needs_a_2d_patch_size():
    with pytest.raises(ConfigError, match=r"data.size=null trains on 2D patches.*data.patch_size=\[H, W\]"):
        tiny_config("data.size=null")  # the default patch size is the volumes' [96, 96, 80]
