"""A seeded generator of thin curvilinear structures (vessel-like trees) on textured,
unevenly lit, noisy backgrounds: a known-answer benchmark for thin-structure segmentation.

Each image holds branching curves 1-3 px wide (wider near the root, thinner at the tips),
covering a foreground fraction drawn in [``min_fraction``, ``max_fraction``]. The folder it
writes is the ``images/`` + ``masks/`` + ``split.csv`` layout every command reads.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ..safefs import require_empty, save_image, write_text


def _stamp(mask: np.ndarray, y: float, x: float, width: int) -> None:
    """Mark a ``width`` x ``width`` footprint (a plus sign for width 3) centred on (y, x)."""
    h, w = mask.shape
    cy, cx = int(round(y)), int(round(x))
    if width == 1:
        offsets = [(0, 0)]
    elif width == 2:
        offsets = [(0, 0), (0, 1), (1, 0), (1, 1)]
    else:
        offsets = [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)]
    for dy, dx in offsets:
        if 0 <= cy + dy < h and 0 <= cx + dx < w:
            mask[cy + dy, cx + dx] = True


def _branch(mask, rng, y, x, angle, width, depth, budget) -> None:
    """Grow one branch by a smooth random walk; it may spawn thinner children."""
    length = int(rng.integers(30, 90)) * max(1, mask.shape[0] // 128)
    turn = 0.0
    for step in range(length):
        if budget[0] <= 0:
            return
        turn = 0.9 * turn + rng.normal(0, 0.012)
        angle += turn
        y, x = y + math.sin(angle), x + math.cos(angle)
        if not (0 <= y < mask.shape[0] and 0 <= x < mask.shape[1]):
            return
        _stamp(mask, y, x, width)
        budget[0] -= 1
        if depth < 6 and step > 8 and rng.random() < 0.03:
            child = max(1, width - int(rng.random() < 0.6))
            _branch(mask, rng, y, x, angle + rng.choice([-1, 1]) * rng.uniform(0.4, 1.1), child, depth + 1, budget)
    if depth < 6 and rng.random() < 0.7:
        child = max(1, width - 1)
        _branch(mask, rng, y, x, angle + rng.uniform(-0.6, 0.6), child, depth + 1, budget)


def thin_structure_mask(size: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean ``(size, size)`` mask of vessel-like trees covering about ``fraction``."""
    mask = np.zeros((size, size), bool)
    target = fraction * size * size
    for _ in range(200):
        if mask.sum() >= target:
            break
        y, x = rng.uniform(0.1, 0.9, 2) * size
        budget = [int(target - mask.sum()) // 2 + 1]
        _branch(mask, rng, y, x, rng.uniform(0, 2 * math.pi), 3, 0, budget)
    return mask


def thin_structure_image(
    mask: np.ndarray, rng: np.random.Generator, contrast: float = 1.0, noise: float = 0.02
) -> np.ndarray:
    """An 8-bit grey image: textured background with dark blob distractors, uneven
    illumination, darker vessels whose contrast is faint for the thinnest and varies along
    them, blur and Gaussian noise (a thresholded black top-hat reaches a Dice of 0.5-0.6).
    ``contrast`` scales the vessels' darkening (below 1: fainter vessels) and ``noise`` is the
    standard deviation of the Gaussian noise (intensities in [0, 1])."""
    size = mask.shape[0]
    texture = sum(
        ndimage.gaussian_filter(rng.normal(0, 1, mask.shape), sigma) * weight
        for sigma, weight in ((size / 16, 6.0), (size / 64, 3.0), (1.0, 1.5))
    )
    yy, xx = np.mgrid[0:size, 0:size] / size
    cy, cx = rng.uniform(0.2, 0.8, 2)
    light = 1.0 - 0.6 * ((yy - cy) ** 2 + (xx - cx) ** 2) + 0.2 * rng.uniform(-1, 1) * (xx - 0.5)
    base = 0.55 * light + 0.06 * texture / (np.abs(texture).max() + 1e-6)
    for _ in range(int(rng.integers(3, 9))):  # dark blobs (lesion-like distractors)
        by, bx = rng.uniform(0, 1, 2)
        radius = rng.uniform(0.01, 0.04)
        base -= rng.uniform(0.03, 0.08) * np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / (2 * radius**2))
    thickness = ndimage.distance_transform_edt(mask)  # 1 on 1-px vessels, up to ~2 on 3-px ones
    along = 0.5 + ndimage.gaussian_filter(rng.random(mask.shape), size / 20) / 0.5 * 0.5
    darkening = 0.1 * contrast * thickness * along
    vessels = ndimage.gaussian_filter(darkening, 0.8)
    image = base - vessels * light + rng.normal(0, noise, mask.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def write_thin_structures(
    dest: str | Path,
    count: int = 48,
    size: int = 256,
    seed: int = 0,
    test_count: int | None = None,
    min_fraction: float = 0.05,
    max_fraction: float = 0.15,
    contrast: float = 1.0,
    noise: float = 0.02,
) -> dict[str, int]:
    """Write ``count`` image/mask pairs (``thin000.png`` ...) and a ``split.csv`` whose last
    ``test_count`` images (default: half) are the test split. Returns the split counts.
    Refuses a folder that already holds files."""
    from ..errors import DataError

    dest = Path(dest)
    require_empty(dest)
    if count < 4:
        raise DataError(f"count must be at least 4, got {count}")
    if not (0 < contrast <= 10 and 0 <= noise <= 1):
        raise DataError(f"contrast must be in (0, 10] and noise in [0, 1], got {contrast} and {noise}")
    test_count = count // 2 if test_count is None else test_count
    (dest / "images").mkdir(parents=True, exist_ok=True)
    (dest / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = ["id,split"]
    for i in range(count):
        mask = thin_structure_mask(size, rng.uniform(min_fraction, max_fraction), rng)
        name = f"thin{i:03d}"
        save_image(dest / "images" / f"{name}.png", Image.fromarray(thin_structure_image(mask, rng, contrast, noise)))
        save_image(dest / "masks" / f"{name}.png", Image.fromarray(mask.astype(np.uint8) * 255))
        rows.append(f"{name},{'test' if i >= count - test_count else 'train'}")
    write_text(dest / "split.csv", "\n".join(rows) + "\n")
    write_text(
        dest / "PROVENANCE.md",
        f"Synthetic thin structures written by superdiffusion.data.synthetic.write_thin_structures("
        f"count={count}, size={size}, seed={seed}, test_count={test_count}, fractions "
        f"{min_fraction}-{max_fraction}, contrast={contrast}, noise={noise}).\n",
    )
    return {"train": count - test_count, "test": test_count}
