"""Convert the paper's datasets, as users download them, into this project's layout
(``images/`` + ``masks/`` or ``labels/`` + ``split.csv``).

- ``glas``: Warwick-QU ``train_N.bmp`` + ``train_N_anno.bmp`` (instance labels, any
  non-zero value is gland); ``testA_*``/``testB_*`` are the official test split.
- ``ph2``: the ``PH2 Dataset images/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp`` +
  ``IMDxxx_lesion/IMDxxx_lesion.bmp`` tree; no official split (seeded 80/20).
- ``hmeps``: MEYE/HMEPS image and mask folders (``images/`` + ``masks/``, same stems);
  seeded 80/20 unless a ``split.csv`` is there.
- ``la``: LA per-case folders with ``lgemri.nrrd`` + ``laendo.nrrd`` (written as NIfTI) or
  ``mri_norm2.h5`` (copied); 80 train / 20 test (seeded) as in the literature.
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from ..safefs import require_empty, save_image, write_bytes, write_text
from .folder import IMAGE_EXTENSIONS, read_image
from .splits import carve

IMPORTERS = ("glas", "ph2", "hmeps", "la")


def _prepare(dest: Path) -> None:
    require_empty(dest)
    (dest / "images").mkdir(parents=True, exist_ok=True)


def _save_pair(image_path: Path, mask: np.ndarray, dest: Path, case: str) -> None:
    img = Image.open(image_path)
    img.load()
    if img.size != (mask.shape[1], mask.shape[0]):
        raise DataError(
            f"{image_path}: image is {img.size[0]}x{img.size[1]} but its mask is {mask.shape[1]}x{mask.shape[0]}"
        )
    save_image(dest / "images" / f"{case}.png", img.convert("RGB" if img.mode not in ("L", "I;16") else img.mode))
    save_image(dest / "masks" / f"{case}.png", Image.fromarray(((mask > 0) * 255).astype(np.uint8)))


def _mask(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as m:
            arr = np.asarray(m)
    except OSError as err:
        raise DataError(f"{path}: cannot read mask ({err})") from None
    return arr if arr.ndim == 2 else arr[..., 0]


def _write_split(dest: Path, rows: list[tuple[str, str]]) -> dict[str, int]:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["id", "split"])
    writer.writerows(sorted(rows))
    write_text(dest / "split.csv", text.getvalue())
    counts: dict[str, int] = {}
    for _, split in rows:
        counts[split] = counts.get(split, 0) + 1
    return counts


def _seeded_split(ids: list[str], seed: int, test_fraction: float = 0.2) -> list[tuple[str, str]]:
    _, test = carve(sorted(ids), test_fraction, seed, stream=11)
    held = set(test)
    return [(i, "test" if i in held else "train") for i in ids]


def import_glas(source: Path, dest: Path, seed: int = 0) -> dict[str, int]:
    (dest / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    for path in sorted(source.rglob("*.bmp")):
        if path.stem.endswith("_anno") or not path.stem.startswith(("train_", "testA_", "testB_")):
            continue
        anno = path.with_name(f"{path.stem}_anno.bmp")
        if not anno.exists():
            raise DataError(f"{path}: no annotation {anno.name} beside it")
        _save_pair(path, _mask(anno), dest, path.stem)
        rows.append((path.stem, "train" if path.stem.startswith("train_") else "test"))
    if not rows:
        raise DataError(f"{source}: no GlaS files (train_N.bmp, testA_N.bmp, testB_N.bmp)")
    return _write_split(dest, rows)


def import_ph2(source: Path, dest: Path, seed: int = 0) -> dict[str, int]:
    (dest / "masks").mkdir(parents=True, exist_ok=True)
    base = next((p for p in [source / "PH2 Dataset images", source] if p.is_dir()), source)
    cases = sorted(p for p in base.iterdir() if p.is_dir() and p.name.startswith("IMD"))
    if not cases:
        raise DataError(f"{source}: no IMDxxx case folders (expected the 'PH2 Dataset images' tree)")
    for case in cases:
        image = case / f"{case.name}_Dermoscopic_Image" / f"{case.name}.bmp"
        lesion = case / f"{case.name}_lesion" / f"{case.name}_lesion.bmp"
        for needed in (image, lesion):
            if not needed.exists():
                raise DataError(f"{needed}: missing in the PH2 tree")
        _save_pair(image, _mask(lesion), dest, case.name)
    return _write_split(dest, _seeded_split([c.name for c in cases], seed))


def import_hmeps(source: Path, dest: Path, seed: int = 0) -> dict[str, int]:
    (dest / "masks").mkdir(parents=True, exist_ok=True)
    images = (
        {p.stem: p for p in (source / "images").iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
        if (source / "images").is_dir()
        else {}
    )
    if not images:
        raise DataError(f"{source}: no images/ folder with images")
    masks = {p.stem: p for p in (source / "masks").iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
    for stem, path in sorted(images.items()):
        mask = next((masks[stem + s] for s in ("", "_mask", "m") if stem + s in masks), None)
        if mask is None:
            raise DataError(f"{path}: no mask in {source / 'masks'}")
        read_image(path)
        _save_pair(path, _mask(mask), dest, stem)
    if (source / "split.csv").exists():
        write_bytes(dest / "split.csv", (source / "split.csv").read_bytes())
        with open(dest / "split.csv", newline="") as handle:
            rows = [(r["id"], r["split"]) for r in csv.DictReader(handle)]
        counts: dict[str, int] = {}
        for _, s in rows:
            counts[s] = counts.get(s, 0) + 1
        return counts
    return _write_split(dest, _seeded_split(list(images), seed))


def import_la(source: Path, dest: Path, seed: int = 0) -> dict[str, int]:
    import nibabel as nib

    from .volumes import read_volume

    (dest / "labels").mkdir(parents=True, exist_ok=True)
    cases = sorted(p for p in source.iterdir() if p.is_dir())
    ids = []
    for case in cases:
        if (case / "lgemri.nrrd").exists():
            if not (case / "laendo.nrrd").exists():
                raise DataError(f"{case / 'lgemri.nrrd'}: no laendo.nrrd beside it")
            image, label = read_volume(case / "lgemri.nrrd"), read_volume(case / "laendo.nrrd")
            if image.array.shape != label.array.shape:
                raise DataError(
                    f"{case / 'laendo.nrrd'}: shape {label.array.shape} differs from lgemri.nrrd {image.array.shape}"
                )
            volume = nib.Nifti1Image(image.array.astype(np.float32), image.affine)
            write_bytes(dest / "images" / f"{case.name}.nii.gz", gzip.compress(volume.to_bytes()))
            volume = nib.Nifti1Image((label.array > 0).astype(np.uint8), image.affine)
            write_bytes(dest / "labels" / f"{case.name}.nii.gz", gzip.compress(volume.to_bytes()))
        elif (case / "mri_norm2.h5").exists():
            read_volume(case / "mri_norm2.h5", "label")
            (dest / case.name).mkdir()
            write_bytes(dest / case.name / "mri_norm2.h5", (case / "mri_norm2.h5").read_bytes())
        else:
            continue
        ids.append(case.name)
    if not ids:
        raise DataError(f"{source}: no LA cases (CASE/lgemri.nrrd + laendo.nrrd, or CASE/mri_norm2.h5)")
    for sub in ("images", "labels"):
        if not any((dest / sub).iterdir()):
            (dest / sub).rmdir()
    return _write_split(dest, _seeded_split(ids, seed))


def import_dataset(kind: str, source: str | Path, dest: str | Path, seed: int = 0) -> dict[str, int]:
    """Convert ``source`` (an official download) of dataset ``kind`` into ``dest``."""
    source, dest = Path(source), Path(dest)
    if kind not in IMPORTERS:
        raise DataError(f"unknown dataset {kind!r}; importers: {', '.join(IMPORTERS)}")
    if not source.is_dir():
        raise DataError(f"{source}: source folder not found")
    _prepare(dest)
    return {"glas": import_glas, "ph2": import_ph2, "hmeps": import_hmeps, "la": import_la}[kind](source, dest, seed)
