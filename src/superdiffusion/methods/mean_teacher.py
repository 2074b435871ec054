"""Mean teacher (Tarvainen & Valpola; ref. [16]) and its uncertainty-aware variant UAMT
(Yu et al.; ref. [24]). The teacher is an exponential moving average of the student and
receives no gradient."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import Batch, Method, StepContext, supervised_ce
from .ramps import sigmoid_ramp


class MeanTeacher(Method):
    name = "mt"
    description = "mean teacher: EMA teacher, consistency between student and noisy-input teacher"

    @dataclass
    class Params:
        ema_decay: float = 0.99
        input_noise: float = 0.1  # teacher input noise: clamp(N(0, s^2), -2s, 2s)

    def __init__(self, cfg, channels, num_classes, spatial_dims):
        super().__init__(cfg, channels, num_classes, spatial_dims)
        self.student = self.make_unet(channels, num_classes)
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def _noisy(self, x: torch.Tensor) -> torch.Tensor:
        s = self.params.input_noise
        return x + (torch.randn_like(x) * s).clamp(-2 * s, 2 * s)

    def consistency(self, student_logits: torch.Tensor, unlabeled: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        with torch.no_grad():
            teacher_probs = self.teacher(self._noisy(unlabeled)).softmax(1)
        return F.mse_loss(student_logits.softmax(1), teacher_probs)

    def losses(self, batch: Batch, ctx: StepContext):
        logits = self.student(batch.images)
        out = {"sup": supervised_ce(logits, batch)}
        if batch.has_unlabeled:
            unl = ~batch.labeled
            out["consistency"] = ctx.weight * self.consistency(logits[unl], batch.images[unl], ctx)
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

    def segmenter(self):
        return self.student


class UncertaintyAwareMeanTeacher(MeanTeacher):
    name = "uamt"
    description = "uncertainty-aware mean teacher: MC-dropout uncertainty masks the consistency"

    @dataclass
    class Params:
        ema_decay: float = 0.99
        input_noise: float = 0.1
        mc_passes: int = 8  # stochastic teacher passes for the uncertainty
        dropout: float = 0.5  # dropout in the UNet (student and teacher) for MC sampling

    def __init__(self, cfg, channels, num_classes, spatial_dims):
        super().__init__(cfg, channels, num_classes, spatial_dims)
        self.student = self.make_unet(channels, num_classes, dropout=self.params.dropout)
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def uncertainty_mask(self, unlabeled: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher probabilities and the mask of pixels whose predictive entropy is under the
        ramped threshold ``(0.75 + 0.25 ramp) ln C``."""
        passes = self.params.mc_passes
        with torch.no_grad():
            stacked = unlabeled.repeat(passes, *([1] * (unlabeled.dim() - 1)))
            probs = self.teacher(self._noisy(stacked)).softmax(1)
            mean = probs.view(passes, *unlabeled.shape[:1], *probs.shape[1:]).mean(0)
            entropy = -(mean * (mean + 1e-6).log()).sum(1, keepdim=True)
        threshold = (0.75 + 0.25 * sigmoid_ramp(ctx.epoch, ctx.epochs)) * math.log(mean.shape[1])
        return mean, (entropy < threshold).to(mean.dtype)

    def consistency(self, student_logits, unlabeled, ctx):
        teacher_probs, mask = self.uncertainty_mask(unlabeled, ctx)
        dist = (student_logits.softmax(1) - teacher_probs) ** 2
        return (mask * dist).sum() / (2 * mask.sum() + 1e-16)
