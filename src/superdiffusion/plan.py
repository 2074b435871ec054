"""A dataset's fingerprint, and the data settings planned from it.

``superdiffusion plan DATA`` prints the plan and writes it as a ``--config`` file; ``train``
with a ``data.root`` (and no ``dataset=`` preset) applies it to every data setting the user
did not give (``data.plan=false`` turns it off). Each planned value carries a one-line reason.

The fingerprint reads the image headers of every file and decodes a deterministic sample of
images and masks (at most :data:`SAMPLE` of each): sizes, channels, bit depth, intensity
percentiles, mask values, foreground fraction per class and the width of the thinnest labeled
structures (the 5th percentile of each mask's local width, the diameter of the largest disc
inside the mask that covers a pixel, minus one: 1 for a one-pixel line; the median over masks). It is cached per folder content under the user's cache folder
(``$SUPERDIFFUSION_CACHE``, default ``~/.cache/superdiffusion``): nothing is written into the
data folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import safefs
from .config import DataConfig, folder_name
from .data.dataset import check_inside, check_names, resolve_root
from .data.folder import (
    channels_of,
    colour_count,
    decode,
    default_mask_threshold,
    exif_orientation,
    first_file,
    layout_pairs,
    mask_plane,
    open_image,
    packed_colours,
    scan_folder,
    type_range,
    wide_colour,
)
from .data.layouts import read_dataset_json
from .data.splits import group_column, labeled_count
from .data.volumes import is_plane_file, layout_volumes, read_plane, stored_shape
from .errors import DataError

# 2: colour and palette masks read as drawn; 3: grey-coded classes ("levels"); 4: painted ("colours");
# 5: images in subfolders, grouped by them; 6: instance masks, image and mask folders found by their
# files' names, several labeled volumes a case folder, DICOM; 7: series in the names group images, images
# without masks beside masked ones are counted (they train unlabeled)
FORMAT = 7
SAMPLE = 48  # images and masks decoded for the intensity and mask statistics
FIXED_SIZE = 128  # the paper's resize for 2D images
MIN_WIDTH = 3.0  # pixels of width the thinnest structures must keep at the fixed size
PIXELS_PER_BATCH = 8 * 256 * 256  # 2D patch budget: a batch of 8 patches of 256x256
VOXELS_PER_PATCH = 96 * 96 * 80  # 3D patch budget: the paper's LA patch
NARROW_RANGE = 0.25  # images using less of their type's range than this get percentile clipping
MULTIPLE = 16  # patch sides are multiples of the UNet's downsampling (4 poolings)
CACHE_ENV = "SUPERDIFFUSION_CACHE"
LOG = logging.getLogger("superdiffusion")


@dataclass
class Plan:
    """Planned settings (``section.key`` -> value), each with its reason, and the fingerprint."""

    settings: dict[str, Any] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what a run will do that no planned setting says

    def set(self, key: str, value: Any, reason: str) -> None:
        self.settings[key] = value
        self.reasons[key] = reason

    def layer(self, given: set[str]) -> dict[str, dict[str, Any]]:
        """The planned settings the user did not give, as a config layer. A given ``data.size``
        or ``data.patch_size`` means the user chose the resolution: the plan leaves both."""
        skip = set(given)
        if skip & {"data.size", "data.patch_size"}:
            skip |= {"data.size", "data.patch_size"}
        out: dict[str, dict[str, Any]] = {}
        for key, value in self.settings.items():
            if key not in skip:
                section, name = key.split(".", 1)
                out.setdefault(section, {})[name] = value
        # what a given setting means for the ones the user left to the plan
        if "data.mask_threshold" in given and "data.mask_mode" not in given:
            out.setdefault("data", {}).update(mask_mode="threshold", num_classes=2)
            out["data"].pop("mask_values", None)
        if "data.patch_size" in given and "data.size" not in given and self.settings.get("data.spatial_dims") == 2:
            out.setdefault("data", {})["size"] = None  # patches: native resolution
        return out

    def record(self, given: set[str] | None = None) -> dict[str, Any]:
        applied = self.layer(given or set())
        used = {f"{s}.{k}" for s, values in applied.items() for k in values}
        return {
            "format": FORMAT,
            "settings": self.settings,
            "reasons": self.reasons,
            "applied": sorted(used),
            "kept_by_user": sorted(set(self.settings) - used),
            "fingerprint": self.fingerprint,
        }

    def lines(self) -> list[str]:
        settings = [f"{key}={_text(value)}  # {self.reasons[key]}" for key, value in self.settings.items()]
        return settings + [f"# note: {note}" for note in self.notes]

    def yaml(self) -> str:
        """A ``--config`` file: the settings by section, each reason as a comment."""
        lines = [
            f"# superdiffusion plan for {self.fingerprint.get('root')}: the data settings planned from its fingerprint"
        ]
        sections: dict[str, list[str]] = {}
        for key, value in self.settings.items():
            section, name = key.split(".", 1)
            sections.setdefault(section, []).append(f"  {name}: {_text(value)}  # {self.reasons[key]}")
        for section, rows in sections.items():
            lines += [f"{section}:", *rows]
        return "\n".join(lines) + "\n"


def _text(value: Any) -> str:
    return json.dumps(value) if value is None or isinstance(value, (list, bool)) else str(value)


# --- the fingerprint ------------------------------------------------------------------------------
def _sample(items: list, count: int = SAMPLE) -> list:
    """At most ``count`` items spread evenly over the list (deterministic)."""
    if len(items) <= count:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


LAYOUT_OWNED = ("data.mask_mode", "data.num_classes", "data.mask_values")  # its dimensionality agrees


def _raw(path: Path) -> tuple[np.ndarray, str]:
    if is_plane_file(path) or wide_colour(path):  # read as decode reads them: every bit
        return decode(path)
    img = open_image(path)
    mode = img.mode
    return np.asarray(img.convert("RGB") if mode == "P" else img), mode


def _size_and_mode(path: Path) -> tuple[tuple[int, int], str]:
    """A 2D image's ``(H, W)`` and mode, from the header where the format has one."""
    if is_plane_file(path):  # its header, as for pictures: (H, W) of a one-slice volume
        return stored_shape(path)[:2], "slice"
    try:
        with Image.open(path) as img:
            turned = exif_orientation(img) >= 5  # read turned a quarter, as the reader does
            return (img.size if turned else img.size[::-1]), img.mode
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot read image ({str(err)[:200]})") from None


def local_width(mask: np.ndarray) -> np.ndarray:
    """The local width (in pixels) at each foreground pixel of a binary mask: the diameter of the
    largest disc inside the mask that covers the pixel (its "local thickness"), minus one pixel, so
    a one-pixel line is 1 and a disc of radius r is 2r - 1 throughout. On a grid of radii s
    (steps of a tenth, and the largest): a pixel has a width of at least 2s - 1 where it lies within s of a
    point whose distance to the background is at least s."""
    from scipy import ndimage

    if not mask.any():
        return np.zeros(0)
    distance = ndimage.distance_transform_edt(mask)
    thickness = distance.copy()
    radii, radius = [], 1.0
    while radius < distance.max():
        radii.append(radius)
        radius = max(radius + 1, radius * 1.1)
    for radius in [*radii, float(distance.max())]:  # the largest disc too: a round blob's rim is exact
        centres = distance >= radius
        reach = ndimage.distance_transform_edt(~centres)  # to the nearest such point
        thickness = np.where(mask & (reach <= radius), np.maximum(thickness, radius), thickness)
    return 2 * thickness[mask] - 1


def _mask_kind(values: np.ndarray, colours: int | None = None) -> str:
    """binary (0 and one other value), index (few small integers) or lossy (anything else);
    ``colours``: the most colours one colour mask holds (None: grey masks), whose values are
    then their brightest channel (:func:`~superdiffusion.data.folder.mask_plane`)."""
    if colours is not None:
        return "binary" if colours <= 2 and len(values) <= 2 and values.min() == 0 else "lossy"
    if len(values) <= 2 and values.min() == 0:
        return "binary"
    integral = np.all(np.equal(np.mod(values, 1), 0))
    if integral and values.min() >= 0 and values.max() < 64 and len(values) <= 64:
        return "index"
    return "lossy"


MAX_LEVELS = 16  # grey-coded class masks: at most this many values
AREA_SHARE = 0.1  # ... each drawn as areas: this share of its pixels inside a 3x3 block of its own


def _grey_levels(found: np.ndarray, masks: list[np.ndarray]) -> bool:
    """Whether masks of a few grey values (0, 128, 255, say) draw classes, rather than a binary
    mask's resampled or anti-aliased edges: few integer values, and each drawn as areas (a
    resampled edge is a line of pixels, none of which keeps its value under a 3x3 erosion)."""
    from scipy import ndimage

    if not (3 <= len(found) <= MAX_LEVELS and np.all(np.equal(np.mod(found, 1), 0))):
        return False
    for value in found[1:]:
        pixels = inside = 0
        for m in masks:
            level = m == value
            pixels += int(level.sum())
            inside += int(ndimage.binary_erosion(level, np.ones((3, 3), bool)).sum())
        if pixels == 0 or inside < AREA_SHARE * pixels:
            return False
    return True


def _instances(found: np.ndarray, masks: list[np.ndarray]) -> bool:
    """Whether grey masks label instances (GlaS' glands, nuclei) rather than classes: in most
    masks the values are 1..n, n varying from mask to mask (3 or more in one), and nearly each
    value is one blob. Organs drawn as classes hold the same values, or not 1..n, from mask to mask."""
    from scipy import ndimage

    if len(found) < 4 or found.min() < 0 or not np.all(np.equal(np.mod(found, 1), 0)):
        return False
    counts, numbered, blobs, drawn = [], 0, 0, 0
    for m in masks:
        labels = m.astype(np.int64)
        present = np.unique(labels[labels > 0])
        counts.append(len(present))
        numbered += len(present) == 0 or (present[0] == 1 and present[-1] == len(present))
        for value, box in enumerate(ndimage.find_objects(labels), start=1):
            if box is not None:
                drawn += 1
                blobs += ndimage.label(labels[box] == value)[1] == 1
    return max(counts) >= 3 and max(counts) - min(counts) >= 2 and numbered >= 0.8 * len(masks) and blobs >= 0.8 * drawn


def _folder_digest(root: Path, files: list[Path], masks: str | None = None) -> str:
    digest = hashlib.sha256(str(root.resolve()).encode() + (f"\0masks={masks}".encode() if masks else b""))
    for path in sorted(files):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    for extra in ("split.csv", "dataset.json"):
        if (root / extra).is_file():
            stat = (root / extra).stat()
            digest.update(f"{extra}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:24]


def _cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "superdiffusion") / "fingerprints"


def _subjects(pairs: list) -> dict[str, Any]:
    """The column that names subjects (as ``data.group_column=auto`` finds it), their count and
    the first case's ``id -> subject``."""
    column = group_column(pairs, "auto", Path("split.csv"))
    if column is None:
        return {"subject_column": None, "subjects": None}
    first = next(p for p in pairs if p.columns.get(column))
    return {
        "subject_column": column,
        "subjects": len({p.columns.get(column) for p in pairs}),
        "subject_example": f"{first.id} -> {first.columns[column]}",
    }


def fingerprint_2d(root: Path, pairs: list | None = None, masks: str | None = None) -> dict[str, Any]:
    """A 2D folder's fingerprint; ``pairs``: the cases of a dataset.json layout, else the
    folder's images/ and masks/ (``masks``: ``data.masks``)."""
    if pairs is None:  # images/ alone plans from its masked images; no images/: masks beside their images
        pairs = scan_folder(root, require_masks=None, masks=masks)
    check_inside(pairs, root)
    labeled = [p for p in pairs if p.mask is not None]
    if not labeled:
        raise DataError(f"{root}: no image has a mask in masks/ (or labels/): nothing to plan from")
    sizes, modes = [], []
    for pair in pairs:
        size, mode = _size_and_mode(first_file(pair.image))
        sizes.append(size)
        modes.append(mode)
    heights, widths = np.array([s[0] for s in sizes]), np.array([s[1] for s in sizes])
    low, high, ranges, depth = [], [], [], set()
    for pair in _sample(pairs):
        raw, mode = _raw(first_file(pair.image))  # decoded once: its type gives the range, its values the percentiles
        raw_range, arr = type_range(raw, mode), raw.astype(np.float64)
        depth.add("float" if raw_range is None else "16" if raw_range > 255 else "8")
        finite = arr[np.isfinite(arr)]
        if finite.size:
            low.append(float(np.percentile(finite, 0.5)))
            high.append(float(np.percentile(finite, 99.5)))
            ranges.append(raw_range)
    values: set[float] = set()
    indices: set[float] = set()  # palette masks' indices: classes when there are more than two
    colours: int | None = None  # the most colours in one colour mask (None: grey masks)
    masks, palette, painted = [], [], []
    for pair in _sample(labeled):
        mask_file = first_file(pair.mask)  # an image with a mask a lesion: its first
        if is_plane_file(mask_file):  # a label image kept as NIfTI or NRRD (or HDF5's label): its values as stored
            masks.append(read_plane(mask_file, "label")[0])
            values |= set(np.unique(masks[-1]).tolist()[:257])
            continue
        img = open_image(mask_file)
        count = colour_count(img)
        if count is not None:
            colours = max(colours or 0, count)
        painted.append(packed_colours(img))  # classes painted in colours, if any mask has colours
        if img.mode in ("P", "PA"):
            palette.append(mask_plane(img, "index", mask_file))
            indices |= set(np.unique(palette[-1]).tolist())
        masks.append(mask_plane(img, "threshold", mask_file))  # the colour reading every mode but index shares
        if len(values) <= 256:
            values |= set(np.unique(masks[-1]).tolist())
    strays, mixed = [], {}
    if colours is None and not palette and len(masks) >= 3 and len(values) <= MAX_LEVELS:  # grey class masks
        values, strays, mixed = _odd_mask_values(masks, [first_file(p.mask) for p in _sample(labeled)], values)
    by_index = np.array(sorted(indices), dtype=np.float64)
    if len(palette) == len(masks) and len(by_index) > 2 and _mask_kind(by_index) == "index":
        masks, found, kind, colours = palette, by_index, "index", None  # palette class masks (VOC-style)
    else:
        found = np.array(sorted(values), dtype=np.float64)
        kind = _mask_kind(found, colours)
        if kind in ("index", "lossy") and colours is None and _instances(found, masks):
            kind = "instances"
        elif kind == "lossy" and colours is None and _grey_levels(found, masks):
            kind = "levels"
        elif kind == "lossy" and colours is not None and len(painted) == len(masks):
            keys = np.unique(np.concatenate([np.unique(m) for m in painted]))
            if len(keys) <= MAX_LEVELS and keys[0] == 0 and _grey_levels(keys.astype(np.float64), painted):
                masks, found, kind = painted, keys.astype(np.float64), "colours"  # black first: background
    if kind in ("levels", "colours"):
        per_class = {str(k): float(np.mean([np.mean(m == v) for m in masks])) for k, v in enumerate(found) if k}
        binary = [m != found[0] for m in masks]
    elif kind == "index":
        classes = int(found.max()) + 1
        per_class = {str(c): float(np.mean([np.mean(m == c) for m in masks])) for c in range(1, classes)}
        binary = [m > 0 for m in masks]
    else:  # binary, lossy (thresholded at half the range) and instances (every one foreground)
        cut = default_mask_threshold(found) if kind == "lossy" else 0
        binary = [m >= cut if kind == "lossy" else m > 0 for m in masks]
        per_class = {"1": float(np.mean([np.mean(b) for b in binary]))}
    widths_px, widths_fixed = [], []  # each mask's thinnest 5 % of foreground pixels
    for b in binary:
        w = local_width(b)
        if w.size:
            widths_px.append(float(np.percentile(w, 5)))
            widths_fixed.append(widths_px[-1] * FIXED_SIZE / max(b.shape))
    channels = sorted({channels_of(p.image) for p in pairs})
    return {
        "root": str(root),
        "dims": 2,
        "images": len(pairs),
        "labeled_images": len(labeled),
        **_subjects(pairs),
        "subfolders": len({p.columns.get("folder") for p in pairs if p.columns.get("folder")}),
        "size_median": [int(np.median(heights)), int(np.median(widths))],
        "size_min": [int(heights.min()), int(widths.min())],
        "size_max": [int(heights.max()), int(widths.max())],
        "channels": 3 if 3 in channels else channels[0],
        "modes": sorted(set(modes)),
        "bit_depth": sorted(depth),
        "intensity_p0.5": float(np.median(low)) if low else None,
        "intensity_p99.5": float(np.median(high)) if high else None,
        "type_range": max((r for r in ranges if r is not None), default=None),
        "mask_values": [f"#{int(v):06x}" for v in found] if kind == "colours" else found[:16].tolist(),
        "mask_kind": kind,
        "mask_colours": colours,
        "mask_strays": strays,  # values one mask alone holds, on a sliver of it: read as foreground, named
        "mask_mixed": mixed,  # two-valued masks whose foreground value differs: {value: files}
        "foreground_fraction": per_class,
        # the median over the masks of each one's 5th percentile of local width
        "thinnest_width_px": float(np.median(widths_px)) if widths_px else None,
        "thinnest_width_at_fixed_size": float(np.median(widths_fixed)) if widths_fixed else None,
        "sampled": len(masks),
    }


def fingerprint_3d(root: Path, pairs: list | None = None, masks: str | None = None) -> dict[str, Any]:
    from .data.volumes import read_channels, read_volume, scan_volumes

    pairs = scan_volumes(root, masks) if pairs is None else pairs
    check_inside(pairs, root)
    shapes, spacings, values, fractions, low, high = [], [], set(), [], [], []
    for pair in _sample(pairs, 16):
        image = first_file(pair.image)
        vol = read_channels(image)[0]  # the first modality of a 4D file
        shapes.append(vol.array.shape)
        spacings.append(vol.spacing)
        finite = vol.array[np.isfinite(vol.array)]
        low.append(float(np.percentile(finite, 0.5)))
        high.append(float(np.percentile(finite, 99.5)))
        if pair.label is not None:
            label = read_volume(pair.label, "label").array
            values |= set(np.unique(label).tolist()[:64])
            fractions.append(float(np.mean(label > 0)))
    found = np.array(sorted(values), dtype=np.float64) if values else np.array([0.0, 1.0])
    return {
        "root": str(root),
        "dims": 3,
        "images": len(pairs),
        "labeled_images": sum(1 for p in pairs if p.label is not None),
        **_subjects(pairs),
        "shape_median": [int(v) for v in np.median(np.array(shapes), axis=0)],
        "shape_min": [int(v) for v in np.min(np.array(shapes), axis=0)],
        "shape_max": [int(v) for v in np.max(np.array(shapes), axis=0)],
        "spacing_median": [round(float(v), 4) for v in np.median(np.array(spacings), axis=0)],
        "intensity_p0.5": float(np.median(low)),
        "intensity_p99.5": float(np.median(high)),
        "mask_values": found[:16].tolist(),
        "mask_kind": _mask_kind(found) if len(found) else "binary",
        "foreground_fraction": {"1": float(np.mean(fractions)) if fractions else None},
        "sampled": len(shapes),
    }


def _is_volume_folder(root: Path) -> bool:
    from .data.volumes import case_folders, holds_volumes

    images = root / "images"
    if images.is_dir():  # its volumes, or those of its subfolders one a patient
        if holds_volumes(list(images.iterdir())):
            return True
        return holds_volumes([p for d in images.iterdir() if d.is_dir() and not d.is_symlink() for p in d.iterdir()])
    if holds_volumes([p for p in root.iterdir() if p.is_file()]):  # LiTS: volume-0 beside segmentation-0
        return True
    # case folders of volumes or HDF5 files (LA's CASE/mri_norm2.h5), at any depth (BIDS); of 2D images kept as
    # NIfTI ... (CAMUS's echo frames), a 2D dataset
    subfolders = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink()]
    if any(holds_volumes(list(case.iterdir())) for case in subfolders):
        return True  # the deeper search only where no subfolder holds volumes itself
    return any(holds_volumes(list(case.iterdir())) for case in case_folders(root) if case.parent != root)


def fingerprint(root: str | Path, cache: bool = True, masks: str | None = None) -> dict[str, Any]:
    """The fingerprint of the dataset folder ``root`` (cached per folder content and ``masks``,
    ``data.masks``)."""
    folder = resolve_root(str(root))
    if not folder.is_dir():
        raise DataError(f"{folder}: dataset folder not found")
    if masks is not None and (not masks.strip() or Path(masks).is_absolute() or ".." in Path(masks).parts):
        raise DataError(f"--masks names a folder inside {folder} (no '..', not absolute); got {masks!r}")
    files = [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]
    check_names(files)
    key = _folder_digest(folder, files, masks)
    path = _cache_dir() / f"{key}.json"
    if cache and path.is_file():
        try:
            found = json.loads(path.read_text())
            if found.get("format") == FORMAT:
                return found["fingerprint"]
        except (OSError, ValueError):
            pass  # a damaged cache entry is computed again
    layout = read_dataset_json(folder)
    if layout is not None:  # nnU-Net or MSD: the cases dataset.json lists
        if layout.spatial_dims == 3:
            found = fingerprint_3d(folder, layout_volumes(layout, folder))
        else:
            found = fingerprint_2d(folder, layout_pairs(layout, folder))
        found["layout"] = layout.kind
    else:
        found = (
            fingerprint_3d(folder, masks=masks) if _is_volume_folder(folder) else fingerprint_2d(folder, masks=masks)
        )
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            safefs.write_text(path, json.dumps({"format": FORMAT, "fingerprint": found}, indent=1))
        except Exception:  # noqa: BLE001 - a cache that cannot be written only costs time
            pass
    return found


# --- the plan -------------------------------------------------------------------------------------
def _multiple(value: float, multiple: int = MULTIPLE, least: int = 2 * MULTIPLE) -> int:
    return max(least, int(value // multiple) * multiple)


def plan_from(fp: dict[str, Any], batch_size: int = 8) -> Plan:
    """The data settings for the fingerprint ``fp``, each with its reason."""
    plan = Plan(fingerprint=fp)
    if fp["dims"] == 3:
        _plan_volumes(plan, fp)
    else:
        _plan_images(plan, fp, batch_size)
    if unmasked := fp["images"] - fp["labeled_images"]:
        what = ("volumes", "label") if fp["dims"] == 3 else ("images", "mask")
        plan.set("data.labeled_percent", 100, f"{unmasked} of the {fp['images']} {what[0]} have no {what[1]}: they "
                 f"train unlabeled, and every {what[1]}ed training {what[0][:-1]} is labeled")  # fmt: skip
    else:
        what = ("volumes", "label") if fp["dims"] == 3 else ("images", "mask")
        share = DataConfig.model_fields["labeled_percent"].default
        plan.notes.append(
            f"every {what[0][:-1]} has a {what[1]}: a run uses data.labeled_percent of the training {what[0]} as labeled "
            f"({share:g} % by default: at most {labeled_count(fp['images'], share)} of these {fp['images']}, as validation "
            f"and test hold some out), the others as unlabeled; data.labeled_percent=100 uses every {what[1]}"
        )
    kind, colours = fp["mask_kind"], fp.get("mask_colours")
    if kind == "lossy" and colours:
        plan.set("data.mask_mode", "threshold", f"colour masks with up to {colours} colours (lossy edges, or classes "
                 "drawn in colours): foreground where the brightest channel is at least half the range")  # fmt: skip
        plan.set("data.num_classes", 2, "colour masks are read as one foreground class (for classes, save one class "
                 "index per pixel)")  # fmt: skip
    elif kind == "lossy":
        plan.set("data.mask_mode", "threshold", f"the masks hold {len(fp['mask_values'])}+ values (lossy or resampled): "
                 "foreground where a value is at least half the range")  # fmt: skip
        plan.set("data.num_classes", 2, "lossy masks are read as one foreground class")
    elif kind == "instances":
        plan.set("data.mask_mode", "threshold", "the masks label instances (each value one blob, 1..n in each mask, n "
                 "varying): every instance is foreground (data.mask_mode=index to read the values as classes)")  # fmt: skip
        plan.set("data.mask_threshold", 1, "foreground where the value is 1 or more: every instance")
        plan.set("data.num_classes", 2, "instances are read as one foreground class")
    elif kind == "levels":
        levels = [int(v) for v in fp["mask_values"]]
        plan.set("data.mask_mode", "index", f"the masks draw {len(levels)} classes as the grey values {levels}, each "
                 "as areas (not resampled edges): class k is the k-th value")  # fmt: skip
        plan.set("data.num_classes", len(levels), f"{len(levels)} grey values")
        plan.set("data.mask_values", levels, "the grey value of each class, class 0 first; predict writes them back")
    elif kind == "colours":
        painted = list(fp["mask_values"])
        plan.set("data.mask_mode", "index", f"the masks paint {len(painted)} classes in the colours {painted}, each "
                 "as areas: class k is the k-th colour (black, the background, first)")  # fmt: skip
        plan.set("data.num_classes", len(painted), f"{len(painted)} colours")
        plan.set("data.mask_values", painted, "the colour of each class, class 0 first; predict paints them back")
    elif kind == "index" and max(fp["mask_values"]) > 1:
        classes = int(max(fp["mask_values"])) + 1
        plan.set("data.mask_mode", "index", f"the masks hold the class indices {fp['mask_values'][:8]}")
        plan.set("data.num_classes", classes, f"the largest mask value is {classes - 1}")
    elif colours:
        plan.set("data.mask_mode", "binary", "the masks are black and one colour: that colour is foreground")
        plan.set("data.num_classes", 2, "background and one foreground class")
    elif fp.get("mask_mixed"):
        shown = "; ".join(f"0/{v} in {len(f)} ({', '.join(f[:2])}{', ...' if len(f) > 2 else ''})"
                          for v, f in fp["mask_mixed"].items())  # fmt: skip
        plan.set("data.mask_mode", "binary", f"each mask holds 0 and one other value, not the same one ({shown}): "
                 "any value above 0 is foreground, one class")  # fmt: skip
        plan.set("data.num_classes", 2, "background and one foreground class")
    else:
        plan.set("data.mask_mode", "binary", f"the masks hold two values {fp['mask_values'][:2]}")
        plan.set("data.num_classes", 2, "background and one foreground class")
    for stray in fp.get("mask_strays") or []:
        plan.notes.append(
            f"{stray['file']} holds the value {stray['value']:g} on {stray['pixels']} pixels, found in no other mask: "
            "not a class; it reads as foreground there: check that mask"
        )
    name = folder_name(fp["root"])
    plan.set("data.name", name, f"the folder's name: runs go to runs/{name}/METHOD/...")
    if fp.get("subject_column") == "folder" and fp["subjects"] == fp["images"]:
        plan.set("data.group_column", "folder", f"each of the {fp['images']} images sits in a folder of its own: "
                 "carved splits hold out whole folders, image by image")  # fmt: skip
    elif fp.get("subject_column") == "folder":
        plan.set("data.group_column", "folder", f"the images sit in {fp['subjects']} subfolders: carved splits hold "
                 "out whole subfolders (a patient's slices on one side)")  # fmt: skip
    elif fp.get("subject_column") == "series":
        plan.set("data.group_column", "series", f"the image names number slices of {fp['subjects']} series (such as "
                 f"{fp['subject_example']}): carved splits hold out whole series (a patient's slices on one side)")  # fmt: skip
    elif fp.get("subject_column"):
        source = "split.csv names" if (Path(fp["root"]) / "split.csv").is_file() else "the case folders give"
        plan.set("data.group_column", fp["subject_column"], f"{source} {fp['subjects']} subjects in column "
                 f"'{fp['subject_column']}': carved splits hold out whole subjects")  # fmt: skip
    elif fp.get("subfolders"):
        plan.set("data.group_column", None, f"the images sit in {fp['subfolders']} subfolders, more likely classes "
                 "than patients: images are split one by one (data.group_column=folder if they are subjects)")  # fmt: skip
    if fp.get("layout"):  # dataset.json declares the classes and the label reading
        for key in LAYOUT_OWNED:
            plan.settings.pop(key, None)
            plan.reasons.pop(key, None)
    return plan


STRAY_SHARE = 0.01  # a value on under 1 % of one mask, in no other: a slip of the brush, not a class


def _odd_mask_values(masks: list[np.ndarray], files: list[Path], values: set) -> tuple[set, list, dict]:
    """The grey mask values less those one mask alone holds on under :data:`STRAY_SHARE` of its
    pixels (``strays``: file, value, pixels); and, where every mask holds 0 and one other value
    but not the same one (0/1 among 0/255), those values with their files (``mixed``), read as
    one foreground."""
    held = [set(np.unique(m).tolist()) for m in masks]
    strays = []
    for m, found, file in zip(masks, held, files):
        for v in sorted(found):
            alone = sum(v in other for other in held) == 1
            if alone and v != 0 and (pixels := int(np.sum(m == v))) < STRAY_SHARE * m.size:
                strays.append({"file": file.name, "value": v, "pixels": pixels})
    for stray in strays:
        values.discard(stray["value"])
    kept = [h - {s["value"] for s in strays} for h in held]
    mixed: dict[str, list[str]] = {}
    if all(len(h) == 2 and 0 in h for h in kept) and len({max(h) for h in kept}) > 1:
        for h, file in zip(kept, files):
            mixed.setdefault(f"{max(h):g}", []).append(file.name)
        values = {0.0, float(max(max(h) for h in kept))}
    return values, strays, mixed


def _plan_images(plan: Plan, fp: dict[str, Any], batch_size: int) -> None:
    plan.set("data.spatial_dims", 2, f"{fp['images']} 2D images")
    _plan_normalize(plan, fp["intensity_p0.5"], fp["intensity_p99.5"], fp["type_range"], fp["bit_depth"])
    width = fp["thinnest_width_at_fixed_size"]
    median = fp["size_median"]
    if max(median) <= FIXED_SIZE:  # small images keep about their own size: never upsampled
        own = [max(2 * MULTIPLE, int(round(side / MULTIPLE)) * MULTIPLE) for side in median]
        plan.set(
            "data.size",
            own,
            f"the images are at most {max(median)} px (median {median[0]}x{median[1]}): kept at about their own size "
            f"(the nearest multiple of {MULTIPLE}), never upsampled to {FIXED_SIZE}x{FIXED_SIZE}",
        )
        return
    if width is None or width >= MIN_WIDTH:
        why = (
            f"the thinnest labeled structures stay {width:.1f} px wide at {FIXED_SIZE}x{FIXED_SIZE} "
            f"(at least {MIN_WIDTH:g})"
            if width is not None
            else "no labeled structure to keep"
        )
        plan.set("data.size", [FIXED_SIZE, FIXED_SIZE], f"resize, as the paper does: {why}")
        return
    side = min(min(median), (PIXELS_PER_BATCH / batch_size) ** 0.5)
    patch = _multiple(side)
    plan.set(
        "data.size",
        None,
        f"native resolution: at {FIXED_SIZE}x{FIXED_SIZE} the thinnest labeled structures "
        f"({fp['thinnest_width_px']:.1f} px at {median[0]}x{median[1]}) would be {width:.2f} px wide",
    )
    plan.set(
        "data.patch_size",
        [patch, patch],
        f"patches within the median image ({median[0]}x{median[1]}) and a batch of {batch_size} within "
        f"{PIXELS_PER_BATCH:,} pixels",
    )


def _plan_normalize(plan: Plan, lo, hi, full, depth) -> None:
    if full is None or lo is None:
        plan.set("data.normalize", "percentile", "floating-point images have no type range: clip to each image's "
                 "0.5-99.5 percentiles")  # fmt: skip
    elif (hi - lo) < NARROW_RANGE * full:
        plan.set("data.normalize", "percentile", f"the images use {lo:g}-{hi:g} of their {'/'.join(depth)}-bit range "
                 f"0-{full:g} (under {NARROW_RANGE:.0%}): clip to each image's 0.5-99.5 percentiles")  # fmt: skip
    else:
        plan.set("data.normalize", "minmax", f"the images use {lo:g}-{hi:g} of their range 0-{full:g}: the "
                 "file type's range maps to [-1, 1]")  # fmt: skip


def _plan_volumes(plan: Plan, fp: dict[str, Any]) -> None:
    plan.set("data.spatial_dims", 3, f"{fp['images']} volumes")
    shape = np.array(fp["shape_median"], dtype=float)
    spacing = np.array(fp["spacing_median"], dtype=float)
    patch = np.minimum(shape, 4 * 96).astype(float)
    shrunk = False
    while np.prod(patch) > VOXELS_PER_PATCH:  # shrink the axis of the largest physical extent first
        axis = int(np.argmax(patch * spacing))
        patch[axis] = max(MULTIPLE, patch[axis] - MULTIPLE)
        shrunk = True
        if np.all(patch <= MULTIPLE):
            break
    # each side the largest multiple of 16 within the median volume (16 for a thinner axis, padded)
    sides = [max(MULTIPLE, int(p // MULTIPLE) * MULTIPLE) for p in patch]
    how = "the axis of largest physical extent shrank first" if shrunk else "each side within the median volume"
    plan.set(
        "data.patch_size",
        sides,
        f"median shape {fp['shape_median']} at spacing {fp['spacing_median']} mm, within {VOXELS_PER_PATCH:,} "
        f"voxels a patch ({how}, in multiples of {MULTIPLE})",
    )
    plan.set("data.size", None, "volumes train on patches at their own resolution")
    plan.set("data.normalize", "percentile", "volumes: clip to each volume's 0.5-99.5 percentiles, then [-1, 1]")


def plan_for(root: str | Path, batch_size: int = 8, cache: bool = True, masks: str | None = None) -> Plan:
    return plan_from(fingerprint(root, cache, masks), batch_size)


class Planner:
    """The command line's planner for :func:`superdiffusion.config.resolve`: plans the folder,
    and keeps the plan and what it applied, for the log and ``results.json``."""

    def __init__(self, cache: bool = True):
        self.cache, self.plan, self.given = cache, None, set()

    def __call__(self, root: str, given: set[str], batch_size: int, masks: str | None = None):
        folder = resolve_root(root)
        if not folder.is_dir():
            return None  # a missing folder fails in training, with its own line
        try:
            self.plan, self.given = plan_for(root, batch_size, self.cache, masks), set(given)
        except DataError as err:  # its line names the file; defaults would read the folder wrongly (3D as 2D)
            raise DataError(f"{err} (data.plan=false trains without a plan)") from None
        return "plan", self.plan.layer(self.given)

    def record(self) -> dict[str, Any] | None:
        return self.plan.record(self.given) if self.plan is not None else None


class RecordedPlan(Planner):
    """A resumed run's planner: the settings its plan applied when it started (``plan.json``),
    whatever the folder holds now, so that a resume resolves to the settings it was trained with."""

    def __init__(self, recorded: dict[str, Any] | None):
        super().__init__(cache=False)
        self.recorded = recorded

    def __call__(self, root: str, given: set[str], batch_size: int, masks: str | None = None):
        if not self.recorded:
            return None
        layer: dict[str, dict[str, Any]] = {}
        for key in self.recorded["applied"]:
            section, name = key.split(".", 1)
            layer.setdefault(section, {})[name] = self.recorded["settings"][key]
        return "plan (recorded)", layer

    def record(self) -> dict[str, Any] | None:
        return self.recorded
