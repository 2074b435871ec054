"""The data every run gets, whatever its format: splits of normalised images and masks (one
tensor per case, and the size they share when they were resized to one), the data folder of
the presets, the normalisation, and the assignment of images to train/val/test."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DataError
from .folder import IMAGE_FOLDERS, MASK_FOLDERS, SPLIT_FOLDERS, Pair, compact_mask, first_file
from .splits import carve, group_column, groups_of

LOG = logging.getLogger("superdiffusion")
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
    return unwrapped(Path(root).expanduser())


JUNK_FOLDERS = ("__MACOSX",)  # what unzipping on a Mac leaves beside the data
# folders that are a part of a dataset, never a wrapper around one
ROLE_FOLDERS = {name.lower() for name in (*IMAGE_FOLDERS, *MASK_FOLDERS, "labelsTr", *SPLIT_FOLDERS)}


DATASET_FILES = ("split.csv", "dataset.json")  # files that make the folder holding them a dataset's own


def unwrapped(path: Path) -> Path:
    """The dataset inside folders that only wrap it (``kvasir-seg/Kvasir-SEG/images``, as
    unzipping often leaves it): while a folder holds one folder (``__MACOSX/`` aside) that is not
    a part of a dataset (``images/``, ``train/`` ...) and, beside it, no image, volume,
    ``split.csv`` or ``dataset.json`` (notes such as Kvasir's ``kavsir_bboxes.json`` or a README
    may be there), that folder."""
    from .folder import is_image_file
    from .volumes import is_volume

    while path.is_dir():
        entries = [p for p in path.iterdir() if not p.name.startswith(".") and p.name not in JUNK_FOLDERS]
        folders = [p for p in entries if p.is_dir()]
        data = [p for p in entries if p.is_file() and (is_image_file(p) or is_volume(p) or p.name in DATASET_FILES)]
        if len(folders) != 1 or data or folders[0].is_symlink() or folders[0].name.lower() in ROLE_FOLDERS:
            return path
        path = folders[0]
    return path


def available_memory() -> int | None:
    """Bytes of memory this machine has free for a new allocation (Linux's ``MemAvailable``);
    None where the system does not say."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _amount(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def check_memory(root, cases: int, needed: float, kind: str) -> None:
    """Stop with one line, before anything is read, when holding a dataset's ``cases`` in memory
    (``needed`` bytes: float32 images, one-byte masks) would not fit in the memory the machine has
    free: training keeps every case in memory, and running out of it ends the process without a
    word."""
    free = available_memory()
    if free is not None and needed > free:
        raise DataError(
            f"{root}: its {cases} {kind} take about {_amount(needed)} in memory (float32 images, one-byte masks), "
            f"more than the {_amount(free)} this machine has free; training holds every case in memory: use a "
            f"machine with more, or fewer or downsampled {kind}"
        )


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
    """The cases of one split, one entry each: ``images``, normalised ``(C, *S)`` tensors;
    ``masks``, ``(*S)`` class maps held in one byte a pixel (None: unlabeled; :meth:`stack_masks`
    gives int64); their ids and sources.

    ``size``: the spatial shape every image was resized to (``data.size``), so that any batch
    of them stacks; None when each keeps its own size (volumes, 2D at native resolution): those
    train on patches and are predicted by sliding windows. A stacked ``(N, C, *S)`` tensor is
    accepted for ``images`` (and ``(N, *S)`` for ``masks``): it is split into its cases, and
    its shape gives ``size``."""

    images: list[torch.Tensor]
    masks: list[torch.Tensor] | None
    ids: list[str]
    pairs: list[Pair] = field(default_factory=list)
    sizes: list[tuple[int, ...]] = field(default_factory=list)
    geometry: list = field(default_factory=list)  # volumes: affine and spacing of each
    size: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if torch.is_tensor(self.images):
            self.size = self.size or tuple(self.images.shape[2:])
            self.images = list(self.images.unbind(0))
        if torch.is_tensor(self.masks):
            self.masks = list(self.masks.unbind(0))
        if self.masks is not None:
            self.masks = [compact_mask(mask) for mask in self.masks]

    def __len__(self) -> int:
        return len(self.ids)

    def stack(self, index: slice | list[int] | None = None) -> torch.Tensor:
        """The images ``index`` (default: all) as one ``(n, C, *S)`` batch; they must share a size."""
        return torch.stack(_pick(self.images, index))

    def stack_masks(self, index: slice | list[int] | None = None) -> torch.Tensor:
        """The masks ``index`` (default: all) as one ``(n, *S)`` int64 batch of class indices."""
        if self.masks is None:
            raise DataError("an unlabeled split has no masks")
        return torch.stack(_pick(self.masks, index)).long()

    def extend(self, images: list[torch.Tensor], ids: list[str]) -> None:
        """Add cases without masks or sources (the extra unlabeled folder)."""
        self.images = self.images + list(images)
        self.ids = self.ids + list(ids)


def _pick(items: list, index: slice | list[int] | None) -> list:
    if index is None:
        return list(items)
    return items[index] if isinstance(index, slice) else [items[i] for i in index]


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
    grouped_by: str | None = None  # the split.csv column whose groups carved splits hold out whole
    # the masks the label regime hides: the unlabeled training images' own, in their order (those
    # with none, beside or in data.unlabeled_root, are not listed). Read only by the hidden-label
    # monitor (eval.hidden_labels); no batch is ever built from them.
    hidden: Split | None = None

    def summary(self) -> str:
        text = (
            f"{len(self.labeled)} labeled + {len(self.unlabeled)} unlabeled training images, "
            f"{len(self.val)} validation, {len(self.test)} test"
        )
        if self.grouped_by is None:
            return text
        splits = {"training": self.labeled.pairs + self.unlabeled.pairs, "validation": self.val.pairs}
        count = {name: len(set(groups_of(pairs, self.grouped_by))) for name, pairs in splits.items()}
        return text + f"; whole {self.grouped_by}s: " + ", ".join(f"{n} {name}" for name, n in count.items())

    def info(self) -> dict[str, Any]:
        """What a saved model needs to know of its data: channels, classes, normalisation."""
        info = {"channels": self.channels, "num_classes": self.num_classes, "spatial_dims": self.spatial_dims}
        info["stats"] = self.stats
        return info | {"class_names": self.class_names} if self.class_names else info


def normalize(images: torch.Tensor, stats: dict[str, list[float]]) -> torch.Tensor:
    """Apply the dataset's normalisation to a batch ``(N, C, *S)``: ``(x - mean) / std`` per channel."""
    shape = (1, -1) + (1,) * (images.dim() - 2)
    mean = torch.tensor(stats["mean"], dtype=images.dtype).view(shape)
    std = torch.tensor(stats["std"], dtype=images.dtype).view(shape)
    return (images - mean) / std


def normalize_cases(images: list[torch.Tensor], stats: dict[str, list[float]], mode: str) -> list[torch.Tensor]:
    """Both parts of ``data.normalize`` for each ``(C, *S)`` image: :func:`normalize_each`, then
    :func:`normalize` with the dataset's statistics."""
    return [normalize(normalize_each(image[None], mode), stats)[0] for image in images]


IDENTITY = "identity"
PER_IMAGE_MODES = ("percentile", "per_image")  # each image (or volume) on its own, 2D and volumes alike
PERCENTILES = (0.5, 99.5)  # intensity clipping of each image, as nnU-Net clips its intensities


def normalize_each(images, mode: str):
    """The per-image part of ``data.normalize``, channel by channel of each ``(C, *S)`` image
    of a batch ``(N, C, *S)``: ``percentile`` clips to the image's 0.5 and 99.5
    percentiles, then maps linearly to [-1, 1] (bounded: the range of the diffusion pathways);
    ``per_image`` subtracts the image's own mean and divides by its std (unbounded). Any other
    mode is dataset-wide: the images come back unchanged."""
    if mode not in PER_IMAGE_MODES:
        return images
    out = torch.empty_like(images)
    for n, image in enumerate(images):
        for c, plane in enumerate(image):
            if mode == "per_image":
                out[n, c] = (plane - plane.mean()) / plane.std().clamp_min(1e-6)
            else:
                low, high = (float(v) for v in np.percentile(plane.numpy(), PERCENTILES))
                out[n, c] = (plane.clamp(low, high) - low) / max(high - low, 1e-6) * 2 - 1
    return out


def dataset_stats(images: list[torch.Tensor], mode: str) -> dict[str, list[float]]:
    """The dataset-wide part of ``data.normalize``, which :func:`normalize` applies: zscore,
    the training images' channel mean and std (2D and volumes alike); minmax on 2D images in
    [0, 1], to [-1, 1]; ``identity``, ``percentile`` and ``per_image`` (applied to each image
    by :func:`normalize_each`; volumes' minmax too, as each volume is read), none. ``images``:
    ``(C, *S)`` tensors, before :func:`normalize`."""
    channels = images[0].shape[0] if images else 1
    if mode == IDENTITY or mode in PER_IMAGE_MODES:
        return {"mean": [0.0] * channels, "std": [1.0] * channels}
    if mode == "minmax":
        return {"mean": [0.5] * channels, "std": [0.5] * channels}
    if mode != "zscore":
        raise DataError(f"data.normalize must be minmax, zscore, percentile or per_image, got {mode!r}")
    # sums in float64, image by image: no copy of every voxel of a large volume dataset
    total, square, count = torch.zeros(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64), 0
    for image in images:
        flat = image.flatten(1).double()
        total, square, count = total + flat.sum(1), square + (flat * flat).sum(1), count + flat.shape[1]
    mean = total / max(count, 1)
    std = ((square - count * mean * mean) / max(count - 1, 1)).clamp_min(0).sqrt().clamp_min(1e-6)
    return {"mean": mean.tolist(), "std": std.tolist()}


SPLITS_FORMAT = 1


def _expanded(paths) -> list[Path]:
    return [Path(f) for p in paths for f in (sorted(Path(p).iterdir()) if Path(p).is_dir() else [p])]


def image_files(pair) -> list[Path]:
    """The files a case's image is read from (one a channel; a DICOM series' slices)."""
    return _expanded(pair.image if isinstance(pair.image, tuple) else (pair.image,))


def pair_files(pair) -> list[Path]:
    """Every file a case is read from: its image(s), then its mask(s) (a 2D Pair's mask, a
    volume's label)."""
    mask = getattr(pair, "mask", None) or getattr(pair, "label", None)
    masks = mask if isinstance(mask, tuple) else (mask,) if mask is not None else ()  # a mask a lesion
    return image_files(pair) + _expanded(masks)


def check_names(paths) -> None:
    """One line for a file whose name is not text (bytes no encoding decodes: it could be neither
    logged, nor recorded in splits.json, nor written back as a prediction's name)."""
    for path in paths:
        try:
            str(path).encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(path).decode("utf-8", "replace")
            raise DataError(f"{shown}: its name is not UTF-8 text; rename the file") from None


def check_inside(pairs: list, root: Path) -> None:
    """One line if a case is read from outside ``root``: a file (or a folder above it, such as
    a linked ``masks/``) that is a link leading out of the data folder. Links that stay inside
    it are read."""
    top = Path(root).resolve()
    for pair in pairs:
        files = pair_files(pair)
        check_names(files)
        for path in files:
            real = path.resolve()
            if not real.is_relative_to(top):
                raise DataError(
                    f"{path}: leads outside the data folder {root} (to {real}); superdiffusion reads only files "
                    "inside it: copy the file in, or name the folder that holds it"
                )


def fingerprint(pair: Pair) -> str:
    """A short hash of an image's file(s) and its mask: a recorded split names exactly these bytes."""
    return _hashes(pair)[0]


def _hashes(pair) -> tuple[str, str]:
    """:func:`fingerprint` (images and masks) and the hash of the image file(s) alone, each file
    read once."""
    both, images = hashlib.blake2b(digest_size=8), hashlib.blake2b(digest_size=8)
    count = len(image_files(pair))
    for k, path in enumerate(pair_files(pair)):  # images first, then masks
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                both.update(block)
                if k < count:
                    images.update(block)
    return both.hexdigest(), images.hexdigest()


def split_record(data: SegmentationData) -> dict[str, Any]:
    """The ids of every split of a run, with each file's fingerprint (``splits.json``), and the
    held-out cases whose image is byte for byte a training image's (``leaks``: [training id,
    held-out id]: their scores are not held out)."""
    parts = {"labeled": data.labeled, "unlabeled": data.unlabeled, "val": data.val, "test": data.test}
    record: dict[str, Any] = {"format": SPLITS_FORMAT, "grouped_by": data.grouped_by}
    record.update({name: [p.id for p in split.pairs] for name, split in parts.items()})
    hashes = {p.id: _hashes(p) for split in parts.values() for p in split.pairs}
    record["files"] = {i: both for i, (both, _) in hashes.items()}
    training = {hashes[p.id][1]: p.id for name in ("labeled", "unlabeled") for p in parts[name].pairs}
    leaks = [[training[hashes[p.id][1]], p.id] for name in ("val", "test") for p in parts[name].pairs
             if hashes[p.id][1] in training]  # fmt: skip
    if leaks:
        record["leaks"] = leaks
    return record


def recorded_splits(pairs: list[Pair], recorded: dict[str, Any], root, extra: list = ()) -> dict[str, list[Pair]]:
    """The train/val/test groups a run recorded, from the pairs found now; one line when a
    recorded file is gone or its bytes changed (images added since are not used). ``extra``:
    the training cases without a mask found now (beside the others, or in
    ``data.unlabeled_root``); those the run recorded are checked like the others and left out
    of the groups (:func:`unlabeled_as_recorded` keeps them)."""
    by_id = {p.id: p for p in [*pairs, *extra]}
    names = {"train": recorded["labeled"] + recorded["unlabeled"], "val": recorded["val"], "test": recorded["test"]}
    missing = [i for ids in names.values() for i in ids if i not in by_id]
    if missing:
        raise DataError(
            f"{root}: {len(missing)} image(s) this run was trained or tested on are gone (the first: {missing[0][:40]!r}); "
            "the run's splits are recorded in its splits.json"
        )
    changed = [i for ids in names.values() for i in ids if fingerprint(by_id[i]) != recorded["files"].get(i)]
    if changed:
        raise DataError(
            f"{root}: {len(changed)} image(s) or mask(s) of this run changed since it was trained (the first: "
            f"{changed[0][:40]!r}); its scores would not be the run's: restore them, or train a new run"
        )
    unmasked = {p.id for p in extra}
    return {split: [by_id[i] for i in ids if i not in unmasked] for split, ids in names.items()}


def unlabeled_as_recorded(extra: list, recorded: dict[str, Any] | None) -> list:
    """The training cases without a mask a run uses: all of ``extra`` for a new run; for a
    recorded one (its ``splits.json``), those it recorded (added since: not used)."""
    if recorded is None:
        return list(extra)
    kept = set(recorded["unlabeled"])
    return [p for p in extra if p.id in kept]


def set_aside_unlabeled(pairs: list, volumes: bool = False) -> tuple[list, list]:
    """The cases with a mask (a volume's label) and those without, beside them in the folder:
    unlabeled training cases (logged). One without a mask in the validation or test split stops
    with one line: it cannot be scored."""
    kind, mask = ("volume", "label") if volumes else ("image", "mask")
    unmasked = [p for p in pairs if getattr(p, mask) is None]
    for pair in unmasked:
        if pair.split != "train":
            raise DataError(f"{first_file(pair.image)}: a {pair.split} {kind} without a {mask}; it cannot be scored: "
                            f"draw its {mask}, or make it a training {kind} (split.csv)")  # fmt: skip
    if unmasked:
        LOG.info("data: %d of the %d %ss have no %s: they train as unlabeled %ss", len(unmasked), len(pairs), kind,
                 mask, kind)  # fmt: skip
    return [p for p in pairs if getattr(p, mask) is not None], unmasked


def assign_splits(
    pairs: list[Pair],
    cfg: DataConfig,
    seed: int,
    validation: bool = True,
    recorded: dict[str, Any] | None = None,
    extra: list = (),
) -> tuple[dict[str, list[Pair]], str | None]:
    """Train/val/test groups. ``validation``: carve a validation split from the training
    images when the folder names none (False under the paper's protocol, which selects on
    test and draws the labeled subset from all training images). A carved split holds out
    whole subjects when split.csv names them (``data.group_column``); returns the groups and
    the column that grouped the images (None: image by image). ``recorded``: a run's
    ``splits.json``, whose groups are used instead; ``extra``: the training cases without a
    mask, checked against it (:func:`recorded_splits`)."""
    if recorded is not None:
        return recorded_splits(pairs, recorded, cfg.root, extra), recorded.get("grouped_by")
    by = {s: [p for p in pairs if p.split == s] for s in ("train", "val", "test")}
    split_file = resolve_root(cfg.root) / "split.csv"
    column = group_column(pairs, cfg.group_column, split_file)

    def held_out(items: list[Pair], fraction: float, seed: int, stream: int, name: str) -> set[str]:
        groups = groups_of(items, column)
        if groups is not None and len(set(groups)) < 2:
            raise DataError(
                f"{split_file}: the {len(items)} images to carve a {name} split from share one {column!r}; "
                f"a {name} split of whole {column}s needs two (give '{name}' rows, or set data.group_column=null)"
            )
        return set(carve([p.id for p in items], fraction, seed, stream, groups)[1])

    if not any(p.split != "train" for p in pairs):  # no split.csv: a fixed test split
        held_set = held_out(pairs, cfg.test_fraction, TEST_SPLIT_SEED, 7, "test")
        by["test"] = [p for p in pairs if p.id in held_set]
        by["train"] = [p for p in pairs if p.id not in held_set]
    if not by["val"] and validation:
        held_set = held_out(by["train"], cfg.val_fraction, seed, 3, "val")
        by["val"] = [p for p in by["train"] if p.id in held_set]
        by["train"] = [p for p in by["train"] if p.id not in held_set]
    for name in ("train", "test"):
        if not by[name]:
            raise DataError(f"{cfg.root}: the {name} split is empty")
    return by, column
