"""Uncertainty rectified pyramid consistency (Luo et al.; ref. [29]): deep-supervision
heads at every decoder scale, consistency with their mean weighted by their disagreement."""

from __future__ import annotations

import torch

from .base import Batch, Method, StepContext, supervised_ce


def pyramid_consistency(logits: list[torch.Tensor]) -> torch.Tensor:
    """For each scale: ``mean(exp(-KL) * (p_s - p_mean)^2) / mean(exp(-KL)) + mean(KL)``."""
    probs = [x.softmax(1) for x in logits]
    mean = torch.stack(probs).mean(0)
    total = mean.new_zeros(())
    for p in probs:
        kl = (p * ((p + 1e-6).log() - (mean + 1e-6).log())).sum(1, keepdim=True)
        weight = torch.exp(-kl)
        total = total + (weight * (p - mean) ** 2).mean() / (weight.mean() + 1e-8) + kl.mean()
    return total / len(probs)


class URPC(Method):
    name = "urpc"
    description = "uncertainty rectified pyramid consistency over multi-scale decoder heads"

    def __init__(self, cfg, channels, num_classes, spatial_dims):
        super().__init__(cfg, channels, num_classes, spatial_dims)
        self.net = self.make_unet(channels, num_classes, deep_supervision=True)

    def losses(self, batch: Batch, ctx: StepContext):
        heads = self.net.forward_all(batch.images).deep
        out = {"sup": sum(supervised_ce(h, batch) for h in heads) / len(heads)}
        if batch.has_unlabeled:
            unl = ~batch.labeled
            out["consistency"] = ctx.weight * pyramid_consistency([h[unl] for h in heads])
        return out

    def segmenter(self):
        return self.net
