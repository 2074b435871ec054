"""The paper's method: a diffusion teacher (mask and image pathways) pretrained by cycle
consistency, co-trained with a student by cross pseudo supervision, with multiple rounds
of diffusion (Sec. 3, Eq. 1-16)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..data.prior import intensity_prior
from ..diffusion import NoiseSchedule
from ..errors import ConfigError
from ..method_settings import SuperDiffusionSettings
from .base import Batch, Method, Phase, Prediction, StepContext, register
from .losses import cps_loss, dice_loss  # cps_loss: Eq. 9


def mask_to_input(probs: torch.Tensor) -> torch.Tensor:
    """Class probabilities or one-hot masks in [0, 1] -> the [-1, 1] range of diffusion inputs."""
    return probs * 2 - 1


def inverted(found: dict[str, float]) -> bool:
    """Whether a pretrained teacher's binary mask is the labels' inverse (``found``:
    :func:`~superdiffusion.evaluation.label_agreement`): its foreground probability ranks the
    labeled foreground below the background (pixel AUROC under 0.5). The ranking decides, not
    the argmax: a teacher that ranks thin vessels first with probabilities under 0.5 has an argmax
    Dice of 0, below the all-foreground Dice of its swap. Without an AUROC (labels of one class)
    the argmax Dice of the mask and of its swap decide."""
    auroc = found.get("auroc", math.nan)
    return auroc < 0.5 if not math.isnan(auroc) else found["dice_swapped"] > found["dice"]


@register
class SuperDiffusion(Method):
    name = "superdiffusion"
    unsupervised_terms = ("semi", "align", "recon")
    description = "diffusion teacher (mask + image pathways, cycle pretraining) co-trained with a student; R rounds"
    stochastic_inference = True
    default_supervised_loss = "ce"  # Eq. 10

    Settings = SuperDiffusionSettings  # its checks (and the [-1, 1] intensities it needs) are the config's

    def __init__(self, settings, unets, channels, num_classes):
        super().__init__(settings, unets, channels, num_classes)
        p = self.params
        self.schedule = NoiseSchedule(p.timesteps, p.beta_start, p.beta_end)
        c, k = channels, num_classes
        self.teacher_mask = self.unets(k + c, k, time_embedding=True)  # f_m: (noisy mask, image) -> mask
        self.teacher_image = self.unets(c + k, c, time_embedding=True)  # f_i: (noisy image, mask) -> noise
        self.student_mask = self.unets(k + c, k, time_embedding=True)
        self.register_buffer("prior_swapped", torch.zeros((), dtype=torch.bool))  # teacher=otsu: its polarity

    # --- the two pathways ------------------------------------------------------------------
    def mask_pathway(
        self, net: nn.Module, images: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Eq. 5/8: mask logits from the image and a pure-noise mask ``q(0, t, v_m)``."""
        shape = (images.shape[0], self.num_classes, *images.shape[2:])
        noisy_mask = self.noise_mask(shape, t, generator).to(device=images.device, dtype=images.dtype)
        return net(torch.cat([noisy_mask, images], dim=1), t)

    def noise_mask(self, shape: tuple[int, ...], t: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The mask pathway's input beside the image: ``q(0, t, v_m)`` (``mask_noise=paper``) or zeros."""
        if self.params.mask_noise == "zero":
            return torch.zeros(shape, device=t.device)
        return self.schedule.pure_noise(shape, t, generator)

    def frozen_network(self, size: tuple[int, ...], step: int | None, generator: torch.Generator) -> nn.Module:
        step = self.schedule.timesteps - 1 if step is None else step
        t = torch.full((1,), step, dtype=torch.long)
        return FixedNoise(self.student_mask, self.noise_mask((1, self.num_classes, *size), t, generator), step)

    def pseudo_labels(self, logits: torch.Tensor, probs: torch.Tensor | None = None) -> torch.Tensor:
        """Hard pseudo-labels (argmax, no gradient) of ``logits`` (or of class ``probs``); pixels
        under ``pseudo_confidence`` get the ignored index -100."""
        probs = logits.detach().softmax(1) if probs is None else probs.detach()
        confidence, labels = probs.max(1)
        if self.params.pseudo_confidence > 0:
            labels = labels.masked_fill(confidence < self.params.pseudo_confidence, -100)
        return labels

    def pseudo_term(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross entropy to (pseudo-)labels, ignoring index -100; with ``pseudo_loss=ce_dice``
        ``0.5 (CE + Dice)``, the Dice over the kept pixels."""
        kept = labels != -100
        if not kept.any():
            return logits.sum() * 0.0
        ce = F.cross_entropy(logits, labels, ignore_index=-100)
        if self.params.pseudo_loss == "ce":
            return ce
        return 0.5 * (ce + dice_loss(logits, labels, mask=kept))

    def image_pathway(
        self, images: torch.Tensor, mask_probs: torch.Tensor, t: torch.Tensor, pure_noise: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 2-4 (and 6/11): reconstruct ``images`` conditioned on a (soft) mask.

        Returns the reconstruction ``i^`` (clipped to ``x0_clip``) and the reconstruction
        loss (Eq. 7/14) in the configured space.
        """
        noise = torch.randn_like(images)
        x_t = noise if pure_noise else self.schedule.q_sample(images, t, noise)
        noise_pred = self.teacher_image(torch.cat([x_t, mask_to_input(mask_probs)], dim=1), t)
        x0 = self.schedule.predict_x0(x_t, t, noise_pred)
        clip = self.params.x0_clip
        if self.params.recon_space == "noise":
            loss = F.mse_loss(noise_pred, noise)  # pure_noise comes with recon_space=image (checked)
        else:
            loss = F.mse_loss(x0.clamp(-clip, clip), images)
        return x0.clamp(-clip, clip), loss

    def _t(self, batch_size: int, device: torch.device) -> torch.Tensor:
        return self.schedule.sample_timesteps(batch_size, device)

    def _round_t(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """t' and t'' of a round: uniform below ``rounds_t_max`` (all T steps when 0)."""
        cap = self.params.rounds_t_max or self.schedule.timesteps
        return torch.randint(0, cap, (batch_size,), device=device)

    # --- what the loop calls -----------------------------------------------------------------
    def begin(self, prior) -> dict | None:
        """With ``teacher=otsu``: the intensity prior's polarity, read from the labeled images."""
        if self.params.teacher != "otsu":
            return None
        found = prior()
        self.prior_swapped.fill_(bool(found["swapped"]))
        return found

    def prior_probs(self, images: torch.Tensor) -> torch.Tensor:
        """The intensity prior's class probabilities ``(B, 2, *S)``, in the polarity the labels gave."""
        probs = torch.stack([intensity_prior(image) for image in images]).to(images.dtype)
        return probs.flip(1) if bool(self.prior_swapped) else probs

    def phases(self, epochs: int) -> list[Phase]:
        pre = self.params.pretrain_epochs
        pre = max(1, epochs // 4) if pre < 0 else pre
        phases = [Phase("pretrain", pre, evaluate=False)] if pre > 0 else []
        return phases + [Phase("train", epochs, evaluate=True)]

    def _teacher_parameters(self) -> list[nn.Parameter]:
        return list(self.teacher_mask.parameters()) + list(self.teacher_image.parameters())

    def parameters_for(self, phase: str):
        if phase == "pretrain":
            return self._teacher_parameters()
        if self.params.teacher == "otsu":  # no teacher to train
            return list(self.student_mask.parameters())
        if self.params.teacher_lr_factor == 1.0:
            return list(self.parameters())
        return [  # the student's group first: the lr the loop logs is train.lr's
            {"params": list(self.student_mask.parameters())},
            {"params": self._teacher_parameters(), "lr_factor": self.params.teacher_lr_factor},
        ]

    def carries_optimizer_state(self, phase: str) -> bool:
        return phase == "train" and self.params.carry_optimizer

    def after_phase(self, phase: str, score) -> dict | None:
        """After pretraining: the teacher's zero-label agreement with the labeled images and, in
        binary tasks with ``polarity_swap``, the swap of its classes when its mask is the labels'
        inverse (:func:`inverted`; cycle consistency alone cannot tell a mask from its inverse)."""
        if phase != "pretrain":
            return None
        found, swapped = score(self.teacher_mask), False
        if self.params.polarity_swap and self.num_classes == 2 and inverted(found):
            self.swap_teacher_classes()
            found, swapped = score(self.teacher_mask), True
        return {k: v for k, v in found.items() if k != "dice_swapped"} | {"swapped": swapped}

    @torch.no_grad()
    def swap_teacher_classes(self) -> None:
        """Exchange the teacher's two classes: the mask pathway's outputs and mask inputs and the
        image pathway's mask inputs, so that the pair computes the same function with the
        classes' names exchanged."""
        k, c = self.num_classes, self.channels
        order = torch.arange(k).flip(0)
        head = self.teacher_mask.decoder.head
        head.weight.copy_(head.weight[order])
        head.bias.copy_(head.bias[order])
        first = self.teacher_mask.blocks[0][0]  # input: (noisy mask, image)
        first.weight[:, :k].copy_(first.weight[:, :k][:, order])
        first = self.teacher_image.blocks[0][0]  # input: (noisy image, mask)
        first.weight[:, c : c + k].copy_(first.weight[:, c : c + k][:, order])

    def pretrain_losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Eq. 5-7: unsupervised cycle consistency (labels are not used)."""
        images = batch.images
        b, dev = images.shape[0], images.device
        mask_logits = self.mask_pathway(self.teacher_mask, images, self._t(b, dev))
        pure = self.params.pretrain_image_input == "noise"
        _, cycle = self.image_pathway(images, mask_logits.softmax(1), self._t(b, dev), pure_noise=pure)
        return {"cycle": cycle}

    def losses(self, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        if ctx.phase == "pretrain":
            return self.pretrain_losses(batch)
        images = batch.images
        b, dev = images.shape[0], images.device
        t = self._t(b, dev)
        if self.params.teacher == "otsu":  # the control: the student learns the intensity prior's classes
            student = self.mask_pathway(self.student_mask, images, t)
            semi = self.pseudo_term(student, self.pseudo_labels(student, self.prior_probs(images)))
            return {"sup": self.labeled_loss(student, batch), "semi": semi}
        teacher = self.mask_pathway(self.teacher_mask, images, t)  # Eq. 8
        student = self.mask_pathway(self.student_mask, images, t)
        from_student = self.pseudo_labels(student)
        if batch.has_unlabeled:  # foreground share of the student's pseudo-labels (the loop logs it)
            self.diagnostics["pseudo_fg"] = float((from_student[~batch.labeled] > 0).float().mean())
        source = self.params.pseudo_labels
        semi = self.semi_term(teacher, student, from_student, teacher) if source == "round0" else None  # Eq. 9
        out = {"sup": self.labeled_loss(teacher, batch) + self.labeled_loss(student, batch)}  # Eq. 10
        if semi is not None:
            out["semi"] = semi
        rounds = self.params.rounds
        masks, recons = self.rounds(images, teacher)
        if rounds > 0:
            target = torch.where(
                batch.labeled.view(-1, *([1] * (images.dim() - 2))), batch.labels, from_student
            )  # l^ of Eq. 13
            out["align"] = sum(self.pseudo_term(m, target) for m in masks[1:]) / rounds  # Eq. 15/16
            out["recon"] = sum(recons) / rounds
        if source != "round0":  # the student learns from the rounds: m^_R, or the mean over m^_0..m^_R
            semi = self.semi_term(teacher, student, from_student, masks[-1], self.round_probs(masks))
            out = {"sup": out.pop("sup"), "semi": semi, **out}
        return out

    def rounds(self, images: torch.Tensor, teacher: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Eq. 11-14: from the teacher's round-0 mask logits, R rounds of reconstructing the image
        from the last mask and segmenting the reconstruction. Returns the masks m^_0..m^_R
        (logits) and each round's reconstruction loss."""
        b, dev = images.shape[0], images.device
        masks, recons = [teacher], []
        for _ in range(self.params.rounds):
            reconstruction, recon_r = self.image_pathway(images, masks[-1].softmax(1), self._round_t(b, dev))
            masks.append(self.mask_pathway(self.teacher_mask, reconstruction, self._round_t(b, dev)))
            recons.append(recon_r)
        return masks, recons

    def round_probs(self, masks: list[torch.Tensor]) -> torch.Tensor | None:
        """The student's Eq. 9 targets as class probabilities when they come from the rounds: the
        mean softmax over m^_0..m^_R (``pseudo_labels=mean``), else None (the logits' argmax)."""
        if self.params.pseudo_labels != "mean":
            return None
        return torch.stack([m.detach().softmax(1) for m in masks]).mean(0)

    @torch.no_grad()
    def pseudo_targets(self, images: torch.Tensor) -> torch.Tensor:
        """What the student's Eq. 9 term learns on unlabeled ``images``, as in a co-training step:
        the teacher's round-0 mask, the last round's, or the mean over the rounds."""
        if self.params.teacher == "otsu":
            return self.prior_probs(images)
        teacher = self.mask_pathway(self.teacher_mask, images, self._t(images.shape[0], images.device))
        if self.params.pseudo_labels == "round0":
            return teacher.softmax(1)
        masks, _ = self.rounds(images, teacher)
        probs = self.round_probs(masks)
        return probs if probs is not None else masks[-1].softmax(1)

    def semi_term(self, teacher, student, from_student, source, source_probs=None) -> torch.Tensor:
        """Eq. 9: the teacher learns the student's argmax, the student the argmax of ``source``
        (the teacher's round 0 in the paper; logits, or class probabilities ``source_probs``)."""
        p = self.params
        if source is teacher and source_probs is None and p.pseudo_loss == "ce" and p.pseudo_confidence == 0:
            return cps_loss(teacher, student)
        return self.pseudo_term(teacher, from_student) + self.pseudo_term(
            student, self.pseudo_labels(source, source_probs)
        )

    def segmenter(self) -> nn.Module:
        return self.student_mask

    def teacher_net(self) -> nn.Module | None:
        return self.teacher_mask if self.params.teacher == "diffusion" else None

    @torch.no_grad()
    def predict(
        self,
        images: torch.Tensor,
        samples: int = 1,
        generator: torch.Generator | None = None,
        step: int | None = None,
        net: nn.Module | None = None,
    ) -> Prediction:
        """The student's mask pathway from pure-noise masks at diffusion ``step`` (default: the
        last, ``eval.inference_t``'s default); with ``samples`` > 1 the draws are averaged and
        their spread is the uncertainty. The noise comes from ``generator`` (the caller gives
        each chunk or window its own; None: a generator seeded 0)."""
        net = self.student_mask if net is None else net
        step = self.schedule.timesteps - 1 if step is None else step
        if not 0 <= step < self.schedule.timesteps:
            raise ConfigError(f"diffusion step {step} is outside the {self.schedule.timesteps} steps")
        t = torch.full((images.shape[0],), step, device=images.device, dtype=torch.long)
        if generator is None:
            generator = torch.Generator(device=images.device).manual_seed(0)
        draws = torch.stack([self.mask_pathway(net, images, t, generator).softmax(1) for _ in range(samples)])
        spread = draws[:, :, 1:].sum(2).std(0, unbiased=False) if samples > 1 else None
        return Prediction(draws.mean(0), spread)


class FixedNoise(nn.Module):
    """The student's mask pathway with its pure-noise mask input fixed: normalised images ->
    class probabilities, deterministic (what ``export`` traces)."""

    def __init__(self, net: nn.Module, noisy_mask: torch.Tensor, step: int):
        super().__init__()
        self.net = net
        self.register_buffer("noisy_mask", noisy_mask)
        self.register_buffer("step", torch.tensor([step], dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        return self.net(torch.cat([self.noisy_mask.expand(b, -1, -1, -1), x], dim=1), self.step.expand(b)).softmax(1)
