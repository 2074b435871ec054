"""What every method shares: the batch it receives, the context of a step, and the
:class:`Method` interface the one training loop drives."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..errors import ConfigError
from ..nn import UNet
from .losses import dice_loss


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


@dataclass
class StepContext:
    phase: str
    epoch: int  # 0-based, within the phase
    epochs: int  # epochs of the phase
    step: int  # global optimisation step
    weight: float  # the ramped unsupervised weight (lambda) for this epoch


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


SUPERVISED_LOSSES = ("auto", "ce", "ce_dice", "dice")


class Method(nn.Module):
    """A method owns its networks and turns a batch into named, already weighted losses.

    Subclasses set ``name``, ``description`` and optionally a ``Params`` dataclass of
    method-specific settings (read from ``method.params``/``method.KEY=value``).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    stochastic_inference: ClassVar[bool] = False
    # the loss terms the method multiplies by the ramped lambda (the loop also logs them raw)
    weighted_terms: ClassVar[tuple[str, ...]] = ("consistency",)
    in_table1: ClassVar[bool] = True  # one of the 2D rows of the paper's Table 1 (the table1 sweep preset)
    # the labeled loss when method.supervised_loss=auto: the reference implementation's
    default_supervised_loss: ClassVar[str] = "ce_dice"

    @dataclass
    class Params:
        pass

    def __init__(self, cfg: Config, channels: int, num_classes: int, spatial_dims: int):
        super().__init__()
        self.cfg = cfg
        self.channels = channels
        self.num_classes = num_classes
        self.spatial_dims = spatial_dims
        self.params = self.parse_params(cfg.method.params)
        self.diagnostics: dict[str, float] = {}  # per-step numbers the loop averages and logs (not losses)
        kind = cfg.method.supervised_loss
        if kind not in SUPERVISED_LOSSES:
            raise ConfigError(f"method.supervised_loss must be one of {', '.join(SUPERVISED_LOSSES)}, got {kind!r}")
        self.supervised_loss_kind = self.default_supervised_loss if kind == "auto" else kind

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

    @classmethod
    def parse_params(cls, values: dict[str, Any]) -> Any:
        fields = {f.name: f for f in dataclasses.fields(cls.Params)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            valid = ", ".join(sorted(fields)) or "none"
            raise ConfigError(f"method {cls.name}: unknown setting {unknown[0]!r}; its settings: {valid}")
        params = cls.Params()
        for key, value in values.items():
            current = getattr(params, key)
            if isinstance(current, bool) and not isinstance(value, bool):
                raise ConfigError(f"method.{key} expects true/false, got {value!r}")
            if isinstance(current, (int, float)) and not isinstance(current, bool):
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    raise ConfigError(f"method.{key} expects a number, got {value!r}")
                if isinstance(current, int) and not float(value).is_integer():
                    raise ConfigError(f"method.{key} expects a whole number, got {value!r}")
                value = type(current)(value)
            setattr(params, key, value)
        return params

    def make_unet(self, in_channels: int, out_channels: int, **options: Any) -> UNet:
        m = self.cfg.model
        options.setdefault("dropout", m.dropout)
        options.setdefault("checkpointing", m.checkpointing)
        options.setdefault("channels_last", m.channels_last)
        return UNet(in_channels, out_channels, self.spatial_dims, tuple(m.features), m.norm, **options)

    # --- what the training loop calls -------------------------------------------------
    def phases(self) -> list[Phase]:
        return [Phase("train", self.cfg.train.epochs, evaluate=True)]

    def parameters_for(self, phase: str) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)

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

    def teacher_net(self) -> nn.Module | None:
        """A second network whose prediction is worth showing beside the student's (the
        paper's teacher mask pathway), or None."""
        return None

    @torch.no_grad()
    def predict(self, images: torch.Tensor, samples: int = 1, seed: int | None = None) -> Prediction:
        """Class probabilities for normalised ``images`` (eval mode is the caller's job);
        ``seed`` fixes the noise of stochastic methods."""
        return Prediction(self.segmenter()(images).softmax(1))
