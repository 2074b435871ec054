"""Mean teacher (Tarvainen & Valpola; ref. [16]) and its uncertainty-aware variant UAMT
(Yu et al.; ref. [24]), as SSL4MIS's 2D scripts define them:

- student and teacher are the reference UNet with element-wise dropout 0.05, 0.1, 0.2,
  0.3, 0.5 in the encoder levels (interpolated over the levels when there are not five);
- the teacher is an exponential moving average of the student (``a = min(1 - 1/(step + 1),
  ema_decay)``), gets no gradient and runs in training mode (dropout on, batch statistics);
- labeled loss ``0.5 (CE + Dice)``; consistency on the unlabeled items: the squared
  difference of the student's softmax and the softmax of one teacher pass on the input plus
  ``clamp(N(0, 0.1^2), -0.2, 0.2)``, weighted by the sigmoid ramp to 0.1;
- UAMT masks the consistency where the entropy of the mean of 8 further noisy teacher passes
  exceeds ``(0.75 + 0.25 ramp) ln 2`` (the reference's threshold; ``ln C`` here for C classes),
  and divides by twice the kept count.

Differences: the teacher's buffers (batch-norm running statistics, unused in training mode)
are copied from the student so that a saved teacher can also be evaluated.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from ..method_settings import MTSettings, UAMTSettings
from .base import Batch, Method, StepContext, register
from .ramps import sigmoid_ramp

REFERENCE_DROPOUT = (0.05, 0.1, 0.2, 0.3, 0.5)  # SSL4MIS UNet, encoder levels 1-5


def level_dropout(levels: int) -> tuple[float, ...]:
    """The reference rates for ``levels`` encoder levels (exact for 5, interpolated otherwise)."""
    if levels == len(REFERENCE_DROPOUT):
        return REFERENCE_DROPOUT
    x = np.linspace(0, 1, len(REFERENCE_DROPOUT))
    return tuple(float(v) for v in np.interp(np.linspace(0, 1, levels), x, REFERENCE_DROPOUT))


@register
class MeanTeacher(Method):
    name = "mt"
    in_table1 = False  # MT appears in the paper's text, not in Table 1
    description = "mean teacher: EMA teacher, consistency between student and noisy-input teacher"

    Settings = MTSettings

    def __init__(self, settings, unets, channels, num_classes):
        super().__init__(settings, unets, channels, num_classes)
        rates = level_dropout(unets.levels)
        self.student = self.unets(channels, num_classes, level_dropout=rates)
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def _noisy(self, x: torch.Tensor) -> torch.Tensor:
        s = self.params.input_noise
        return x + (torch.randn_like(x) * s).clamp(-2 * s, 2 * s)

    def consistency(self, student_logits: torch.Tensor, unlabeled: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        with torch.no_grad():
            teacher_probs = self.teacher(self._noisy(unlabeled)).softmax(1)
        return ((student_logits.softmax(1) - teacher_probs) ** 2).mean()

    def losses(self, batch: Batch, ctx: StepContext):
        logits = self.student(batch.images)
        out = {"sup": self.labeled_loss(logits, batch)}
        if batch.has_unlabeled:
            unl = ~batch.labeled
            out["consistency"] = self.consistency(logits[unl], batch.images[unl], ctx)
        return out

    @torch.no_grad()
    def after_step(self, ctx: StepContext) -> None:
        alpha = min(1 - 1 / (ctx.step + 1), self.params.ema_decay)
        for t, s in zip(self.teacher.parameters(), self.student.parameters()):
            t.mul_(alpha).add_(s.detach(), alpha=1 - alpha)
        for t, s in zip(self.teacher.buffers(), self.student.buffers()):
            t.copy_(s)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.train(mode)
        return self

    @torch.no_grad()
    def pseudo_targets(self, images):
        """The EMA teacher's softmax, which the student's consistency term pulls it towards."""
        return self.teacher(images).softmax(1)

    def segmenter(self):
        return self.student


@register
class UncertaintyAwareMeanTeacher(MeanTeacher):
    name = "uamt"
    in_table1 = True
    description = "uncertainty-aware mean teacher: MC-dropout uncertainty masks the consistency"

    Settings = UAMTSettings

    def uncertainty_mask(self, unlabeled: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """1 where the predictive entropy of ``mc_passes`` noisy teacher passes is under the
        ramped threshold ``(0.75 + 0.25 ramp) ln C``, else 0; ``(B, 1, *S)``."""
        passes = self.params.mc_passes
        with torch.no_grad():
            stacked = unlabeled.repeat(passes, *([1] * (unlabeled.dim() - 1)))
            probs = self.teacher(self._noisy(stacked)).softmax(1)
            mean = probs.view(passes, *unlabeled.shape[:1], *probs.shape[1:]).mean(0)
            entropy = -(mean * (mean + 1e-6).log()).sum(1, keepdim=True)
        threshold = (0.75 + 0.25 * sigmoid_ramp(ctx.epoch, ctx.epochs)) * math.log(mean.shape[1])
        return (entropy < threshold).to(mean.dtype)

    def consistency(self, student_logits, unlabeled, ctx):
        with torch.no_grad():
            target = self.teacher(self._noisy(unlabeled)).softmax(1)  # one noisy pass: the target
        mask = self.uncertainty_mask(unlabeled, ctx)
        dist = (student_logits.softmax(1) - target) ** 2
        return masked_consistency(dist, mask)


def masked_consistency(dist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """UAMT's ``sum(mask * dist) / (2 sum(mask) + 1e-16)`` (``mask`` broadcast over classes)."""
    return (mask * dist).sum() / (2 * mask.sum() + 1e-16)
