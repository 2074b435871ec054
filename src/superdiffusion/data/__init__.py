"""Datasets: folders of 2D images + masks, volumes, label regimes and augmentation."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from ..config import DataConfig
from ..errors import DataError
from .folder import Pair, layout_pairs, load_pairs, scan_folder
from .layouts import apply_dataset_json, read_dataset_json
from .splits import carve, choose_labeled

__all__ = ["SegmentationData", "Split", "build_data", "resolve_root", "Pair", "scan_folder"]

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


def _assign_splits(pairs: list[Pair], cfg: DataConfig, seed: int, validation: bool = True) -> dict[str, list[Pair]]:
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


def with_dataset_json(cfg: DataConfig) -> DataConfig:
    """``cfg`` with the classes, dimensionality and label reading of the folder's
    ``dataset.json`` (nnU-Net, MSD); other folders leave it unchanged."""
    if cfg.root.startswith("builtin:"):
        return cfg
    root = resolve_root(cfg.root)
    layout = read_dataset_json(root) if root.is_dir() else None
    return apply_dataset_json(cfg, layout) if layout is not None else cfg


def build_data(cfg: DataConfig, seed: int, validation: bool = True) -> SegmentationData:
    """Scan, check, load and split a dataset for one run (regime and seed); ``validation``
    as in :func:`_assign_splits`."""
    root = resolve_root(cfg.root)
    layout = read_dataset_json(root)
    if layout is not None:
        cfg = apply_dataset_json(cfg, layout)
    if cfg.spatial_dims == 3:
        from .volumes import build_volume_data

        data = build_volume_data(cfg, seed, validation, layout)
        data.class_names = layout.label_names if layout else None
        return data
    pairs = layout_pairs(layout, root) if layout is not None else scan_folder(root)
    by = _assign_splits(pairs, cfg, seed, validation)
    labeled_ids, unlabeled_ids = choose_labeled([p.id for p in by["train"]], cfg, seed)
    size = tuple(cfg.size) if cfg.size is not None else None  # None: native resolution, patches
    loaded = {
        name: load_pairs(group, size, cfg.num_classes, cfg.mask_mode, mask_threshold=cfg.mask_threshold)
        for name, group in by.items()
        if group
    }
    channels = loaded["train"]["channels"]
    for name, item in loaded.items():
        if item["channels"] != channels:
            raise DataError(f"{root}: {name} images have {item['channels']} channels, train images {channels}")
    extra = None
    if cfg.unlabeled_root:
        extra_pairs = [
            p for p in scan_folder(resolve_root(cfg.unlabeled_root), require_masks=False) if p.split == "train"
        ]
        extra = load_pairs(extra_pairs, size, cfg.num_classes, cfg.mask_mode, channels=channels)
    stats = dataset_stats(loaded["train"]["images"], cfg.normalize)

    def make(name: str, keep: list[str] | None = None) -> Split:
        if name not in loaded and size is None:
            return Split([], [], [])
        if name not in loaded:  # no validation split (paper protocol)
            return Split(torch.zeros((0, channels, *size)), torch.zeros((0, *size), dtype=torch.long), [])
        item, group = loaded[name], by[name]
        idx = [i for i, p in enumerate(group) if keep is None or p.id in keep]
        pick = (lambda x: [x[i] for i in idx]) if size is None else (lambda x: x[idx])  # noqa: E731
        return Split(
            normalize(pick(item["images"]), stats),
            pick(item["masks"]),
            [group[i].id for i in idx],
            [group[i] for i in idx],
            [item["sizes"][i] for i in idx],
        )

    unlabeled = make("train", set(unlabeled_ids))
    unlabeled.masks = None
    if extra is not None:
        more = normalize(extra["images"], stats)
        unlabeled.images = unlabeled.images + more if size is None else torch.cat([unlabeled.images, more])
        unlabeled.ids = unlabeled.ids + extra["ids"]
    return SegmentationData(
        labeled=make("train", set(labeled_ids)),
        unlabeled=unlabeled,
        val=make("val"),
        test=make("test"),
        channels=channels,
        num_classes=cfg.num_classes,
        spatial_dims=2,
        stats=stats,
        class_names=layout.label_names if layout else None,
    )
