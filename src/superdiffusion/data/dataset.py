"""The data every run gets, whatever its format: splits of normalised images and masks
(stacked tensors, or lists when images keep their own sizes), the data folder of the presets,
the normalisation, and the assignment of images to train/val/test."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from ..config import DataConfig
from ..errors import DataError
from .folder import Pair
from .splits import carve

TEST_SPLIT_SEED = 0  # the test set of a folder without split.csv is the same for every run


DATA_ENV = "SUPERDIFFUSION_DATA"  # the data folder of the dataset presets (default: ./data)

# how to fill $SUPERDIFFUSION_DATA/NAME for each preset, and where the official download lives
DATA_SOURCES = {
    "PH2": "superdiffusion import-dataset ph2 PH2_DOWNLOAD {path} (download: https://www.fc.up.pt/addi/ph2%20database.html)",
    "glas": "superdiffusion import-dataset glas GLAS_DOWNLOAD {path} "
    "(download: https://warwick.ac.uk/fac/cross_fac/tia/data/glascontest/)",
    "InP-Pupil": "put the InP pupil images in {path}/images and masks in {path}/masks, with a subject-disjoint "
    "split.csv (source: https://github.com/itmo-cv-lab/eye-tracking-dataset, folder PupilEye)",
    "Hippocampus3D": "put the MSD Task04 Hippocampus volumes in {path}/images and {path}/labels "
    "(download: http://medicaldecathlon.com)",
}


def data_folder() -> Path:
    return Path(os.environ.get(DATA_ENV) or "data").expanduser()


def resolve_root(root: str) -> Path:
    """``builtin:NAME`` -> the copy shipped in the package; ``data:NAME`` -> the folder NAME of
    the data folder (``$SUPERDIFFUSION_DATA``, default ``data/``); anything else is a path."""
    if root.startswith("builtin:"):
        path = Path(str(resources.files("superdiffusion") / "builtin" / root.split(":", 1)[1]))
        if not path.is_dir():
            raise DataError(f"{root}: no such built-in dataset")
        return path
    if root.startswith("data:"):
        name = root.split(":", 1)[1]
        path = data_folder() / name
        if not path.is_dir():
            how = DATA_SOURCES.get(name, "put the dataset there").format(path=path)
            raise DataError(
                f"{path}: dataset folder not found (the preset reads ${DATA_ENV}/{name}; ${DATA_ENV} is "
                f"{os.environ.get(DATA_ENV) or 'unset, so data/'}); to fill it: {how}"
            )
        return path
    return Path(root).expanduser()


def class_names(num_classes: int, declared: list[str] | None = None) -> list[str]:
    """``declared`` (from dataset.json), or background + foreground (binary) / class k."""
    if declared:
        return list(declared)
    return (
        ["background", "foreground"]
        if num_classes == 2
        else ["background"] + [f"class {k}" for k in range(1, num_classes)]
    )


@dataclass
class Split:
    """Images ``(N, C, *S)`` (normalised), masks ``(N, *S)`` or None, and their sources.
    Volumes of different sizes are lists of ``(C, *S)`` and ``(*S)`` tensors instead."""

    images: torch.Tensor
    masks: torch.Tensor | None
    ids: list[str]
    pairs: list[Pair] = field(default_factory=list)
    sizes: list[tuple[int, ...]] = field(default_factory=list)
    geometry: list = field(default_factory=list)  # volumes: affine and spacing of each

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class SegmentationData:
    labeled: Split
    unlabeled: Split
    val: Split
    test: Split
    channels: int
    num_classes: int
    spatial_dims: int
    stats: dict[str, list[float]]
    class_names: list[str] | None = None  # from dataset.json (nnU-Net, MSD)

    def summary(self) -> str:
        return (
            f"{len(self.labeled)} labeled + {len(self.unlabeled)} unlabeled training images, "
            f"{len(self.val)} validation, {len(self.test)} test"
        )


def normalize(images: torch.Tensor | list[torch.Tensor], stats: dict[str, list[float]]) -> torch.Tensor:
    """Apply the dataset's normalisation: ``(x - mean) / std`` per channel (a list: each
    ``(C, *S)`` image of different sizes)."""
    if isinstance(images, list):
        return [normalize(image[None], stats)[0] for image in images]
    shape = (1, -1) + (1,) * (images.dim() - 2)
    mean = torch.tensor(stats["mean"], dtype=images.dtype).view(shape)
    std = torch.tensor(stats["std"], dtype=images.dtype).view(shape)
    return (images - mean) / std


def dataset_stats(images: torch.Tensor, mode: str) -> dict[str, list[float]]:
    """minmax maps [0, 1] to [-1, 1]; zscore uses the training images' channel mean/std."""
    if isinstance(images, list):  # images of their own sizes: every pixel of every image
        images = torch.cat([image.flatten(1) for image in images], dim=1)[None]
    channels = images.shape[1]
    if mode == "minmax":
        return {"mean": [0.5] * channels, "std": [0.5] * channels}
    if mode == "zscore":
        dims = [0] + list(range(2, images.dim()))
        return {"mean": images.mean(dims).tolist(), "std": images.std(dims).clamp_min(1e-6).tolist()}
    raise DataError(f"data.normalize must be minmax or zscore for 2D images, got {mode!r}")


def assign_splits(pairs: list[Pair], cfg: DataConfig, seed: int, validation: bool = True) -> dict[str, list[Pair]]:
    """Train/val/test groups. ``validation``: carve a validation split from the training
    images when the folder names none (False under the paper's protocol, which selects on
    test and draws the labeled subset from all training images)."""
    by = {s: [p for p in pairs if p.split == s] for s in ("train", "val", "test")}
    if not any(p.split != "train" for p in pairs):  # no split.csv: a fixed test split
        keep, held = carve([p.id for p in pairs], cfg.test_fraction, TEST_SPLIT_SEED, stream=7)
        held_set = set(held)
        by["test"] = [p for p in pairs if p.id in held_set]
        by["train"] = [p for p in pairs if p.id not in held_set]
    if not by["val"] and validation:
        keep, held = carve([p.id for p in by["train"]], cfg.val_fraction, seed, stream=3)
        held_set = set(held)
        by["val"] = [p for p in by["train"] if p.id in held_set]
        by["train"] = [p for p in by["train"] if p.id not in held_set]
    for name in ("train", "test"):
        if not by[name]:
            raise DataError(f"{cfg.root}: the {name} split is empty")
    return by
