"""Losses shared by several methods: the reference implementations' soft Dice, and cross
pseudo supervision (Eq. 9)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_loss(
    logits: torch.Tensor, labels: torch.Tensor, include_background: bool = True, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Soft Dice loss of the reference implementations (SSL4MIS ``DiceLoss``, DTC's
    ``dice_loss``): squared terms in the denominator, sums pooled over the batch, smoothing
    1e-5, averaged over the classes (background included unless ``include_background`` is
    False), as MONAI's :class:`~monai.losses.DiceLoss` computes it. ``mask`` (``(B, *S)``,
    True = kept) leaves pixels out of every sum; their labels may hold any value."""
    from monai.losses import DiceLoss

    options = dict(
        include_background=include_background,
        softmax=True,
        squared_pred=True,
        batch=True,
        smooth_nr=1e-5,
        smooth_dr=1e-5,
    )
    if mask is not None:  # the kept pixels as one batch item of shape (C, K): the sums are pooled anyway
        mask = mask.bool()
        logits, labels = logits.movedim(1, -1)[mask].T[None], labels[mask][None]
    return DiceLoss(to_onehot_y=True, **options)(logits, labels.unsqueeze(1))


def cps_loss(logits_a, logits_b):
    """``CE(a, argmax b) + CE(b, argmax a)``; the pseudo-labels carry no gradient."""
    return F.cross_entropy(logits_a, logits_b.detach().argmax(1)) + F.cross_entropy(
        logits_b, logits_a.detach().argmax(1)
    )
