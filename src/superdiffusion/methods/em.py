"""Entropy minimisation (Grandvalet & Bengio; ref. [23]): confident predictions on
unlabeled images."""

from __future__ import annotations

import torch

from .base import Batch, Method, StepContext, supervised_ce


def mean_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean pixel-wise entropy of the softmax, normalised by log(C) to [0, 1]."""
    log_p = logits.log_softmax(1)
    entropy = -(log_p.exp() * log_p).sum(1)
    return entropy.mean() / torch.log(torch.tensor(float(logits.shape[1])))


class EntropyMinimization(Method):
    name = "em"
    description = "entropy minimisation on unlabeled predictions"

    def __init__(self, cfg, channels, num_classes, spatial_dims):
        super().__init__(cfg, channels, num_classes, spatial_dims)
        self.net = self.make_unet(channels, num_classes)

    def losses(self, batch: Batch, ctx: StepContext):
        logits = self.net(batch.images)
        out = {"sup": supervised_ce(logits, batch)}
        if batch.has_unlabeled:
            out["entropy"] = ctx.weight * mean_entropy(logits[~batch.labeled])
        return out

    def segmenter(self):
        return self.net
