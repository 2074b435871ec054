"""Labeled images only; with data.labeled_percent=100 this is the 'Fully Sup.' row."""

from __future__ import annotations

from ..method_settings import SupervisedSettings
from .base import Batch, Method, StepContext, register


@register
class Supervised(Method):
    """A UNet trained on the labeled items of each batch with the reference's labeled loss,
    ``0.5 (CE + Dice)`` (``method.supervised_loss=ce`` for cross entropy alone)."""

    name = "supervised"
    Settings = SupervisedSettings
    unsupervised_terms = ()
    description = "UNet trained on the labeled images only (100 % labels: the fully supervised row)"

    def __init__(self, settings, unets, channels, num_classes):
        super().__init__(settings, unets, channels, num_classes)
        self.net = self.unets(channels, num_classes)

    def losses(self, batch: Batch, ctx: StepContext):
        lab = batch.labeled
        logits = self.net(batch.images[lab])
        return {"sup": self.labeled_loss(logits, Batch(batch.images[lab], batch.labels[lab], lab[lab]))}

    def segmenter(self):
        return self.net
