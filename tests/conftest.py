from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from superdiffusion.config import resolve

torch.set_num_threads(2)


# command-line settings of a one-update training on 32x32 images (for tests that call the CLI)
FAST = [
    "data.size=[32, 32]",
    "model.features=[8, 16]",
    "train.epochs=1",
    "train.steps_per_epoch=1",
    "train.batch_size=4",
    "train.labeled_batch_size=2",
    "train.threads=1",
]


def tiny_config(*overrides: str):
    """A configuration small enough for unit tests: 32x32 images, a 3-level UNet."""
    base = [
        "data.size=[32, 32]",
        "model.features=[8, 16, 32]",
        "train.epochs=2",
        "train.steps_per_epoch=2",
        "train.batch_size=4",
        "train.labeled_batch_size=2",
        "eval.batch_size=64",
    ]
    if "data.spatial_dims=3" in overrides:  # volumes train on patches: a data.size would be refused
        base = [b for b in base if not b.startswith("data.size=")]
    return resolve(base + list(overrides))


@pytest.fixture
def tiny_cfg():
    return tiny_config


def write_pair_folder(root, n=6, size=(24, 20), split=True):
    """A small synthetic dataset: bright squares on dark images, masks 0/255."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = size
        img = (rng.random((h, w, 3)) * 60).astype(np.uint8)
        mask = np.zeros((h, w), np.uint8)
        mask[4 : 10 + i % 4, 5:12] = 255
        img[mask > 0] += 150
        Image.fromarray(img).save(root / "images" / f"case{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"case{i}.png")
    if split:
        rows = ["id,split"] + [f"case{i},{'test' if i >= n - 2 else 'train'}" for i in range(n)]
        (root / "split.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def pair_folder(tmp_path):
    return write_pair_folder(tmp_path / "data")
