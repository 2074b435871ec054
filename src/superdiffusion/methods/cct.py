"""Cross-consistency training (Ouali et al.; ref. [38]), as SSL4MIS's 2D script defines it:
one encoder, the main decoder and three auxiliary decoders fed perturbed encoder features
(multiplicative uniform noise shared over the batch, dropout p = 0.3, feature dropout).

- labeled loss: ``0.5 (CE + Dice)`` averaged over the four decoders;
- consistency on the unlabeled items: mean squared difference between the softmax of the
  main decoder and of each auxiliary decoder, averaged over the three, weighted by the
  sigmoid ramp to 0.1. The main output is a target (detached), as in the CCT paper, where
  only the encoder and the auxiliary decoders learn from unlabeled images
  (``method.detach_main=false`` lets the gradient reach the main decoder as well).
"""

from __future__ import annotations

from ..method_settings import CCTSettings
from .base import Batch, Method, StepContext, register


@register
class CrossConsistency(Method):
    name = "cct"
    description = "cross-consistency training: auxiliary decoders on perturbed features (noise, dropout)"

    Settings = CCTSettings

    def __init__(self, settings, unets, channels, num_classes):
        super().__init__(settings, unets, channels, num_classes)
        self.net = self.unets(channels, num_classes, aux_decoders=self.params.aux_decoders)

    def losses(self, batch: Batch, ctx: StepContext):
        out = self.net.forward_all(batch.images)
        heads = [out.logits, *out.aux]
        losses = {"sup": sum(self.labeled_loss(h, batch) for h in heads) / len(heads)}
        if batch.has_unlabeled and out.aux:
            unl = ~batch.labeled
            main = out.logits[unl].softmax(1)
            main = main.detach() if self.params.detach_main else main
            cons = sum(((a[unl].softmax(1) - main) ** 2).mean() for a in out.aux) / len(out.aux)
            losses["consistency"] = cons
        return losses

    def segmenter(self):
        return self.net
