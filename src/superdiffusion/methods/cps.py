"""Cross pseudo supervision (Chen et al.; ref. [25]) between two independently initialised
UNets; the first one predicts."""

from __future__ import annotations

from .base import Batch, Method, StepContext, supervised_ce
from .superdiffusion import cps_loss


class CrossPseudoSupervision(Method):
    name = "cps"
    description = "cross pseudo supervision between two independently initialised UNets"

    def __init__(self, cfg, channels, num_classes, spatial_dims):
        super().__init__(cfg, channels, num_classes, spatial_dims)
        self.net_a = self.make_unet(channels, num_classes)
        self.net_b = self.make_unet(channels, num_classes)

    def losses(self, batch: Batch, ctx: StepContext):
        a, b = self.net_a(batch.images), self.net_b(batch.images)
        return {
            "sup": supervised_ce(a, batch) + supervised_ce(b, batch),
            "cps": ctx.weight * cps_loss(a, b),
        }

    def segmenter(self):
        return self.net_a
