"""Uncertainty rectified pyramid consistency (Luo et al.; ref. [29]), as SSL4MIS's 2D
script defines it.

- The UNet has a 3x3 head at each of the three coarser decoder scales besides the main one;
  while training they see dropout (p = 0.5), feature dropout and feature noise (coarse to
  fine), and their logits are upsampled (nearest) to the input size.
- Labeled loss: ``0.5 (CE + Dice)`` averaged over the four heads.
- Consistency on the unlabeled items, for each head s with softmax ``p_s`` and the mean
  ``p`` of the four: ``KL_s = sum_c p log(p / p_s)`` (PyTorch's ``KLDivLoss(log p_s, p)``),
  ``mean(exp(-KL_s) (p - p_s)^2) / (mean(exp(-KL_s)) + 1e-8) + mean(KL_s)``, averaged over
  heads and weighted by the sigmoid ramp to 0.1.

Differences: ``log p_s`` comes from ``log_softmax`` (the reference takes the log of the
softmax, which can reach -inf).
"""

from __future__ import annotations

import torch

from ..method_settings import URPCSettings
from .base import Batch, Method, StepContext, register


def pyramid_consistency(logits: list[torch.Tensor]) -> torch.Tensor:
    probs = [x.softmax(1) for x in logits]
    mean = torch.stack(probs).mean(0)
    total = mean.new_zeros(())
    for x, p in zip(logits, probs):
        kl = torch.nn.functional.kl_div(x.log_softmax(1), mean, reduction="none").sum(1, keepdim=True)
        weight = torch.exp(-kl)
        total = total + (weight * (mean - p) ** 2).mean() / (weight.mean() + 1e-8) + kl.mean()
    return total / len(probs)


@register
class URPC(Method):
    name = "urpc"
    Settings = URPCSettings
    description = "uncertainty rectified pyramid consistency over multi-scale decoder heads"

    def __init__(self, settings, unets, channels, num_classes):
        super().__init__(settings, unets, channels, num_classes)
        self.net = self.unets(channels, num_classes, deep_supervision=True)

    def losses(self, batch: Batch, ctx: StepContext):
        heads = self.net.forward_all(batch.images).deep
        out = {"sup": sum(self.labeled_loss(h, batch) for h in heads) / len(heads)}
        if batch.has_unlabeled:
            unl = ~batch.labeled
            out["consistency"] = pyramid_consistency([h[unl] for h in heads])
        return out

    def segmenter(self):
        return self.net
