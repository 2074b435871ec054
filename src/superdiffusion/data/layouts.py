"""The field's standard dataset folders, read in place: ``data.root=/path/DatasetXXX_Name``.

- **nnU-Net v2 raw**: ``dataset.json`` with ``channel_names``, ``labels`` (name -> index) and
  ``file_ending``; ``imagesTr/CASE_0000{ending}`` (one file per channel), ``labelsTr/CASE{ending}``.
  2D datasets use PNG (or another image format) with the same names, 3D ones NIfTI.
- **Medical Segmentation Decathlon**: ``dataset.json`` with ``modality`` (index -> name),
  ``labels`` (index -> name) and a ``training`` list of ``{"image", "label"}`` paths.

The training cases are used (``imagesTs`` has no labels to score against); a case of
``imagesTr`` without a label in ``labelsTr`` is an unlabeled training case (the data a
semi-supervised method is for). The test split is carved from the labeled cases as for any folder without ``split.csv``, or taken from a
``split.csv`` beside ``dataset.json``. The classes, their names and the channels come from
``dataset.json``; :func:`apply_dataset_json` fills the data settings from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..config import DataConfig
from ..errors import DataError

VOLUME_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class Case:
    id: str
    images: list[Path]  # one file per channel (MSD: one file)
    label: Path | None  # None: an unlabeled case (an nnU-Net image without a label)


@dataclass
class DatasetJson:
    kind: str  # nnunet or msd
    root: Path
    channel_names: list[str]
    label_names: list[str]  # index -> name
    spatial_dims: int
    cases: list[Case] = field(default_factory=list)


def _load(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read dataset.json ({err})") from None
    if not isinstance(content, dict):
        raise DataError(f"{path}: dataset.json must hold a JSON object")
    return content


def _indexed(mapping: Any, path: Path, key: str) -> list[str]:
    """``{"0": "T2", "1": "ADC"}`` -> ``["T2", "ADC"]``, checking the indices run 0..n-1."""
    if not isinstance(mapping, dict) or not mapping:
        raise DataError(f"{path}: '{key}' must be a non-empty mapping of index to name")
    try:
        items = sorted((int(k), str(v)) for k, v in mapping.items())
    except ValueError:
        raise DataError(f"{path}: the keys of '{key}' must be indices 0, 1, ...") from None
    if [i for i, _ in items] != list(range(len(items))):
        raise DataError(f"{path}: the indices of '{key}' must run 0..{len(items) - 1}, got {[i for i, _ in items]}")
    return [name for _, name in items]


def _dims(ending: str, path: Path) -> int:
    return 3 if ending.lower().endswith(VOLUME_ENDINGS) else 2


def read_dataset_json(root: str | Path) -> DatasetJson | None:
    """The layout of ``root`` when it holds a ``dataset.json`` (None otherwise)."""
    root = Path(root)
    path = root / "dataset.json"
    if not path.is_file():
        return None
    content = _load(path)
    if "training" in content and "file_ending" not in content:
        return _msd(root, path, content)
    return _nnunet(root, path, content)


def _nnunet(root: Path, path: Path, content: dict[str, Any]) -> DatasetJson:
    for key in ("channel_names", "labels", "file_ending"):
        if key not in content:
            raise DataError(f"{path}: nnU-Net's dataset.json needs '{key}' (or an MSD 'training' list)")
    channels = _indexed(content["channel_names"], path, "channel_names")
    labels = content["labels"]
    if not isinstance(labels, dict) or any(not isinstance(v, int) or isinstance(v, bool) for v in labels.values()):
        raise DataError(
            f"{path}: 'labels' must map each name to one class index (region-based labels, lists of "
            "indices, are not supported)"
        )
    by_index = {v: k for k, v in labels.items()}
    if sorted(by_index) != list(range(len(by_index))):
        raise DataError(f"{path}: the label indices must run 0..{len(by_index) - 1}, got {sorted(by_index)}")
    ending = str(content["file_ending"])
    layout = DatasetJson("nnunet", root, channels, [by_index[i] for i in range(len(by_index))], _dims(ending, path))
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise DataError(f"{folder}: folder not found (nnU-Net layout: imagesTr/ and labelsTr/ beside dataset.json)")
    label_files = sorted(p for p in labels_dir.iterdir() if p.name.endswith(ending) and not p.name.startswith("."))
    if not label_files:
        raise DataError(f"{labels_dir}: no label files ending in {ending}")
    expected = set()
    for label in label_files:
        case = label.name[: -len(ending)]
        images = [images_dir / f"{case}_{c:04d}{ending}" for c in range(len(channels))]
        for image in images:
            if not image.is_file():
                raise DataError(f"{image}: missing (case {case!r} of {labels_dir} needs one file per channel)")
        expected.update(images)
        layout.cases.append(Case(case, images, label))
    extra = sorted(p for p in images_dir.iterdir() if p.name.endswith(ending) and p not in expected)
    labeled = len(layout.cases)
    layout.cases += _unlabeled_cases(extra, ending, len(channels), labels_dir)
    declared = content.get("numTraining")
    if isinstance(declared, int) and declared not in (labeled, len(layout.cases)):
        raise DataError(
            f"{path}: numTraining is {declared} but imagesTr holds {len(layout.cases)} cases, {labeled} of them "
            "with a label in labelsTr"
        )
    return layout


def _unlabeled_cases(files: list[Path], ending: str, channels: int, labels_dir: Path) -> list[Case]:
    """The cases of ``imagesTr`` files without a label: each named ``CASE_XXXX{ending}``, one file
    per channel."""
    by_case: dict[str, list[Path]] = {}
    for file in files:
        stem = file.name[: -len(ending)]
        case, _, channel = stem.rpartition("_")
        if not (case and len(channel) == 4 and channel.isdigit() and int(channel) < channels):
            raise DataError(
                f"{file}: not an nnU-Net image name (CASE_XXXX{ending}, XXXX the channel 0000..{channels - 1:04d})"
            )
        by_case.setdefault(case, []).append(file)
    cases = []
    for case, found in by_case.items():
        images = [file.parent / f"{case}_{c:04d}{ending}" for c in range(channels)]
        missing = [image for image in images if image not in found]
        if missing:
            raise DataError(f"{missing[0]}: missing (case {case!r}, without a label in {labels_dir}, needs one file per channel)")
        cases.append(Case(case, images, None))
    return cases


def _msd(root: Path, path: Path, content: dict[str, Any]) -> DatasetJson:
    channels = _indexed(content.get("modality", {"0": "image"}), path, "modality")
    labels = _indexed(content.get("labels"), path, "labels")
    training = content["training"]
    if not isinstance(training, list) or not training:
        raise DataError(f"{path}: 'training' must be a non-empty list of {{'image', 'label'}} entries")
    cases = []
    for n, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise DataError(f"{path}: training entry {n} needs 'image' and 'label'")
        image, label = ((root / str(entry[k])).resolve() for k in ("image", "label"))
        for key, file in (("image", image), ("label", label)):
            if not file.is_relative_to(root.resolve()):
                raise DataError(
                    f"{path}: training entry {n} ({key} {str(entry[key])[:80]!r}) points outside the dataset folder; "
                    "superdiffusion reads only files inside it"
                )
        for file in (image, label):
            if not file.is_file():
                raise DataError(f"{file}: missing (training entry {n} of {path})")
        name = image.name
        ending = next((e for e in VOLUME_ENDINGS if name.lower().endswith(e)), image.suffix)
        cases.append(Case(name[: -len(ending)] if ending else image.stem, [image], label))
    dims = _dims(cases[0].images[0].name, path)  # several modalities: one 4D file a case, read as channels
    return DatasetJson("msd", root, channels, labels, dims, cases)


def apply_dataset_json(cfg, layout: DatasetJson):
    """``cfg`` (a ``DataConfig``) with the classes, the dimensionality and the label reading
    taken from ``dataset.json``. A setting the user changed from its default to another value
    than ``dataset.json`` gives is refused rather than silently replaced."""
    default = DataConfig()
    wanted = {"num_classes": len(layout.label_names), "spatial_dims": layout.spatial_dims}
    for key, value in wanted.items():
        current = getattr(cfg, key)
        if current != value and current != getattr(default, key):
            raise DataError(
                f"{layout.root / 'dataset.json'}: declares {key.replace('_', ' ')} = {value}, but data.{key}={current}; "
                f"drop data.{key} (it is read from dataset.json)"
            )
    if cfg.mask_mode not in ("binary", "index"):
        raise DataError(f"{layout.root / 'dataset.json'}: label files hold class indices; drop data.mask_mode")
    try:
        return DataConfig.model_validate({**cfg.model_dump(), **wanted, "mask_mode": "index"})
    except ValidationError as err:
        raise DataError(f"{layout.root / 'dataset.json'}: {err.errors()[0]['msg']}") from None
