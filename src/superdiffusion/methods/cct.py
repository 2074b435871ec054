"""Cross-consistency training (Ouali et al.; ref. [38]): auxiliary decoders on perturbed
encoder features must agree with the main decoder on unlabeled images."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from .base import Batch, Method, StepContext, supervised_ce


class CrossConsistency(Method):
    name = "cct"
    description = "cross-consistency training: auxiliary decoders on perturbed features (noise, dropout)"

    @dataclass
    class Params:
        aux_decoders: int = 3  # feature dropout, feature noise, dropout (cycled)

    def __init__(self, cfg, channels, num_classes, spatial_dims):
        super().__init__(cfg, channels, num_classes, spatial_dims)
        self.net = self.make_unet(channels, num_classes, aux_decoders=self.params.aux_decoders)

    def losses(self, batch: Batch, ctx: StepContext):
        out = self.net.forward_all(batch.images)
        heads = [out.logits, *out.aux]
        losses = {"sup": sum(supervised_ce(h, batch) for h in heads) / len(heads)}
        if batch.has_unlabeled and out.aux:
            unl = ~batch.labeled
            target = out.logits[unl].detach().softmax(1)
            cons = sum(F.mse_loss(a[unl].softmax(1), target) for a in out.aux) / len(out.aux)
            losses["consistency"] = ctx.weight * cons
        return losses

    def segmenter(self):
        return self.net
