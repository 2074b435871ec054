"""Does an uncertainty map say where the model is wrong? Three measures, for any source of
per-pixel uncertainty (binary tasks):

- ``error_auroc``: how well the uncertainty separates wrong pixels from right ones (area
  under the ROC curve, MONAI's ``compute_roc_auc``; 0.5 is chance);
- ``dice_spearman``: Spearman's correlation between an image's mean uncertainty and its
  Dice (a useful map is high where Dice is low, so good values are negative);
- ``ece``: the expected calibration error of the foreground probability itself, 15 equal
  bins over [0, 1]: the pixel-weighted mean gap between the mean probability in a bin and
  the share of foreground pixels in it.

Sources: ``spread`` (the standard deviation of the foreground probability over K noise
draws of a diffusion method), ``entropy`` (the binary entropy of the averaged foreground
probability, available for every method) and ``teacher_disagreement`` (the absolute
difference between the teacher's and the student's foreground probability, for the paper's
method).
"""

from __future__ import annotations

import math

import torch
from monai.metrics import compute_roc_auc
from scipy import stats

ECE_BINS = 15


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of a foreground probability (0 at 0 and 1, 1 at 0.5)."""
    p = p.double().clamp(1e-12, 1 - 1e-12)
    return -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))


def expected_calibration_error(fg_prob: torch.Tensor, target: torch.Tensor, bins: int = ECE_BINS) -> float:
    p, y = fg_prob.double().flatten(), (target > 0).double().flatten()
    index = (p * bins).long().clamp(max=bins - 1)
    count = torch.bincount(index, minlength=bins).double()
    gap = (torch.bincount(index, p, bins) - torch.bincount(index, y, bins)).abs()
    return float(gap.sum() / count.sum())


def error_auroc(uncertainty: torch.Tensor, errors: torch.Tensor) -> float:
    """AUROC of ``uncertainty`` for the pixels where ``errors`` is True (nan when every pixel
    is right, or every one wrong)."""
    e = errors.flatten()
    if bool(e.all()) or not bool(e.any()):
        return float("nan")
    return float(compute_roc_auc(uncertainty.flatten().double(), e.long()))


def dice_spearman(uncertainty: torch.Tensor, dice: list[float]) -> float:
    means = uncertainty.flatten(1).double().mean(1).tolist()
    if len(means) < 3 or len(set(means)) < 2 or len(set(dice)) < 2:
        return float("nan")
    return float(stats.spearmanr(means, dice).statistic)


def uncertainty_report(
    fg_prob: torch.Tensor,
    target: torch.Tensor,
    threshold: float,
    dice: list[float],
    sources: dict[str, torch.Tensor],
) -> dict:
    """The measures above for each source (same shape as ``fg_prob``: ``(N, *S)``)."""
    errors = (fg_prob > threshold) != (target > 0)
    report: dict = {"ece": expected_calibration_error(fg_prob, target), "ece_bins": ECE_BINS, "sources": {}}
    for name, u in sources.items():
        report["sources"][name] = {
            "error_auroc": error_auroc(u, errors),
            "dice_spearman": dice_spearman(u, dice),
            "mean": float(u.double().mean()),
        }
    return report


def finite(report: dict) -> dict:
    """JSON has no NaN: the measures that are undefined become None."""
    if isinstance(report, dict):
        return {k: finite(v) for k, v in report.items()}
    if isinstance(report, float) and math.isnan(report):
        return None
    return report
