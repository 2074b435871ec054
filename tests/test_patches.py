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
    from superdiffusion.cli import _table  # the summary says where each score was taken

    assert "test [at native resolution] dice" in _table(patches) and "test [at 32x32] dice" in _table(resized)
    assert "test [at each image's own size] dice" in _table(resized)
    assert native > 0.8 and native > at_native + 0.2, (native, at_native)
    written = api.predict(tmp_path / "patches", root / "images" / "l9.png", tmp_path / "pred")
    predicted = np.asarray(Image.open(written[0])) > 0
    truth = np.asarray(Image.open(root / "masks" / "l9.png")) > 0
    assert predicted.shape == truth.shape == (96, 112)
    assert 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum()) > 0.8


def test_native_resolution_needs_a_2d_patch_size():
    with pytest.raises(ConfigError, match=r"data.size=null trains on 2D patches.*data.patch_size=\[H, W\]"):
        tiny_config("data.size=null")  # the default patch size is the volumes' [96, 96, 80]


def test_per_image_normalisation_of_2d_images(tmp_path):
    """A 16-bit image using a small part of its range: percentile maps each image's own 0.5-99.5
    percentiles to [-1, 1], per_image gives each image mean 0 and std 1; predict applies the same."""
    import numpy as np
    import torch
    from conftest import tiny_config
    from PIL import Image

    from superdiffusion.data import build_data
    from superdiffusion.inference import predict_image_file, predict_tensor
    from superdiffusion.methods import build_method

    root = tmp_path / "xray"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        mask = np.zeros((32, 32), np.uint8)
        mask[8:20, 6 + i : 18 + i] = 255
        image = (1000 + 300 * i + rng.normal(0, 40, (32, 32)) + (mask > 0) * 800).astype(np.uint16)
        Image.fromarray(image).save(root / "images" / f"x{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"x{i}.png")
    (root / "split.csv").write_text(
        "id,split\n" + "".join(f"x{i},{['train', 'val', 'test'][(i > 2) + (i > 3)]}\n" for i in range(6))
    )
    common = [f"data.root={root}", "data.labeled_percent=50", "method=supervised"]
    cfg = tiny_config(*common, "data.normalize=percentile")
    data = build_data(cfg.data, 0)
    for image_id, image in zip(data.test.ids, data.test.images):
        raw = np.asarray(Image.open(root / "images" / f"{image_id}.png")).astype(np.float64) / 65535
        low, high = np.percentile(raw, [0.5, 99.5])
        expected = (np.clip(raw, low, high) - low) / (high - low) * 2 - 1
        assert np.allclose(image[0].numpy(), expected, atol=1e-5)  # 32x32: no resize
    assert data.stats == {"mean": [0.0], "std": [1.0]}
    per_image = build_data(tiny_config(*common, "data.normalize=per_image").data, 0)
    for image in per_image.labeled.images:
        assert float(image.mean()) == pytest.approx(0, abs=1e-5) and float(image.std()) == pytest.approx(1, abs=1e-4)

    torch.manual_seed(0)
    method = build_method(cfg, 1, 2, 2).eval()
    path = root / "images" / f"{data.test.ids[0]}.png"
    written = predict_image_file(method, cfg, data.info(), path, tmp_path, 1, 0.5, torch.device("cpu"), True)
    saved = np.asarray(Image.open(written[-1])).astype(np.float64) / 65535
    direct = predict_tensor(method, data.test.stack(slice(0, 1)), torch.device("cpu"), 8, 1, seed=0)
    assert np.abs(saved - direct.probs[0, 1].numpy()).max() < 1e-4  # the 16-bit PNG's rounding
