"""2D datasets laid out as ``images/`` + ``masks/`` (or ``labels/``) (+ optional ``split.csv``).

A mask pairs with the image of the same stem (``IMD002.png`` <-> ``IMD002.png``), or with
the stem plus one of :data:`MASK_SUFFIXES` (``case1_mask.bmp``). ``split.csv`` has at least
the columns ``id`` (the stem) and ``split`` (``train``, ``val`` or ``test``). Images may sit in
subfolders, one per patient or case (``images/p7/s012.png`` with ``masks/p7/s012.png``): their
ids keep the subfolder (``p7/s012``), which groups them when splits are carved.
Every file is checked before training starts; a problem is a :class:`DataError` naming
the file.
"""

from __future__ import annotations

import csv
import itertools
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError
from .splits import add_name_series

LOG = logging.getLogger("superdiffusion")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".webp")
MASK_FOLDERS = ("masks", "labels")  # beside images/, for 2D images and volumes alike
IMAGE_FOLDERS = ("images", "imagesTr", "imagesTs")  # a dataset's images (nnU-Net's imagesTr/, imagesTs/ too)
MASK_SUFFIXES = ("", "_mask", "_anno", "_label", "_segmentation", "_Segmentation", "m")
SPLITS = ("train", "val", "test")


@dataclass
class Pair:
    id: str
    image: Path | tuple[Path, ...]  # a tuple: one grey file per channel (nnU-Net's CASE_0000.png, ...)
    mask: Path | tuple[Path, ...] | None  # a tuple: one mask a lesion (BUSI's NAME_mask, NAME_mask_1), read as one
    split: str = "train"
    # split.csv's other columns (subject, ...), and ``folder`` for an image kept in a subfolder
    columns: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.image[0].name if isinstance(self.image, tuple) else self.image.name


def image_files(folder: Path) -> list[Path]:
    """The 2D image files of ``folder`` and of its subfolders (slices kept one folder per patient
    or case, say), in order. Hidden files and folders are left out, and a linked folder is not
    entered: nothing outside the data folder is read."""
    found = []
    for top, dirs, names in os.walk(folder):  # followlinks=False
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(top) / n for n in sorted(names) if not n.startswith(".") and is_image_file(Path(top) / n)]
    return found


def case_id(path: Path, folder: Path) -> str:
    """A 2D image's id: its name without the suffix, after the subfolders it sits in below
    ``folder`` (``case1``, or ``patient7/slice012``)."""
    parent = path.parent.relative_to(folder).as_posix()
    return image_stem(path) if parent == "." else f"{parent}/{image_stem(path)}"


def _files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    files: dict[str, Path] = {}
    for path in image_files(folder):
        key = case_id(path, folder)
        if key in files:
            raise DataError(f"{path}: two files share the id {key!r} ({files[key].name})")
        files[key] = path
    if not files:
        raise DataError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}){_what_is_there(folder)}")
    return files


def is_image_file(path: Path) -> bool:
    """A file a 2D dataset reads: a picture (:data:`IMAGE_EXTENSIONS`), or a 2D image kept as a
    NIfTI or NRRD file of one slice, as medical 2D datasets often are."""
    from .volumes import is_plane_file

    return path.suffix.lower() in IMAGE_EXTENSIONS or is_plane_file(path)


def image_stem(path: Path) -> str:
    """A 2D image file's id: its name without the suffix (``.nii.gz`` counted whole)."""
    from .volumes import is_plane_file, volume_stem

    return volume_stem(path) if is_plane_file(path) else path.stem


def _what_is_there(folder: Path) -> str:
    """What a folder without readable images holds instead, for the error line (volumes belong
    in a 3D dataset)."""
    suffixes: dict[str, int] = {}
    for path in folder.iterdir():
        if path.is_file() and not path.name.startswith("."):
            suffix = "".join(path.suffixes[-2:]).lower() if path.name.lower().endswith(".gz") else path.suffix.lower()
            suffixes[suffix or "(no suffix)"] = suffixes.get(suffix or "(no suffix)", 0) + 1
    if not suffixes:
        return "; the folder is empty"
    common = max(suffixes, key=suffixes.get)
    hint = {
        ".nii": ": volumes go in images/ + labels/ with data.spatial_dims=3",
        ".nii.gz": ": volumes go in images/ + labels/ with data.spatial_dims=3",
    }.get(common, "")
    return f"; it holds {suffixes[common]} {common} files{hint}"


def mask_folder(root: Path) -> Path | None:
    """The folder of masks beside ``images/``: ``masks/`` or ``labels/`` (None when neither is
    there); a folder holding both stops with one line, since either could be the right one."""
    found = [root / name for name in MASK_FOLDERS if (root / name).is_dir()]
    if len(found) > 1:
        raise DataError(f"{root}: holds both {found[0].name}/ and {found[1].name}/; keep the one with the masks")
    return found[0] if found else None


def mask_folders_below(top: Path, files: list[Path]) -> set[Path]:
    """The folders of masks (:func:`dataset_folders`) of the dataset folders at or below ``top``
    that ``files`` sit in: a dataset's masks, not more images to segment."""
    found = set()
    for folder in {a for f in files for a in f.parents if a == top or top in a.parents}:
        try:
            masks = dataset_folders(folder)[1]
        except DataError:  # a folder of two candidate mask folders: neither is segmented
            masks = None
        if masks is not None:
            found.add(masks)
    return found


TAG_SEPARATORS = "_-. "  # between an image's stem and a mask's own tag (x_gt, im0001.ah, Image_01L_1stHO)


def _named_after(key: str, images) -> str | None:
    """The longest id of ``images`` that ``key``'s name starts with, followed by a separator
    and a tag (``Image_01L`` for ``Image_01L_1stHO``), in the same folder; None when there is none."""
    cuts = [k for k, ch in enumerate(key) if ch in TAG_SEPARATORS and key[:k] in images and "/" not in key[k:]]
    return key[: max(cuts)] if cuts else None


def _tagged_masks(images: dict[str, Path], masks: dict[str, Path], taken: set[str]) -> dict[str, list[Path]]:
    """The masks not named by :data:`MASK_SUFFIXES`, each given to the image whose stem is the
    longest start of the mask's stem followed by a separator, else the longest end of it after a
    separator (QaTa-COV19's ``mask_covid_1``): the tags public sets add to their masks' names.
    Returns the masks so claimed, per image stem."""
    claimed: dict[str, list[Path]] = {}
    for mask_stem, mask in masks.items():
        if mask_stem in taken:
            continue
        folder, slash, name = mask_stem.rpartition("/")
        after = [folder + slash + name[k + 1 :] for k, ch in enumerate(name) if ch in TAG_SEPARATORS]
        if (image := _named_after(mask_stem, images)) is not None:
            claimed.setdefault(image, []).append(mask)
        elif image := next((stem for stem in after if stem in images), None):  # the longest it ends with
            claimed.setdefault(image, []).append(mask)
    return claimed


LEADING_NUMBER = re.compile(r"^(\d+)(?:\D|$)")  # 21_training
TRAILING_NUMBER = re.compile(r"(?:^|\D)(\d+)$")  # img_0001, label7


def _numbered(stems, number: re.Pattern) -> dict[int, str] | None:
    """Each stem by the number ``number`` finds in its name (``21_training``: 21 at its start,
    ``img_0001``: 1 at its end); None unless every stem holds a number of its own."""
    numbers = {}
    for stem in stems:
        match = number.search(stem.rpartition("/")[2])
        if match is None or int(match[1]) in numbers:
            return None
        numbers[int(match[1])] = stem
    return numbers


OVERLAP = 0.5  # of the smaller mask: two masks of one image overlapping more are two annotators' of one structure
ANNOTATORS = 4  # an image with more masks than this has one an object (nuclei): not annotators, not checked


def _check_parts(image: Path, masks: list[Path], names: list[str], setting: str) -> None:
    """Several masks of one image are read as their union (one a lesion, a lung, a nucleus) when
    they are disjoint; two that overlap are two annotators' masks of one structure, and stop with
    one line naming them (and ``setting``, the one that picks a folder of them)."""
    if len(masks) > ANNOTATORS:
        return
    planes = [read_mask(m, 2, "threshold") for m in masks]
    for i, j in itertools.combinations(range(len(planes)), 2):
        if planes[i].shape != planes[j].shape:
            continue  # read_mask names the mismatch when the union is read
        smaller = min(planes[i].sum(), planes[j].sum())
        shared = int((planes[i] & planes[j]).sum())
        if smaller and shared > OVERLAP * smaller:
            keep = f"; keep one ({setting}, say)" if setting else "; keep one"
            raise DataError(
                f"{image}: its masks {names[i]}, {names[j]} overlap ({100 * shared / smaller:.0f} % of the smaller): "
                f"two annotators' masks of one structure, not parts to read as one{keep}"
            )


def _per_subfolder(images: dict[str, Path], masks: dict[str, Path]) -> dict[str, list[Path]] | None:
    """Masks kept one subfolder a part (Montgomery's ``ManualMask/leftMask/`` and ``rightMask/``)
    or an annotator, each subfolder naming the images: each image's masks, one from each; None
    when the masks are not so kept."""
    subfolders: dict[str, dict[str, Path]] = {}
    for key, path in masks.items():
        sub, slash, stem = key.partition("/")
        if not slash or "/" in stem or any("/" in s for s in images):
            return None
        subfolders.setdefault(sub, {})[stem] = path
    if len(subfolders) < 2:
        return None
    merged: dict[str, list[Path]] = {}
    for files in subfolders.values():
        matched = match_masks(images, files)
        if sum(map(len, matched.values())) != len(files):
            return None
        for stem, found in matched.items():
            merged.setdefault(stem, []).extend(found)
    return merged


def match_masks(images: dict[str, Path], masks: dict[str, Path]) -> dict[str, list[Path]]:
    """The masks of each image stem: the mask of the same stem, or of the stem plus one of
    :data:`MASK_SUFFIXES`; else the masks tagged after it (:func:`_tagged_masks`). When no mask
    pairs by name, every image and every mask start with a number of their own and each mask's is
    an image's (DRIVE's ``21_training.tif`` and ``21_manual1.gif``), they pair by that number;
    else by the number each ends in (``img_0001.png`` and ``mask_0001.png``). Masks kept one
    subfolder a part or annotator give each image one from each (:func:`_per_subfolder`)."""
    if (parts := _per_subfolder(images, masks)) is not None:
        return parts
    found = {stem: next((masks[stem + s] for s in MASK_SUFFIXES if stem + s in masks), None) for stem in images}
    mask_ids = {path: key for key, path in masks.items()}
    tagged = _tagged_masks(images, masks, {mask_ids[m] for m in found.values() if m is not None})
    matched = {stem: [mask] * (mask is not None) + tagged.get(stem, []) for stem, mask in found.items()}
    for number in (LEADING_NUMBER, TRAILING_NUMBER) if masks and not any(matched.values()) else ():
        by_image, by_mask = _numbered(images, number), _numbered(masks, number)
        if by_image and by_mask and set(by_mask) <= set(by_image):
            return {by_image[n]: [masks[stem]] for n, stem in by_mask.items()}
    return {stem: found for stem, found in matched.items() if found}


MASK_WORDS = re.compile(r"mask|label|truth|gt\b|manual|annot|seg", re.IGNORECASE)  # a folder of masks' names


def _image_ids(folder: Path) -> dict[str, Path]:
    try:
        return _files(folder)
    except DataError:
        return {}


MASK_VALUES = 16  # at most this many values in a mask (a class each); an image holds more


def _distinct_values(files: dict[str, Path]) -> int:
    """How many values the first file of ``files`` holds: few in a mask, many in an image."""
    try:
        return len(np.unique(np.asarray(Image.open(next(iter(files.values()))))))
    except (OSError, UnidentifiedImageError, ValueError):
        return 0


def dataset_folders(root: Path, masks: str | None = None) -> tuple[Path | None, Path | None]:
    """A 2D dataset's folder of images and folder of masks: ``images/`` and ``masks/`` (or
    ``labels/``); else, of two subfolders, the one whose files pair by name (:func:`match_masks`)
    with the other's (ISIC's ``..._Input/`` and ``..._GroundTruth/``, CVC-ClinicDB's ``Original/``
    and ``Ground Truth/``, Shenzhen's ``CXR_png/`` and ``mask/``), or with ``images/``'s when
    there is one. Where both folders pair with each other the masks are the folder named like masks,
    else the one whose first file holds at most :data:`MASK_VALUES` values and the other's more (two
    folders of like-named images, two patients' slices say, are no pair). Two folders that could each be the masks
    stop with one line naming them: neither is guessed. ``(images/ or None, None)`` when no
    folder pairs. ``masks`` (``data.masks``) names the folder of masks: the images are then
    ``images/``, or the one other folder of image files."""
    if masks is not None:
        return _named_masks(root, root / masks)
    images, found = root / "images", mask_folder(root)
    if images.is_dir() and found is not None:
        return images, found
    folders = {
        d: ids
        for d in sorted(root.iterdir())
        if d.is_dir() and not d.name.startswith(".") and d.name.lower() not in SPLIT_FOLDERS
        if (ids := _image_ids(d))
    }

    def pairs(a: Path, b: Path) -> bool:  # every file of b is a mask of one of a's, and most of a's images have one
        matched = match_masks(folders[a], folders[b])
        images = len(folders[a]) - len(_derived(folders[a], set(matched)))
        return sum(map(len, matched.values())) == len(folders[b]) and 2 * len(matched) >= images

    if not images.is_dir() and len(folders) != 2:  # more: folders per patient or per class, not two roles
        return None, None
    firsts = [images] if images.is_dir() else list(folders)
    found = [(a, b) for a in firsts for b in folders if a != b and a in folders and pairs(a, b)]
    if not images.is_dir():  # two folders pairing both ways: the masks are the one named or looking like masks
        found = [(a, b) for a, b in found if (b, a) not in found or _more_mask_like(b, a, folders)]
    if len(found) > 1:
        if len({a for a, _ in found}) == 1:
            names = ", ".join(f"{b.name}/" for _, b in found)
            raise DataError(
                f"{root}: {found[0][0].name}/ sits beside {len(found)} folders whose files pair with its images "
                f"({names}); name the one with the masks: data.masks={found[0][1].name}, say"
            )
        names = "; ".join(f"{a.name}/ with {b.name}/" for a, b in found)
        raise DataError(f"{root}: more than one pair of image and mask folders ({names}); keep one as images/ + masks/")
    if found:
        return found[0]
    return (images if images.is_dir() else None), None


def _named_masks(root: Path, masks: Path) -> tuple[Path, Path]:
    """``data.masks``'s folder, and the images': ``images/``, or the one other folder of images."""
    if not masks.is_dir():
        raise DataError(f"{masks}: data.masks names no folder of {root}")
    if (root / "images").is_dir():
        return root / "images", masks
    others = [
        d
        for d in sorted(root.iterdir())
        if d.is_dir() and d != masks and not d.name.startswith(".") and d.name.lower() not in SPLIT_FOLDERS
        if _image_ids(d)
    ]
    if len(others) != 1:
        names = ", ".join(f"{d.name}/" for d in others) or "none"
        raise DataError(f"{root}: no images/ folder beside {masks.name}/, and not one other folder of images ({names})")
    return others[0], masks


def _more_mask_like(b: Path, a: Path, folders: dict[Path, dict[str, Path]]) -> bool:
    """Whether ``b`` rather than ``a`` is the folder of masks: by its name, else by its first file."""
    named_b, named_a = bool(MASK_WORDS.search(b.name)), bool(MASK_WORDS.search(a.name))
    if named_b != named_a:
        return named_b
    return _distinct_values(folders[b]) <= MASK_VALUES < _distinct_values(folders[a])


# a mask kept beside its image, named after it: IMAGE_mask.png, IMAGE_seg.png, 'benign (1)_mask_1.png' ...
BESIDE = re.compile(r"^(?P<image>.+?)[_\-. ](?:mask|masks|seg|segmentation|label|labels|gt|anno|annotation)"
                    r"(?:[_\-. ]?\d+)?$", re.IGNORECASE)  # fmt: skip


def _less_tag(key: str) -> str | None:
    """An id less the last tag of its name (``train/000_img`` -> ``train/000``), or None."""
    folder, slash, name = key.rpartition("/")
    cut = max((k for k, ch in enumerate(name) if ch in TAG_SEPARATORS), default=-1)
    return f"{folder}{slash}{name[:cut]}" if cut > 0 else None


def _masked_name(key: str) -> str | None:
    """The image id a mask's id names (``p7/x_mask`` -> ``p7/x``), or None for a name without a mask word."""
    folder, _, name = key.rpartition("/")
    match = BESIDE.match(name)
    return None if match is None else f"{folder}/{match['image']}" if folder else match["image"]


def masks_beside(files: dict[str, Path]) -> dict[str, list[Path]]:
    """The files that are masks of another file of ``files`` (named after it plus a mask word, or
    after it less a tag of the image's own: Cellpose's ``000_masks`` beside ``000_img``), per
    image id."""
    tagged: dict[str, list[str]] = {}  # "000" -> ["000_img"]: the files that are not masks, less their last tag
    for key in files:
        if (base := _less_tag(key)) is not None and not BESIDE.match(key.rpartition("/")[2]):
            tagged.setdefault(base, []).append(key)
    found: dict[str, list[Path]] = {}
    for key, path in files.items():
        image = _masked_name(key)
        if image is not None and image not in files:  # the image has a tag of its own (000_img)
            candidates = tagged.get(image, [])
            if len(candidates) > 1:  # beside files derived from it (Cellpose's 000_flows.tif): the mask's type
                candidates = [c for c in candidates if files[c].suffix.lower() == path.suffix.lower()]
            image = candidates[0] if len(candidates) == 1 else image
        if image in files:
            found.setdefault(image, []).append(path)
    return found


def _tagged(files: dict[str, Path], taken: set[Path]) -> dict[str, dict[str, Path]]:
    """The files (other than ``taken``) named after another file plus a tag of their own, per
    tag and image id, for the tags that name at least half of the other files."""
    by_tag: dict[str, dict[str, Path]] = {}
    for key, path in files.items():
        if path not in taken and (image := _named_after(key, files)) is not None:
            by_tag.setdefault(key[len(image) :], {})[image] = path
    images = len(files) - len(taken) - sum(map(len, by_tag.values()))
    return {tag: found for tag, found in by_tag.items() if len(found) >= max(2, images / 2)}


def tags_beside(files: dict[str, Path], taken: set[Path]) -> dict[str, dict[str, Path]]:
    """The tagged files (:func:`_tagged`) whose first holds a mask's few values: masks (CHASE_DB1's
    ``Image_01L_1stHO.png`` beside ``Image_01L.jpg``, per tag ``_1stHO`` and image id)."""
    return {tag: found for tag, found in _tagged(files, taken).items() if _distinct_values(found) <= MASK_VALUES}


def _derived(files: dict[str, Path], keep: set[str]) -> dict[str, str]:
    """The ids of ``files`` (other than ``keep``) derived from another's (:func:`_tagged`), with their tag."""
    derived = {image + tag: tag for tag, found in _tagged(files, set()).items() for image in found}
    return {key: tag for key, tag in derived.items() if key not in keep}


def left_out_derived(files: dict[str, Path], keep: set[str]) -> dict[str, Path]:
    """``files`` less those derived from an image (:func:`_tagged` files other than ``keep``:
    ISIC 2017's ``ISIC_0000000_superpixels.png`` beside ``ISIC_0000000.jpg``), which are not more
    images; the files left out are logged."""
    derived = _derived(files, keep)
    if derived:
        LOG.info("data: %d files named after an image plus %s are left out: derived from the images (as ISIC's "
                 "superpixels), not images", len(derived), " or ".join(f"'{t}'" for t in sorted(set(derived.values()))))  # fmt: skip
    return {key: path for key, path in files.items() if key not in derived}


def _folder_column(key: str) -> dict[str, str]:
    """An image kept in a subfolder (id ``p7/s012``): its subfolder, which groups it (``folder``)."""
    folder = key.rpartition("/")[0]
    return {"folder": folder} if folder else {}


def _not_masks(root: Path) -> str | None:
    """The line for a subfolder of files that are named as another's images but are not images
    (MoNuSeg's ``Annotations/*.xml`` polygons beside ``Tissue Images/``), or None."""
    folders = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.is_symlink() and not d.name.startswith(".")]
    stems = {d: {image_stem(p) for p in image_files(d)} for d in folders}
    for b in folders:
        others = [p for p in sorted(b.iterdir()) if p.is_file() and not p.name.startswith(".") and not is_image_file(p)]
        for a in (a for a in folders if a != b and stems[a]):
            named = [p for p in others if p.name.split(".")[0] in stems[a]]
            if named and 2 * len(named) >= len(others):
                suffix = "".join(named[0].suffixes) or "suffix-less"
                return (f"{b}: its {len(named)} {suffix} files are named as the images of {a.name} but are not masks "
                        "(annotations such as polygons or points are not read): save each as a mask image, 0 the "
                        "background")  # fmt: skip
    return None


class Beside(NamedTuple):
    """A folder's files kept side by side, sorted (:func:`sort_beside`)."""

    images: dict[str, Path]  # per id, the images: neither a mask nor a file derived from an image
    masks: dict[str, list[Path]]  # per image id, its masks
    tags: list[str]  # the tags of the masks named after their image plus a tag of their own (_1stHO)


def sort_beside(root: Path, files: dict[str, Path], tag: str | None = None) -> Beside:
    """Sort files kept side by side (often one subfolder per patient) into images and their
    masks: a mask named after its image plus a mask word (Kaggle's LGG: ``TCGA_A_1.tif`` +
    ``TCGA_A_1_mask.tif``), or, where none is, plus a tag of its own (:func:`tags_beside`;
    ``tag``: ``data.masks=_1stHO``, the one to read; the others are neither read nor images;
    ``root`` names the folder in errors). Files derived from an image (Cellpose's
    ``000_flows.tif`` beside ``000_img.png``, ISIC's ``_superpixels``) are left out, logged.
    Training and prediction read a folder through this."""
    masks = masks_beside(files)
    tagged = tags_beside(files, set()) if not masks else {}  # no mask named by a mask word: tags of their own
    others = {p for found in tagged.values() for p in found.values()}  # every tag's masks: none is an image
    if tag is not None:
        if tag not in tagged:
            raise DataError(f"{root}: no mask is tagged {tag!r} after its image's name (the tags: "
                            f"{', '.join(tagged) or 'none'})")  # fmt: skip
        tagged = {tag: tagged[tag]}
    for found in tagged.values():
        for key, path in found.items():
            masks.setdefault(key, []).append(path)
    taken = {p for group in masks.values() for p in group} | others
    ids = {path: key for key, path in files.items()}
    named = {_masked_name(ids[m]) for group in masks.values() for m in group if m in ids}  # "000" for 000_masks
    siblings = {k for k in files if k not in masks and files[k] not in taken and _less_tag(k) in named - set(files)}
    if siblings:  # files beside an image of a tag of its own, named as it with another (000_flows beside 000_img)
        LOG.info("data: %d files named as an image with another tag of their own (%s) are left out: derived from "
                 "the images, not images", len(siblings), sorted(siblings)[0])  # fmt: skip
    files = {k: v for k, v in files.items() if k not in siblings and v not in taken}
    return Beside(left_out_derived(files, set(masks)), masks, list(tagged))


def _scan_side_by_side(root: Path, tag: str | None = None) -> list[Pair]:
    """A folder keeping each mask beside its image (:func:`sort_beside`), read as pairs; an
    HDF5 or ``.npz`` file may hold its image and label in one."""
    from .volumes import holds_label, holds_slices, is_plane_file

    files = _files(root)
    images, masks, tags = sort_beside(root, files, tag)
    inside = {key for key, path in images.items() if holds_label(path)}  # HDF5, .npz: image and label in one file
    if masks and any(is_plane_file(images[key]) for key in masks):  # 2D images kept as NIfTI ... with masks
        volumes = {k for k, path in images.items() if k not in masks and k not in inside and holds_slices(path)}
        if volumes:  # CAMUS's sequences beside its frames: a 2D model trains on neither as one image
            LOG.info("data: %d files holding several slices beside 2D images are left out (%s): volumes, not "
                     "images", len(volumes), sorted(volumes)[0])  # fmt: skip
            images = {k: v for k, v in images.items() if k not in volumes}
    if not masks and not inside:
        raise DataError(
            _not_masks(root)
            or f"{root}: no images/ folder, and no image with its mask beside it (NAME.png + NAME_mask.png); a 2D "
            "dataset is images/ + masks/"
        )
    pairs, checked = [], False
    for key, image in images.items():
        found = [image] if key in inside else sorted(masks.get(key, []))  # none: an unlabeled image
        if len(found) > 1 and not checked:  # the first image of several: parts, or annotators?
            checked = True
            _check_parts(image, found, [m.name for m in found], f"data.masks={tags[0]}" if tags else "")
        mask = found[0] if len(found) == 1 else tuple(found) if found else None  # a tuple: one mask a lesion
        pairs.append(Pair(key, image, mask, columns=_folder_column(key)))
    read_columns(pairs, root / "split.csv")
    return pairs


SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}  # fmt: skip


def _split_folders(root: Path) -> dict[str, Path]:
    """``root``'s ``train/``, ``val/`` and ``test/`` folders (``Training/``, ``validation/`` ...),
    each a dataset folder of its own, per split."""
    found: dict[str, Path] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower() in SPLIT_FOLDERS):
        split = SPLIT_FOLDERS[folder.name.lower()]
        if split in found:
            raise DataError(f"{folder}: a second folder for the {split} split, beside {found[split].name}/")
        found[split] = folder
    return found


def _scan_split_folders(
    root: Path, folders: dict[str, Path], require_masks: bool, masks: str | None = None
) -> list[Pair]:
    if (root / "split.csv").is_file():
        names = ", ".join(f"{f.name}/" for f in folders.values())
        names = " and ".join(names.rsplit(", ", 1))
        raise DataError(f"{root / 'split.csv'}: the {names} folders already give each image's split; remove one")
    return [
        Pair(f"{folder.name}/{p.id}", p.image, p.mask, split, p.columns)
        for split, folder in folders.items()
        for p in scan_folder(folder, require_masks, masks)
    ]


def _dataset_subfolders(root: Path) -> list[Path]:
    """``root``'s subfolders that are 2D dataset folders of their own, an ``images/`` folder each
    (never entered through a link): one an image (the 2018 Data Science Bowl's
    ``CASE/images/CASE.png`` + ``CASE/masks/``, a mask a nucleus) or one a centre."""
    return [
        d for d in sorted(root.iterdir())
        if d.is_dir() and not d.is_symlink() and not d.name.startswith(".") and (d / "images").is_dir()
    ]  # fmt: skip


def _scan_dataset_subfolders(root: Path, folders: list[Path], require_masks: bool, masks: str | None) -> list[Pair]:
    """The pairs of each dataset subfolder (:func:`_dataset_subfolders`), grouped by it: ids after
    the folder (``data_C1/case7``), or the folder's name when it holds one image."""
    pairs = []
    for folder in folders:
        found = scan_folder(folder, require_masks, masks)
        for p in found:
            name = folder.name if len(found) == 1 else f"{folder.name}/{p.id}"
            pairs.append(Pair(name, p.image, p.mask, p.split, {**p.columns, "folder": folder.name}))
    read_columns(pairs, root / "split.csv")
    return pairs


def scan_folder(root: str | Path, require_masks: bool | None = True, masks: str | None = None) -> list[Pair]:
    """List the image/mask pairs of a dataset folder and their split: ``images/`` + ``masks/``
    (or folders named otherwise: :func:`dataset_folders`; ``masks``: ``data.masks``; one image
    with several masks of any names: a mask an object, read as their union), each mask beside its
    image (:func:`_scan_side_by_side`), ``train/``, ``val/`` and ``test/`` folders of either, or
    subfolders that are dataset folders (:func:`_dataset_subfolders`). An image without a mask
    beside images with one has none (``mask=None``): it trains unlabeled. ``require_masks=None``:
    an ``images/`` folder without a folder of masks is read alone (the plan's reading), any other
    layout needs masks."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    if require_masks is None and not (root / "images").is_dir():
        require_masks = True
    if not (root / "images").is_dir() and mask_folder(root) is None:
        folders = _split_folders(root)
        if folders:
            return _scan_split_folders(root, folders, require_masks, masks)
        if len(datasets := _dataset_subfolders(root)) > 1:
            return _scan_dataset_subfolders(root, datasets, require_masks, masks)
    tag = masks if masks and masks[0] in TAG_SEPARATORS and not (root / masks).is_dir() else None
    image_folder, folder = dataset_folders(root, masks if require_masks is not False and tag is None else None)
    if require_masks is None:
        require_masks = folder is not None
    if tag is not None and folder is not None:
        raise DataError(f"{root}: data.masks={tag} names the tag of masks kept beside their images, but the masks "
                        f"are in {folder.name}/")  # fmt: skip
    if image_folder is None and require_masks:
        return _scan_side_by_side(root, tag)
    images = _files(image_folder or root / "images")
    if folder is None and require_masks:
        raise DataError(
            f"{root}: no masks/ (or labels/) folder beside images/; images without masks join a labeled "
            f"folder's training as data.unlabeled_root={root}"
        )
    mask_files = _files(folder) if require_masks else {}
    mask_ids = {path: key for key, path in mask_files.items()}
    matched = match_masks(images, mask_files)
    images = left_out_derived(images, set(matched))
    objects = len(images) == 1 and mask_files and not matched  # one image, a mask an object: all are its
    if objects:
        matched = {next(iter(images)): sorted(mask_files.values())}
    pairs, used, checked = [], set(), False
    for stem, image in images.items():
        found = matched.get(stem, [])
        if len(found) > 1 and not checked:  # the first image of several: parts, or annotators?
            checked = True
            names = [mask_ids[m] + m.suffix for m in found]
            sub = mask_ids[found[0]].rpartition("/")[0]
            _check_parts(
                image, found, names, f"data.masks={(folder / sub).relative_to(root).as_posix()}" if sub else ""
            )
        mask = tuple(found) if len(found) > 1 else found[0] if found else None  # a tuple: their union; None: unlabeled
        used.update(mask_ids[m] for m in found)
        pairs.append(Pair(stem, image, mask, columns=_folder_column(stem)))
    orphans = sorted(set(mask_files) - used)
    if orphans:
        raise DataError(f"{mask_files[orphans[0]]}: mask without an image ({len(orphans)} such masks)")
    read_columns(pairs, root / "split.csv")
    return pairs


def layout_pairs(layout, root: Path) -> list[Pair]:
    """The cases of an nnU-Net or MSD folder (see :mod:`.layouts`) as pairs (an nnU-Net case
    without a label has none: an unlabeled training image), with the split of a ``split.csv``
    beside ``dataset.json`` when there is one."""
    pairs = [Pair(c.id, c.images[0] if len(c.images) == 1 else tuple(c.images), c.label) for c in layout.cases]
    read_columns(pairs, root / "split.csv")
    return pairs


def read_columns(pairs: list, split_file: Path) -> None:
    """Set each pair's split and columns (images and volumes): the series its name gives
    (:func:`~.splits.add_name_series`), then ``split_file``'s when it exists (the one split.csv
    reader): columns ``id`` and ``split``, one row per case; any other column (a subject, say)
    is kept in the pair's ``columns``."""
    add_name_series(pairs)
    if split_file.is_file():
        _apply_split(pairs, split_file)


def _apply_split(pairs: list, split_file: Path) -> None:
    try:  # utf-8-sig: a spreadsheet's CSV starts with a byte-order mark
        with split_file.open(newline="", encoding="utf-8-sig") as handle:
            rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in csv.DictReader(handle)]
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{split_file}: not a CSV text file ({type(err).__name__})") from None
    if not rows or "id" not in rows[0] or "split" not in rows[0]:
        raise DataError(f"{split_file}: needs the columns 'id' and 'split'")
    by_id = {p.id: p for p in pairs}
    names = {first_file(p.image).name: p.id for p in pairs}  # ids written as file names (case1.png)
    for row in rows:
        row["id"] = row["id"] if row["id"] in by_id else names.get(row["id"], row["id"])
        row["split"] = row["split"].lower()
    seen: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        if row["id"] not in by_id:
            raise DataError(f"{split_file}:{line}: id {row['id']!r} has no image (or volume) in {split_file.parent}")
        if row["id"] in seen:  # twice (as an id and as a file name, say): which split would win?
            raise DataError(
                f"{split_file}:{line}: image {row['id']!r} has a row already (line {seen[row['id']]}); one row an image"
            )
        seen[row["id"]] = line
        if row["split"] not in SPLITS:
            raise DataError(f"{split_file}:{line}: split {row['split']!r} is not one of {', '.join(SPLITS)}")
        by_id[row["id"]].split = row["split"]
        by_id[row["id"]].columns.update(
            {k: (v or "").strip() for k, v in row.items() if k not in ("id", "split") and k}
        )
    missing = sorted(set(by_id) - {r["id"] for r in rows})
    if missing:
        raise DataError(f"{split_file}: no row for image {missing[0]!r} ({len(missing)} images missing)")


def first_file(image: Path | tuple[Path, ...]) -> Path:
    """A case's (first) image file: nnU-Net keeps one file a channel."""
    return Path(image[0] if isinstance(image, tuple) else image)


MAX_IMAGE_PIXELS = 50_000_000  # per 2D image: a 9400x9400 PNG of 86 KB decodes to 2.6 GB


def open_image(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        width, height = img.size  # read from the header, before any pixel is decoded
        if width * height > MAX_IMAGE_PIXELS:
            raise DataError(
                f"{path}: {width}x{height} pixels is above the limit of {MAX_IMAGE_PIXELS // 1_000_000} megapixels "
                "per 2D image; downsample it first"
            )
        img.load()
        frames = frames_of(img)
        if frames > 1:
            raise DataError(
                f"{path}: holds {frames} frames of {width}x{height} (a stack or an animation); a 2D image is one "
                "frame: a folder of TIFF stacks is read as volumes (data.spatial_dims=3), or save each slice as "
                "its own file"
            )
        if exif_orientation(img) > 1:  # a photo stored sideways: read it as viewers show it
            img = ImageOps.exif_transpose(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot read image ({str(err)[:200]})") from None
    return img


def frames_of(img: Image.Image) -> int:
    """How many frames of one size an open image holds: a TIFF stack's pages, an animation's
    frames; 1 for a single image, or a TIFF whose further pages are smaller previews."""
    frames = getattr(img, "n_frames", 1)
    if frames < 2 or img.format not in ("TIFF", "GIF", "PNG"):
        return 1
    size = img.size
    img.seek(1)
    second = img.size
    img.seek(0)
    return frames if second == size else 1


def exif_orientation(img: Image.Image) -> int:
    """A photo's EXIF orientation (1: stored as shown; 5-8: turned a quarter). Camera JPEGs and
    TIFFs store their pixels as the sensor read them and say how to turn them; viewers,
    annotation tools and OpenCV show them turned, so masks are drawn on the turned image."""
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except (ValueError, TypeError, OSError, SyntaxError):
        return 1


COLOUR_MODES = ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")  # read as 3 channels


def channels_of(path: Path | tuple[Path, ...]) -> int:
    """How many channels :func:`read_image` gives the file when left to itself: 3 for colour
    (and palette) images, 1 for grey ones; one per file for a tuple. Reads the header only."""
    if isinstance(path, tuple):
        return len(path)
    if _is_plane(path):
        return 1
    try:
        with Image.open(path) as img:
            return 3 if img.mode in COLOUR_MODES else 1
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot read image ({str(err)[:200]})") from None


def image_pixels(path: Path | tuple[Path, ...]) -> int:
    """An image's pixel count, from its header (a case's first channel file)."""
    path = first_file(path)
    if _is_plane(path):
        from .volumes import stored_shape

        return int(np.prod(stored_shape(path)[:2]))
    try:
        with Image.open(path) as img:
            return img.size[0] * img.size[1]
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot read image ({str(err)[:200]})") from None


def dataset_channels(pairs: list[Pair]) -> tuple[int, str | None]:
    """The channel count of a whole dataset, whatever order its files come in: colour when any
    image is colour (its grey images are then repeated to 3 channels), grey otherwise; and a line
    naming the odd files when a folder mixes both."""
    counts = [channels_of(p.image) for p in pairs]
    kinds = sorted(set(counts))
    if len(kinds) == 1:
        return kinds[0], None
    if any(isinstance(p.image, tuple) for p in pairs):
        odd = next(p for p, c in zip(pairs, counts) if c != counts[0])
        raise DataError(f"{odd.name}: {channels_of(odd.image)} channel files, the first image has {counts[0]}")
    grey = [p.name for p, c in zip(pairs, counts) if c == 1]
    note = (
        f"{len(grey)} of {len(pairs)} images are grey ({', '.join(grey[:3])}{', ...' if len(grey) > 3 else ''}), "
        "the others colour: the grey ones are read as 3 equal channels"
    )
    return 3, note


def type_range(arr: np.ndarray, mode: str) -> float | None:
    """The top of a decoded image's intensity range: 255 for 8 bits, 65535 for 16 bits (Pillow
    decodes a 16-bit PNG as ``I;16`` or, before Pillow 10.1, as 32-bit ``I``); None for floating
    point or a type the reader does not take. The reader divides by it; the planner reads it."""
    if arr.dtype == np.bool_:
        return 1.0
    if arr.dtype == np.uint8:
        return 255.0
    if arr.dtype in (np.uint16, np.int32, np.int16) or mode.startswith("I"):
        return 65535.0
    return None


def read_image(path: Path | tuple[Path, ...], channels: int | None = None) -> np.ndarray:
    """Image as float32 ``(C, H, W)`` in [0, 1]; 8- and 16-bit, grey, RGB(A) and palette. A
    tuple of paths is one image with one grey file per channel."""
    if isinstance(path, tuple):
        planes = [read_image(p, 1) for p in path]
        for p, plane in zip(path[1:], planes[1:]):
            if plane.shape != planes[0].shape:
                raise DataError(f"{p}: channel is {plane.shape[2]}x{plane.shape[1]}, its first channel {path[0].name} "
                                f"is {planes[0].shape[2]}x{planes[0].shape[1]}")  # fmt: skip
        if channels is not None and channels != len(planes):
            raise DataError(f"{path[0]}: {len(planes)} channel files, expected {channels}")
        return np.ascontiguousarray(np.concatenate(planes))
    arr, mode = decode(path, channels)
    return scale_image(arr, mode, path, channels)


def scale_image(arr: np.ndarray, mode: str, path: Path, channels: int | None = None) -> np.ndarray:
    """Pixels as :func:`decode` gives them (``path`` names them in errors) -> float32
    ``(C, H, W)`` in [0, 1]: by the type's range, a float image by its maximum (at least 1)."""
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    scale = type_range(arr, mode)
    if scale is None and arr.dtype.kind == "f":
        check_finite(arr, path)
        scale = max(1.0, float(arr.max()))
    elif scale is None:
        raise DataError(f"{path}: unsupported pixel type {arr.dtype}")
    arr = arr.astype(np.float32) / scale
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if channels == 1 and arr.shape[0] == 3:
        arr = arr.mean(axis=0, keepdims=True)
    if channels == 3 and arr.shape[0] == 1:
        arr = np.repeat(arr, 3, axis=0)
    return np.ascontiguousarray(arr)


def _is_plane(path: Path) -> bool:
    from .volumes import is_plane_file

    return is_plane_file(path)


def wide_colour(path: Path) -> bool:
    """A colour TIFF or PNG of 16 bits a sample (multi-channel microscopy), which Pillow decodes
    to the top 8 bits of each: the raw mode of its header says so."""
    try:
        with Image.open(path) as img:
            if img.mode != "RGB" or not img.tile:
                return False
            args = img.tile[0][3]  # (codec, extents, offset, args); a named tuple from Pillow 10.3 on
            return ";16" in str(args if isinstance(args, str) else args[0] if args else "")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False  # open_image names the file


def read_wide_colour(path: Path) -> np.ndarray:
    """Every bit of a 16-bit colour TIFF or PNG, ``(H, W, 3)`` uint16, read by ITK (the itk extra)."""
    try:
        import itk
    except ImportError:
        raise DataError(
            f"{path}: a 16-bit colour image, of which Pillow reads only the top 8 bits; pip install "
            "'superdiffusion[itk]' to read every bit (or save the images as 8-bit)"
        ) from None
    try:
        arr = itk.array_from_image(itk.imread(str(path), itk.Vector[itk.F, 3]))
    except Exception as err:  # noqa: BLE001 - any reader failure is an unreadable file for the user
        raise DataError(f"{path}: cannot read 16-bit colour image ({type(err).__name__})") from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DataError(f"{path}: expected a 2D colour image, got shape {arr.shape}")
    return np.clip(arr, 0, 65535).astype(np.uint16)


def plane_mode(plane: np.ndarray) -> str:
    """The Pillow mode a slice read from a volume file stands for: ``F`` for floats, ``I`` for integers."""
    return "F" if plane.dtype.kind == "f" else "I"


def decode(path: Path, channels: int | None = None) -> tuple[np.ndarray, str]:
    """A 2D image file's pixels as stored (``(H, W)`` or ``(H, W, 3)``) and its Pillow mode (a
    NIfTI or NRRD slice: ``F`` for floats, ``I`` for integers): what the reader scales and the
    plan measures. Palette and alpha images give RGB, ``channels=3`` makes grey ones RGB."""
    if _is_plane(path):
        from .volumes import read_plane

        plane = read_plane(path)[0]
        return plane, plane_mode(plane)
    img = open_image(path)
    if img.mode == "RGB" and wide_colour(path):
        return read_wide_colour(path), "RGB;16"
    if img.mode == "P":
        img = img.convert("RGB")
    if img.mode in ("RGBA", "LA", "CMYK", "YCbCr"):
        img = img.convert("RGB" if img.mode != "LA" else "L")
    if channels == 3 and img.mode not in ("RGB",):
        img = img.convert("RGB") if img.mode in ("L", "1") else img
    return np.asarray(img), img.mode


def check_finite(arr: np.ndarray, path) -> None:
    """One line naming the file when an image holds NaN or infinite values."""
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise DataError(
            f"{path}: {bad} of its {arr.size} values are not finite (NaN or infinity); fix or drop the file"
        )


def default_mask_threshold(arr: np.ndarray) -> float:
    """Half the range of the mask's format: 128 for 8-bit masks, 32768 for 16-bit ones;
    1 for masks whose values are only 0 and 1."""
    if arr.max() <= 1:
        return 1.0
    return 32768.0 if arr.max() > 255 else 128.0


COLOUR_MASK_MODES = ("P", "PA", "RGB", "RGBA", "CMYK", "YCbCr")


def colour_count(img: Image.Image) -> int | None:
    """How many distinct colours a colour mask holds (None for a grey one: all channels equal)."""
    if img.mode not in COLOUR_MASK_MODES:
        return None
    rgb = np.asarray(img.convert("RGB")).astype(np.uint32)
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return None
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    return len(np.unique(packed))


def mask_plane(img: Image.Image, mode: str, path: Path) -> np.ndarray:
    """A mask file's pixels as one 2D array, the one reading that training, evaluation and the
    plan share. ``index`` reads a palette image's indices; every other reading takes colours
    as drawn: a colour mask (an annotation drawn in red on black, a palette GIF) becomes its
    brightest channel, so any colour on black is foreground. ``binary`` takes a colour mask of
    black and one colour only: more colours are classes or lossy edges, and one line says so."""
    if mode == "index" and img.mode in ("P", "PA"):
        return np.asarray(img.convert("P") if img.mode == "PA" else img)
    if img.mode in ("LA", "La"):
        img = img.convert("L")
    if img.mode not in COLOUR_MASK_MODES:
        return np.asarray(img)
    rgb = np.asarray(img.convert("RGB"))
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., 0]
    if mode == "index":
        raise DataError(f"{path}: colour mask; class masks hold one class index per pixel (a grey or palette image)")
    if mode == "binary":
        colours = colour_count(img)
        if colours is not None and (colours > 2 or not (rgb == 0).all(-1).any()):
            raise DataError(
                f"{path}: colour mask with {colours} colours; a binary mask is black and one colour. Lossy (JPEG) "
                "masks: set data.mask_mode=threshold; classes: save one class index per pixel (data.mask_mode=index)"
            )
    return rgb.max(axis=-1)


def colour_key(colour: str) -> int:
    """``"#ff0000"`` -> the packed 24-bit value :func:`packed_colours` gives that colour."""
    return int(colour[1:], 16)


def packed_colours(img: Image.Image) -> np.ndarray:
    """A mask's colours as one 24-bit value a pixel (red << 16 | green << 8 | blue)."""
    rgb = np.asarray(img.convert("RGB")).astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def classes_of(arr: np.ndarray, values: list, path) -> np.ndarray:
    """The class index of each pixel of a mask that draws class ``k`` as the value ``values[k]``
    (``data.mask_values``: grey values, or ``"#rrggbb"`` colours read from ``arr`` as
    :func:`packed_colours` gives them); a value that is none of them stops with one line naming
    the file."""
    colours = bool(values) and isinstance(values[0], str)
    keys = [colour_key(v) for v in values] if colours else list(values)
    order = np.argsort(keys)
    ranked = np.asarray(keys)[order]
    index = np.clip(np.searchsorted(ranked, arr), 0, len(ranked) - 1)
    stray = arr != ranked[index]
    if stray.any():
        shown = np.unique(arr[stray]).tolist()[:8]
        shown = [f"#{v:06x}" for v in shown] if colours else shown
        raise DataError(f"{path}: mask values {shown} are none of data.mask_values {list(values)}")
    return order[index].astype(np.int64)


def read_mask(
    path: Path | tuple[Path, ...],
    num_classes: int,
    mode: str,
    threshold: float | None = None,
    values: list[int] | None = None,
) -> np.ndarray:
    """Mask as int64 ``(H, W)`` of class indices, checked against the declared classes. Several
    masks of one image (one a lesion: BUSI's ``NAME_mask``, ``NAME_mask_1``) read as their union,
    in binary tasks.

    ``binary``: 0 is background and exactly one other value foreground; ``threshold``:
    foreground where the grey value is >= ``threshold`` (default :func:`default_mask_threshold`),
    for JPEG or resampled masks; ``index``: values are class indices (palette PNGs give their
    indices), or the grey value of each class in ``values`` (``data.mask_values``). Colour masks
    are read by :func:`mask_plane`."""
    if mode not in ("binary", "threshold", "index"):
        raise DataError(f"data.mask_mode must be binary, threshold or index, got {mode!r}")
    if isinstance(path, tuple):
        if num_classes != 2:
            raise DataError(f"{path[0]}: one of {len(path)} masks of one image; in a task of {num_classes} classes "
                            "they do not read as one: merge them into one mask")  # fmt: skip
        parts = [read_mask(p, num_classes, mode, threshold, values) for p in path]
        for p, part in zip(path[1:], parts[1:]):
            if part.shape != parts[0].shape:
                raise DataError(f"{p}: {part.shape[1]}x{part.shape[0]}, the image's other mask {path[0].name} "
                                f"{parts[0].shape[1]}x{parts[0].shape[0]}")  # fmt: skip
        return np.maximum.reduce(parts)
    if mode == "index" and values and isinstance(values[0], str):  # classes painted in colours
        return classes_of(packed_colours(open_image(path)), values, path)
    if _is_plane(path):
        from .volumes import read_plane

        arr = read_plane(path, "label")[0]  # HDF5: the file's label; NIfTI, NRRD ...: the file
        if arr.dtype.kind == "f" and mode != "threshold":
            if not np.array_equal(arr, np.round(arr)):
                raise DataError(f"{path}: label image holds fractional values; set data.mask_mode=threshold")
            arr = arr.astype(np.int64)
    else:
        arr = mask_plane(open_image(path), mode, path)
    if mode == "threshold":
        arr = np.asarray(arr, dtype=np.float64)
        cut = default_mask_threshold(arr) if threshold is None else threshold
        return (arr >= cut).astype(np.int64)
    arr = arr.astype(np.int64)
    if mode == "index" and values is not None:
        arr = classes_of(arr, values, path)
    found = np.unique(arr)
    if mode == "binary":
        if len(found) > 2:
            shown = ", ".join(map(str, found[:6].tolist())) + (", ..." if len(found) > 6 else "")
            raise DataError(
                f"{path}: mask has {len(found)} distinct values [{shown}]; a binary mask holds 0 and one "
                "foreground value. Lossy (JPEG) or resampled masks: set data.mask_mode=threshold "
                "(foreground >= data.mask_threshold, default half the range); classes: data.mask_mode=index"
            )
        return (arr > 0).astype(np.int64)
    if found.min() < 0 or found.max() >= num_classes:
        raise DataError(f"{path}: mask values {found.tolist()[:8]} outside the classes 0..{num_classes - 1}")
    return arr


def resize_image(arr: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    x = torch.from_numpy(arr)[None]
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x[0]


def resize_mask(arr: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    x = torch.from_numpy(arr)[None, None].float()
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="nearest-exact")
    return x[0, 0].long()


def compact_mask(mask: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A class map in the fewest bytes that hold its values, as every loaded mask is kept:
    one byte a pixel for up to 256 classes (int64 would take eight), int32 beyond. Batches and
    scoring widen them to int64 class indices (:meth:`~superdiffusion.data.dataset.Split.stack_masks`)."""
    mask = torch.as_tensor(mask)
    if mask.numel() == 0 or (int(mask.min()) >= 0 and int(mask.max()) < 256):
        return mask.to(torch.uint8)
    return mask.to(torch.int32)


def load_pairs(
    pairs: list[Pair],
    size: tuple[int, int] | None,
    num_classes: int,
    mask_mode: str,
    channels: int | None = None,
    mask_threshold: float | None = None,
    mask_values: list[int] | None = None,
) -> dict:
    """Decode, check and resize every pair once (``size`` None: keep each one's size).

    ``images``: float32 ``(C, H, W)`` tensors in [0, 1]; ``masks``: ``(H, W)`` class maps held by
    :func:`compact_mask` (None when the pairs have no masks); ``sizes``: the original ``(H, W)``
    of each image.
    """
    if not pairs:
        raise DataError("no images to load")
    if channels is None:
        first = read_image(pairs[0].image)
        channels = first.shape[0]
    images, masks, sizes = [], [], []
    for pair in pairs:
        img = read_image(pair.image, channels)
        sizes.append(tuple(img.shape[1:]))
        images.append(resize_image(img, size) if size is not None else torch.from_numpy(img))
        if pair.mask is not None:
            mask = read_mask(pair.mask, num_classes, mask_mode, mask_threshold, mask_values)
            if mask.shape != img.shape[1:]:
                raise DataError(
                    f"{pair.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {pair.name} "
                    f"is {img.shape[2]}x{img.shape[1]}"
                )
            masks.append(compact_mask(resize_mask(mask, size) if size is not None else mask))
    return {
        "images": images,
        "masks": masks or None,
        "sizes": sizes,
        "ids": [p.id for p in pairs],
        "channels": channels,
    }
