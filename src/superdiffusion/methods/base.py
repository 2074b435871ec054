"""What every method shares: the batch it receives, the context of a step, and the
:class:`Method` interface the one training loop drives."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..method_settings import MethodSettings
from ..nn import UNetFactory
from .losses import dice_loss
from .ramps import ramp_weight


@dataclass
class Batch:
    """``images``: ``(B, C, *S)``; ``labels``: ``(B, *S)`` class indices (meaningful where
    ``labeled``); ``labeled``: ``(B,)`` bool."""

    images: torch.Tensor
    labels: torch.Tensor
    labeled: torch.Tensor

    @property
    def has_labeled(self) -> bool:
        return bool(self.labeled.any())

    @property
    def has_unlabeled(self) -> bool:
        return bool((~self.labeled).any())

    def to(self, device: torch.device) -> Batch:
        return Batch(self.images.to(device), self.labels.to(device), self.labeled.to(device))


@dataclass
class StepContext:
    phase: str
    epoch: int  # 0-based, within the phase
    epochs: int  # epochs of the phase
    step: int  # global optimisation step
    weight: float  # the ramped unsupervised weight (lambda) for this epoch; the loop applies it


@dataclass
class Phase:
    name: str
    epochs: int
    evaluate: bool  # segmentation quality is meaningful (validation, checkpoint selection)


@dataclass
class Prediction:
    """``probs``: ``(B, C, *S)`` class probabilities; ``spread``: ``(B, *S)`` standard
    deviation of the foreground probability over noise draws (None for one draw)."""

    probs: torch.Tensor
    spread: torch.Tensor | None = None


REGISTERED: dict[str, type[Method]] = {}  # filled by @register as the method modules are imported


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: the method ``cls.name``, whose settings class (``cls.Settings``) is
    registered in :data:`~superdiffusion.method_settings.SETTINGS` under the same name."""
    name = cls.name
    if cls.Settings.model_fields["name"].default != name:
        raise TypeError(f"method {name!r} names the settings of {cls.Settings.model_fields['name'].default!r}")
    if name in REGISTERED:
        raise TypeError(f"two methods named {name!r}")
    REGISTERED[name] = cls
    return cls


class Method(nn.Module):
    """A method owns its networks and turns a batch into named raw losses; the loop weighs its
    ``unsupervised_terms`` by lambda.

    It is built from its own settings (``Settings``, a class of :mod:`..method_settings`: the
    ``method`` section of the configuration, its reference's lambda and ramp as defaults) and
    a :class:`~superdiffusion.nn.UNetFactory`; it reads nothing else of the configuration.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Settings: ClassVar[type[MethodSettings]] = MethodSettings
    stochastic_inference: ClassVar[bool] = False
    # the unsupervised loss terms: the method returns them raw, and the loop multiplies them by
    # the ramped lambda, once (and logs them both ways: raw_* and as trained)
    unsupervised_terms: ClassVar[tuple[str, ...]] = ("consistency",)
    in_table1: ClassVar[bool] = True  # one of the 2D rows of the paper's Table 1 (the table1 sweep preset)
    # the labeled loss when method.supervised_loss=auto: the reference implementation's
    default_supervised_loss: ClassVar[str] = "ce_dice"

    def __init__(self, settings: MethodSettings, unets: UNetFactory, channels: int, num_classes: int):
        super().__init__()
        if not isinstance(settings, self.Settings):
            raise ConfigError(f"method {self.name} needs {self.Settings.__name__}, got {type(settings).__name__}")
        self.params = settings
        self.unets = unets
        self.channels = channels
        self.num_classes = num_classes
        self.spatial_dims = unets.spatial_dims
        self.diagnostics: dict[str, float] = {}  # per-step numbers the loop averages and logs (not losses)
        kind = settings.supervised_loss
        self.supervised_loss_kind = self.default_supervised_loss if kind == "auto" else kind

    def weight(self, epoch: int, epochs: int) -> float:
        """lambda for ``epoch`` (0-based) of ``epochs``: the method's ramp from ``lambda_start`` to
        its ``lambda_max``."""
        p = self.params
        return ramp_weight(p.ramp, p.lambda_max, epoch, epochs, p.lambda_start)

    def labeled_loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The supervised term on the batch's labeled items (0 when there are none):
        ``ce``; ``ce_dice``, SSL4MIS's ``0.5 (CE + Dice)``; ``dice``, DTC's foreground Dice."""
        if not batch.has_labeled:
            return logits.sum() * 0.0
        logits, labels = logits[batch.labeled], batch.labels[batch.labeled]
        if self.supervised_loss_kind == "dice":
            return dice_loss(logits, labels, include_background=False)
        ce = F.cross_entropy(logits, labels)
        return ce if self.supervised_loss_kind == "ce" else 0.5 * (ce + dice_loss(logits, labels))

    # --- what the training loop calls -------------------------------------------------
    def phases(self, epochs: int) -> list[Phase]:
        """The phases of a run of ``epochs`` training epochs."""
        return [Phase("train", epochs, evaluate=True)]

    def parameters_for(self, phase: str) -> Iterator[nn.Parameter] | list[dict]:
        """The parameters a phase optimises, or parameter groups; a group's ``lr_factor``
        scales ``train.lr`` for it."""
        return (p for p in self.parameters() if p.requires_grad)

    def carries_optimizer_state(self, phase: str) -> bool:
        """Whether ``phase`` starts from the previous phase's optimizer state for the
        parameters both optimise (else from a fresh optimizer)."""
        return False

    def after_phase(self, phase: str, score) -> dict | None:
        """Hook at the end of ``phase``. ``score(net)`` scores a network's prediction against the
        labeled training images (training data only); what it returns is recorded in the run."""
        return None

    def losses(self, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Calling a method computes its losses (so DistributedDataParallel can wrap it)."""
        return self.losses(batch, ctx)

    def after_step(self, ctx: StepContext) -> None:
        """Hook after the optimiser step (EMA updates)."""

    def segmenter(self) -> nn.Module:
        """The network whose output is the prediction."""
        raise NotImplementedError

    def begin(self, prior) -> dict | None:
        """Once, before a new run's first update: ``prior()`` scores the intensity-prior control on
        the labeled training images (``dice``, ``auroc``, ``swapped``); a method that learns from it
        keeps what it needs (in its state) and returns the record to log, else None."""
        return None

    def pseudo_targets(self, images: torch.Tensor) -> torch.Tensor | None:
        """Class probabilities ``(N, K, *S)`` that the unsupervised terms train the student towards
        on unlabeled ``images`` (no gradient; eval mode is the caller's job), or None for a method
        without pseudo-labels. The hidden-label monitor scores them."""
        return None

    def teacher_net(self) -> nn.Module | None:
        """A second network whose prediction is worth showing beside the student's (the
        paper's teacher mask pathway), or None."""
        return None

    def frozen_network(self, size: tuple[int, ...], step: int | None, generator: torch.Generator) -> nn.Module:
        """The prediction as one deterministic module, normalised images ``(B, C, *size)`` ->
        class probabilities (what an exported model runs). A stochastic method fixes its noise
        input here, drawn from ``generator`` at diffusion ``step`` as :meth:`predict` draws it
        for a single image."""
        return Softmax(self.segmenter())

    @torch.no_grad()
    def predict(
        self,
        images: torch.Tensor,
        samples: int = 1,
        generator: torch.Generator | None = None,
        step: int | None = None,
        net: nn.Module | None = None,
    ) -> Prediction:
        """Class probabilities for normalised ``images`` (eval mode is the caller's job).
        Stochastic methods draw their noise from ``generator`` at diffusion ``step``; ``net``
        replaces the segmenter (e.g. the teacher)."""
        return Prediction((net if net is not None else self.segmenter())(images).softmax(1))


class Softmax(nn.Module):
    """A segmenter's class probabilities."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).softmax(1)
