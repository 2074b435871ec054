"""Label regimes and validation carving, seeded and deterministic."""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError


def labeled_count(n: int, percent: float) -> int:
    """``ceil(N * p / 100)`` (Sec. 4.2), rejecting regimes that leave no labeled image."""
    if not 0 < percent <= 100:
        raise ConfigError(f"data.labeled_percent must be in (0, 100], got {percent}")
    count = math.ceil(n * percent / 100 - 1e-9)
    if count < 1:
        raise ConfigError(f"data.labeled_percent={percent} leaves no labeled image among {n}")
    return count


def split_labeled(ids: list[str], percent: float, seed: int) -> tuple[list[str], list[str]]:
    """Draw the labeled subset of a regime with the run's seed; the rest is unlabeled."""
    order = np.random.default_rng([seed, 1]).permutation(len(ids))
    k = labeled_count(len(ids), percent)
    chosen = set(order[:k].tolist())
    labeled = [ids[i] for i in range(len(ids)) if i in chosen]
    unlabeled = [ids[i] for i in range(len(ids)) if i not in chosen]
    return labeled, unlabeled


def read_ids(path: str | Path) -> list[str]:
    """Image ids from a file: one per line, or a CSV whose first row names an ``id`` column
    (as ``superdiffusion suggest`` writes). Blank lines and ``#`` comments are skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: labeled-ids file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text file of ids (one per line, or a CSV with an 'id' column)") from None
    if "\0" in text:
        raise DataError(f"{path}: not a text file of ids (one per line, or a CSV with an 'id' column)")
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if lines and "," in lines[0] and "id" in lines[0].split(","):
        column = lines[0].split(",").index("id")
        lines = [line.split(",")[column] for line in lines[1:]]
    if not lines:
        raise DataError(f"{path}: no ids")
    return lines


def choose_labeled(ids: list[str], cfg, seed: int, recorded: dict | None = None) -> tuple[list[str], list[str]]:
    """The labeled and unlabeled training ids: a run's recorded ones (``recorded``, its
    ``splits.json``); the ids of ``data.labeled_ids`` when it is set (a file;
    ``data.labeled_percent`` is then not used); else the seeded draw of the regime."""
    if recorded is not None:
        chosen = set(recorded["labeled"])
        return [i for i in ids if i in chosen], [i for i in ids if i not in chosen]
    if not cfg.labeled_ids:
        return split_labeled(ids, cfg.labeled_percent, seed)
    wanted = read_ids(cfg.labeled_ids)
    known = set(ids)
    unknown = [i for i in wanted if i not in known]
    if unknown:
        shown = unknown[0] if len(unknown[0]) <= 40 else unknown[0][:40] + "..."  # an id, never a whole line
        raise DataError(
            f"{cfg.labeled_ids}: {len(unknown)} of its {len(wanted)} ids are not training images of {cfg.root} "
            f"(the first: {shown!r})"
        )
    chosen = set(wanted)
    return [i for i in ids if i in chosen], [i for i in ids if i not in chosen]


def carve(
    ids: list[str], fraction: float, seed: int, stream: int, groups: list[str] | None = None
) -> tuple[list[str], list[str]]:
    """Hold out ``round(N * fraction)`` (at least 1) of ``ids``; returns (kept, held_out).
    ``groups`` (one per id, e.g. the subject): whole groups are held out, in a seeded order,
    until that many images are, and at least one group is kept."""
    if not 0 < fraction < 1:
        raise ConfigError(f"split fraction must be in (0, 1), got {fraction}")
    if len(ids) < 2:
        raise ConfigError(f"cannot carve a split from {len(ids)} image(s)")
    k = min(len(ids) - 1, max(1, round(len(ids) * fraction)))
    rng = np.random.default_rng([seed, stream])
    if groups is None:
        held = set(rng.permutation(len(ids))[:k].tolist())
    else:
        names = sorted(set(groups))
        if len(names) < 2:
            raise ConfigError(f"cannot hold out whole groups from {len(names)} group")
        chosen: set[str] = set()
        count = 0
        for i in rng.permutation(len(names)).tolist():
            if count >= k or len(chosen) == len(names) - 1:
                break
            chosen.add(names[i])
            count += groups.count(names[i])
        held = {i for i, g in enumerate(groups) if g in chosen}
    return [ids[i] for i in range(len(ids)) if i not in held], [ids[i] for i in range(len(ids)) if i in held]


# data.group_column=auto: the first of these that split.csv has ("case": e.g. 2D slices of one volume)
MIN_FOLDER_GROUPS = 10  # subfolders (or series of names) group images, as patients, by default from this many on
# split.csv's columns naming an image's subject, then the subfolder an image sits in (folder.scan_folder), then
# the series its name gives (name_series)
GROUP_COLUMNS = ("group", "subject", "subject_id", "patient", "patient_id", "case", "folder", "series")
# a name's trailing number, with the word before it that numbers slices or frames: "_slice_012", "-045", "_frame01"
SERIES_NUMBER = re.compile(r"[_\-. ]*(?:slice|slc|frame|z|s)?[_\-. ]*\d+$", re.IGNORECASE)


def name_series(ids: list[str]) -> dict[str, str] | None:
    """Each id's series when the names number slices or frames of series (``patient001_slice_03``,
    ``case_00003_002``): the name less its trailing number, less the next one too while that
    still groups (``patient001_frame12_slice_2`` -> ``patient001``: a heart's two frames together).
    The names group when they give at least :data:`MIN_FOLDER_GROUPS` series, of two images each
    on average, none holding half the images; else None (``ISIC_0000001`` numbers a collection,
    ``benign_001`` a class, a hash ending in a digit one image)."""

    def strip(name: str) -> str:  # a name that is only a number (CVC's 1.png, a subfolder's s1.png) numbers none
        folder, slash, stem = name.rpartition("/")
        cut = SERIES_NUMBER.sub("", stem)
        return f"{folder}{slash}{cut}" if cut else name

    best, current = None, list(ids)
    while True:
        stripped = [strip(i) for i in current]
        if stripped == current:
            break
        counts = Counter(stripped)
        if not MIN_FOLDER_GROUPS <= len(counts) <= len(ids) / 2 or max(counts.values()) > len(ids) / 2:
            break
        best = current = stripped
    return dict(zip(ids, best)) if best is not None else None


def add_name_series(pairs: list) -> None:
    """Give each pair (an image or volume) the column ``series`` when the names group
    (:func:`name_series`); ``data.group_column=auto`` takes it after split.csv's and the folder."""
    series = name_series([p.id for p in pairs])
    for pair in pairs if series else []:
        pair.columns.setdefault("series", series[pair.id])


def group_column(pairs: list, column: str | None, split_file: Path) -> str | None:
    """The split.csv column whose values group the images (``data.group_column``), or None
    to split image by image."""
    if column is None:
        return None
    present = next((p.columns for p in pairs if p.columns), {})
    if column == "auto":  # a few subfolders are more likely classes (benign/, malignant/) than patients
        few = len({p.columns.get("folder") for p in pairs}) < MIN_FOLDER_GROUPS
        return next((c for c in GROUP_COLUMNS if c in present and not (c == "folder" and few)), None)
    if column not in present:
        others = ", ".join(present) if present else "none besides id and split"
        where = split_file if split_file.is_file() else f"{split_file} (not found)"
        raise DataError(f"{where}: no column {column!r} for data.group_column; its other columns: {others}")
    return column


def groups_of(pairs: list, column: str | None) -> list[str] | None:
    """Each pair's group (an image with a blank group is a group of its own), or None."""
    return [p.columns.get(column) or f"image {p.id}" for p in pairs] if column else None
