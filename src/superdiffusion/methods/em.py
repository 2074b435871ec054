"""Entropy minimisation (Grandvalet & Bengio; ref. [23]): confident predictions.

As SSL4MIS's 2D script: labeled loss ``0.5 (CE + Dice)``, plus the mean pixel entropy
(normalised by ``log C``) of the whole batch, labeled items included, weighted by the
sigmoid ramp to 0.1."""

from __future__ import annotations

import torch

from ..method_settings import EMSettings
from .base import Batch, Method, StepContext, register


def mean_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean pixel-wise entropy of the softmax, normalised by log(C) to [0, 1]."""
    log_p = logits.log_softmax(1)
    entropy = -(log_p.exp() * log_p).sum(1)
    return entropy.mean() / torch.log(torch.tensor(float(logits.shape[1])))


@register
class EntropyMinimization(Method):
    name = "em"
    Settings = EMSettings
    unsupervised_terms = ("entropy",)
    description = "entropy minimisation on every prediction of the batch"

    def __init__(self, settings, unets, channels, num_classes):
        super().__init__(settings, unets, channels, num_classes)
        self.net = self.unets(channels, num_classes)

    def losses(self, batch: Batch, ctx: StepContext):
        logits = self.net(batch.images)
        return {"sup": self.labeled_loss(logits, batch), "entropy": mean_entropy(logits)}

    def segmenter(self):
        return self.net
