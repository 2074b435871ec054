"""The intensity prior: a segmenter that learns nothing, the control for a teacher trained without
labels (Otsu's threshold on the grey image)."""

from __future__ import annotations

import torch


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold of ``values``: of ``bins`` equal-width cuts, the one that maximises the
    variance between the values below and above it."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return low
    counts = torch.histc(values.float().flatten(), bins, low, high).double()
    centres = torch.linspace(low, high, bins + 1, dtype=torch.float64)
    centres = (centres[:-1] + centres[1:]) / 2
    below = counts.cumsum(0)
    mass_below = (counts * centres).cumsum(0)
    total, mass = below[-1], mass_below[-1]
    above = total - below
    between = (mass_below * total - below * mass) ** 2 / (below * above).clamp_min(1e-12)
    between[(below == 0) | (above == 0)] = -1
    k = int(between.argmax())
    return float((centres[k] + centres[min(k + 1, bins - 1)]) / 2)


def intensity_prior(image: torch.Tensor) -> torch.Tensor:
    """A segmenter that learns nothing, the control for a teacher trained without labels:
    ``(C, *S)`` image -> ``(2, *S)`` class probabilities. The grey image (the mean of the
    channels) above its own Otsu threshold is foreground; the probability rises with the grey
    value (so its pixel ranking, the AUROC, is the grey value's), 0.5 at the threshold."""
    grey = image.float().mean(0)
    scale = grey.std().clamp_min(1e-6)
    fg = torch.sigmoid((grey - otsu_threshold(grey)) / scale * 4)
    return torch.stack([1 - fg, fg])
