"""Datasets: folders of 2D images + masks, volumes, label regimes and augmentation."""

from __future__ import annotations

import logging

from ..config import DataConfig
from ..errors import DataError
from .dataset import (
    DATA_ENV,
    DATA_SOURCES,
    SegmentationData,
    Split,
    assign_splits,
    check_inside,
    check_memory,
    data_folder,
    dataset_stats,
    normalize,
    normalize_cases,
    normalize_each,
    resolve_root,
    set_aside_unlabeled,
)
from .folder import Pair, dataset_channels, image_pixels, layout_pairs, load_pairs, scan_folder
from .layouts import apply_dataset_json, read_dataset_json
from .splits import choose_labeled
from .volumes import build_volume_data

LOG = logging.getLogger("superdiffusion")

__all__ = [
    "DATA_ENV",
    "DATA_SOURCES",
    "Pair",
    "SegmentationData",
    "Split",
    "build_data",
    "data_folder",
    "normalize",
    "normalize_cases",
    "normalize_each",
    "resolve_root",
    "scan_folder",
]


def with_dataset_json(cfg: DataConfig) -> DataConfig:
    """``cfg`` with the classes, dimensionality and label reading of the folder's
    ``dataset.json`` (nnU-Net, MSD); other folders leave it unchanged."""
    if cfg.root.startswith("builtin:"):
        return cfg
    root = resolve_root(cfg.root)
    layout = read_dataset_json(root) if root.is_dir() else None
    return apply_dataset_json(cfg, layout) if layout is not None else cfg


def build_data(cfg: DataConfig, seed: int, validation: bool = True, recorded: dict | None = None) -> SegmentationData:
    """Scan, check, load and split a dataset for one run (regime and seed); ``validation``
    as in :func:`_assign_splits`; ``recorded``: a run's ``splits.json``, whose splits are used
    as they were (images added to the folder since are not)."""
    root = resolve_root(cfg.root)
    layout = read_dataset_json(root)
    if layout is not None:
        cfg = apply_dataset_json(cfg, layout)
        if cfg.masks is not None:  # its labels are where dataset.json says: the setting would do nothing
            raise DataError(
                f"{root / 'dataset.json'}: names its labels folder itself; drop data.masks={cfg.masks}"
            )
    if cfg.spatial_dims == 3:
        data = build_volume_data(cfg, seed, validation, layout, recorded)
        data.class_names = layout.label_names if layout else None
        return data
    pairs = layout_pairs(layout, root) if layout is not None else scan_folder(root, masks=cfg.masks)
    check_inside(pairs, root)
    pairs, unmasked = set_aside_unlabeled(pairs)
    several = [p for p in pairs if isinstance(p.mask, tuple)]
    if several:
        LOG.info("data: %d images have several masks beside them (one a lesion, %s); each reads as their union",
                 len(several), ", ".join(m.name for m in several[0].mask))  # fmt: skip
    by, grouped_by = assign_splits(pairs, cfg, seed, validation, recorded)
    labeled_ids, unlabeled_ids = choose_labeled([p.id for p in by["train"]], cfg, seed, recorded)
    size = tuple(cfg.size) if cfg.size is not None else None  # None: native resolution, patches
    extra_pairs = list(unmasked)
    if cfg.unlabeled_root:
        unlabeled_root = resolve_root(cfg.unlabeled_root)
        extra_pairs += [p for p in scan_folder(unlabeled_root, require_masks=False) if p.split == "train"]
        check_inside(extra_pairs, unlabeled_root)
        if len(extra_pairs) == len(unmasked):
            raise DataError(f"{cfg.unlabeled_root}: data.unlabeled_root holds no training images")
    # one channel count for every split, decided from all of the files (not the first one read)
    channels, mixed = dataset_channels([p for group in by.values() for p in group] + extra_pairs)
    if mixed:
        LOG.info("data: %s", mixed)
    every = [p for group in by.values() for p in group] + extra_pairs
    per_pixel = 4 * channels + 1  # float32 channels, a one-byte mask (folder.compact_mask)
    needed = per_pixel * (
        len(every) * size[0] * size[1] if size is not None else sum(image_pixels(p.image) for p in every)
    )
    check_memory(root, len(every), needed, "images")
    loaded = {
        name: load_pairs(group, size, cfg.num_classes, cfg.mask_mode, channels, cfg.mask_threshold, cfg.mask_values)
        for name, group in by.items()
        if group
    }
    extra = load_pairs(extra_pairs, size, cfg.num_classes, cfg.mask_mode, channels) if extra_pairs else None
    for item in [*loaded.values(), *([extra] if extra is not None else [])]:
        item["images"] = [normalize_each(image[None], cfg.normalize)[0] for image in item["images"]]
    stats = dataset_stats(loaded["train"]["images"], cfg.normalize)

    def make(name: str, keep: set[str] | None = None) -> Split:
        if name not in loaded:  # no validation split (paper protocol)
            return Split([], [], [], size=size)
        item, group = loaded[name], by[name]
        idx = [i for i, p in enumerate(group) if keep is None or p.id in keep]
        return Split(
            [normalize(item["images"][i][None], stats)[0] for i in idx],
            [item["masks"][i] for i in idx],
            [group[i].id for i in idx],
            [group[i] for i in idx],
            [item["sizes"][i] for i in idx],
            size=size,
        )

    unlabeled = make("train", set(unlabeled_ids))
    hidden = Split(list(unlabeled.images), unlabeled.masks, list(unlabeled.ids), size=size) if len(unlabeled) else None
    unlabeled.masks = None
    if extra is not None:
        unlabeled.extend([normalize(image[None], stats)[0] for image in extra["images"]], extra["ids"])
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
        grouped_by=grouped_by,
        hidden=hidden,
    )
