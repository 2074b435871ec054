"""Cross pseudo supervision (Chen et al.; ref. [25]) between two independently initialised
UNets; the first one predicts.

As SSL4MIS's 2D script: each network's labeled loss is ``0.5 (CE + Dice)``; on the
unlabeled items each learns the other's argmax by cross entropy (no gradient through the
argmax), weighted by the sigmoid ramp to 0.1."""

from __future__ import annotations

import torch

from ..method_settings import CPSSettings
from .base import Batch, Method, StepContext, register
from .losses import cps_loss


@register
class CrossPseudoSupervision(Method):
    name = "cps"
    Settings = CPSSettings
    unsupervised_terms = ("cps",)
    description = "cross pseudo supervision between two independently initialised UNets"

    def __init__(self, settings, unets, channels, num_classes):
        super().__init__(settings, unets, channels, num_classes)
        self.net_a = self.unets(channels, num_classes)
        self.net_b = self.unets(channels, num_classes)

    def losses(self, batch: Batch, ctx: StepContext):
        a, b = self.net_a(batch.images), self.net_b(batch.images)
        out = {"sup": self.labeled_loss(a, batch) + self.labeled_loss(b, batch)}
        unl = ~batch.labeled
        if batch.has_unlabeled:  # foreground share of net_b's pseudo-labels (the loop logs it)
            self.diagnostics["pseudo_fg"] = float((b[unl].detach().argmax(1) > 0).float().mean())
        out["cps"] = cps_loss(a[unl], b[unl]) if batch.has_unlabeled else a.sum() * 0.0
        return out

    def segmenter(self):
        return self.net_a

    @torch.no_grad()
    def pseudo_targets(self, images):
        """net_a learns net_b's argmax on unlabeled items (and net_b net_a's): the predictor's targets."""
        return self.net_b(images).softmax(1)
