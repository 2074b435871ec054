"""Labeled images only; with data.labeled_percent=100 this is the 'Fully Sup.' row."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Batch, Method, StepContext, dice_loss, supervised_ce


class Supervised(Method):
    name = "supervised"
    description = "UNet trained on the labeled images only (100 % labels: the fully supervised row)"

    @dataclass
    class Params:
        dice_weight: float = 0.0  # adds soft Dice to the cross entropy when > 0

    def __init__(self, cfg, channels, num_classes, spatial_dims):
        super().__init__(cfg, channels, num_classes, spatial_dims)
        self.net = self.make_unet(channels, num_classes)

    def losses(self, batch: Batch, ctx: StepContext):
        images, labels = batch.images[batch.labeled], batch.labels[batch.labeled]
        logits = self.net(images)
        out = {"sup": supervised_ce(logits, Batch(images, labels, batch.labeled[batch.labeled]))}
        if self.params.dice_weight > 0:
            out["dice"] = self.params.dice_weight * dice_loss(logits, labels)
        return out

    def segmenter(self):
        return self.net
