"""Each method's settings, typed and checked: the ``method`` section of the configuration.

The section is a union keyed on ``method.name``: ``method=cps`` validates the section against
:class:`CPSSettings`, so a misspelt or ill-typed setting is refused before anything runs, and
``config.yaml`` records every setting of the method, defaults included. A method's own
defaults (its reference's ``lambda_max`` and ramp) live on its class here; each
:class:`~superdiffusion.methods.Method` names its class as ``Method.Settings``.

This module sits below :mod:`superdiffusion.config` and imports nothing of the package.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

Ramp = Literal["linear", "sigmoid", "constant"]
MAX_ROUNDS = 50  # each round is two more network passes per step: a typo like rounds=100000 never ends


# every method's settings class by method name, in the order of the paper's tables (the order
# the classes are declared below): filled by @register, the one list of the package's methods
SETTINGS: dict[str, type[MethodSettings]] = {}
S = TypeVar("S", bound="type[MethodSettings]")


def register(cls: S) -> S:
    """Class decorator: list a method's settings class in :data:`SETTINGS` under its ``name``."""
    name = cls.model_fields["name"].default
    if name in SETTINGS:
        raise TypeError(f"two settings classes for method {name!r}")
    SETTINGS[name] = cls
    return cls


class MethodSettings(BaseModel):
    """What every method shares: the weight of its unsupervised terms and its labeled loss."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str
    # the unsupervised weight lambda reaches lambda_max following ramp: linear,
    # lambda_max * epoch / epochs (the paper); sigmoid, exp(-5 (1 - x)^2) (Laine & Aila)
    lambda_max: float = Field(0.1, ge=0)
    ramp: Ramp = "sigmoid"  # linear (the paper), sigmoid (the baselines' references) or constant
    # reference: the method's own lambda_max and ramp (below); paper: Appendix A's linear ramp
    # to 5 for every method
    lambda_schedule: Literal["reference", "paper"] = "reference"
    # where the ramp starts: lambda = lambda_start + (lambda_max - lambda_start) * ramp(epoch); 0 (the
    # references' and the paper's) lets the unsupervised terms in only gradually
    lambda_start: float = Field(0.0, ge=0)
    # auto: the method's reference (0.5 (CE + Dice); DTC: Dice; the paper's method: CE); ce; ce_dice; dice
    supervised_loss: Literal["auto", "ce", "ce_dice", "dice"] = "auto"

    @model_validator(mode="after")
    def _ramp_order(self) -> MethodSettings:
        if self.lambda_start > self.lambda_max:
            raise ValueError(
                f"method.lambda_start ({self.lambda_start}) must not exceed method.lambda_max ({self.lambda_max})"
            )
        return self


@register
class SupervisedSettings(MethodSettings):
    """Labeled images only."""

    name: Literal["supervised"] = "supervised"
    lambda_max: float = Field(0.0, ge=0)
    ramp: Ramp = "constant"


@register
class EMSettings(MethodSettings):
    """Entropy minimisation; SSL4MIS's sigmoid ramp to 0.1."""

    name: Literal["em"] = "em"


@register
class MTSettings(MethodSettings):
    """Mean teacher; SSL4MIS's sigmoid ramp to 0.1."""

    name: Literal["mt"] = "mt"
    ema_decay: float = Field(0.99, ge=0, le=1)  # the teacher is the exponential moving average of the student
    input_noise: float = Field(0.1, ge=0)  # teacher input noise: clamp(N(0, s^2), -2s, 2s)


@register
class CCTSettings(MethodSettings):
    """Cross-consistency training; SSL4MIS's sigmoid ramp to 0.1."""

    name: Literal["cct"] = "cct"
    aux_decoders: int = Field(3, ge=1)  # feature noise, dropout, feature dropout (cycled)
    detach_main: bool = True  # the auxiliary decoders learn from the main decoder's prediction, not it from them


@register
class UAMTSettings(MTSettings):
    """Uncertainty-aware mean teacher; SSL4MIS's sigmoid ramp to 0.1."""

    name: Literal["uamt"] = "uamt"  # type: ignore[assignment]
    mc_passes: int = Field(8, ge=1)  # noisy teacher passes that give the uncertainty (not the target)


@register
class URPCSettings(MethodSettings):
    """Uncertainty rectified pyramid consistency; SSL4MIS's sigmoid ramp to 0.1."""

    name: Literal["urpc"] = "urpc"


@register
class CPSSettings(MethodSettings):
    """Cross pseudo supervision; SSL4MIS's sigmoid ramp to 0.1."""

    name: Literal["cps"] = "cps"


@register
class DTCSettings(MethodSettings):
    """Dual-task consistency; the DTC authors' sigmoid ramp to 1.0."""

    name: Literal["dtc"] = "dtc"
    lambda_max: float = Field(1.0, ge=0)
    sdf_weight: float = Field(0.3, ge=0)  # weight of the signed-distance regression on labeled images
    sharpness: float = Field(1500.0, gt=0)  # k of sigmoid(-k * sdf)


@register
class SuperDiffusionSettings(MethodSettings):
    """The paper's method (Sec. 3): linear ramp of lambda to 5 (Appendix A); the ``cpu`` and
    ``quick`` profiles lower it to 0.1 (docs/results.md, "Thin structures")."""

    name: Literal["superdiffusion"] = "superdiffusion"
    lambda_max: float = Field(5.0, ge=0)
    ramp: Ramp = "linear"
    rounds: int = Field(5, ge=0)  # R of Sec. 3.3; 0 gives plain diffusion co-training
    pretrain_epochs: int = Field(-1, ge=-1)  # teacher pretraining (Eq. 5-7); -1: a quarter of train.epochs; 0: off; a profile's length keeps its share when train.epochs is set elsewhere
    # noise: MSE on the predicted noise (the usual DDPM loss); image: MSE on x0 clipped, Eq. 7/14 as printed
    recon_space: Literal["noise", "image"] = "noise"
    # noisy: q(i, t', v) (Sec. 3.3's rounds); noise: pure noise, Eq. 6 as printed (profile=paper, with
    # recon_space=image): the image pathway must then draw the image from the mask, so the mask must carry it
    pretrain_image_input: Literal["noisy", "noise"] = "noisy"
    x0_clip: float = Field(1.0, gt=0)  # predicted images are clipped to [-x0_clip, x0_clip] (Eq. 3)
    # --- keeping what pretraining learned (beyond the paper) ---
    # after pretraining, if the teacher's foreground probability ranks the labeled images' foreground below
    # their background (pixel AUROC under 0.5; binary tasks: cycle consistency cannot tell a mask from its
    # inverse), swap its classes; logged
    polarity_swap: bool = True
    teacher_lr_factor: float = Field(1.0, gt=0)  # the teacher's lr in co-training, as a factor of train.lr
    carry_optimizer: bool = False  # co-training's Adam starts from the teacher's pretraining state
    # --- rounds that reach the student (beyond the paper) ---
    # the student's Eq. 9 targets: round0, the argmax of m^_0 (the paper); last, of m^_R; mean, of the mean
    # softmax over rounds 0..R (always detached)
    pseudo_labels: Literal["round0", "last", "mean"] = "round0"
    rounds_t_max: int = Field(0, ge=0)  # the rounds' t' and t'' are drawn in [0, rounds_t_max); 0: all T steps
    # --- options beyond the paper (its reading is the default) ---
    mask_noise: Literal["paper", "zero"] = "paper"  # paper: the mask input is q(0, t, v); zero: a zero tensor
    pseudo_loss: Literal["ce", "ce_dice"] = "ce"  # ce (Eq. 9, 13); ce_dice: 0.5 (CE + Dice) for CPS and align
    pseudo_confidence: float = Field(0.0, ge=0, lt=1)  # > 0: pseudo-labelled pixels below it are ignored
    # the student's Eq. 9 targets: diffusion (the paper's teacher) or otsu, the intensity-prior control (Otsu's
    # threshold on the grey image, polarity read from the labeled images): no teacher to pretrain, no rounds
    teacher: Literal["diffusion", "otsu"] = "diffusion"
    timesteps: int = Field(1000, ge=2)  # T, the diffusion steps
    # the linear noise schedule beta_t from beta_start to beta_end (DDPM's, the paper's)
    beta_start: float = Field(1e-4, gt=0, lt=1)
    beta_end: float = Field(0.02, gt=0, lt=1)  # the last step's beta

    @model_validator(mode="after")
    def _consistent(self) -> SuperDiffusionSettings:
        if self.pretrain_image_input == "noise" and self.recon_space == "noise":
            # the noise that would turn pure noise into the image is (x_t - sqrt(A_t) i) / sqrt(1 - A_t):
            # about 100 times the noise at small t, an ill-conditioned target
            raise ValueError(
                "method.pretrain_image_input=noise needs method.recon_space=image (a noise-space target "
                "divides by sqrt(1 - A_t), ~0.01 at small t)"
            )
        if self.rounds_t_max > self.timesteps:
            raise ValueError(f"method.rounds_t_max ({self.rounds_t_max}) exceeds method.timesteps ({self.timesteps})")
        if self.rounds > MAX_ROUNDS:
            raise ValueError(f"method.rounds ({self.rounds}) is above {MAX_ROUNDS} (the paper uses at most 5)")
        if self.teacher == "otsu" and (self.rounds or self.pretrain_epochs):
            raise ValueError(
                "method.teacher=otsu has no diffusion teacher: set method.rounds=0 and method.pretrain_epochs=0"
            )
        if self.beta_start >= self.beta_end:
            raise ValueError(f"method.beta_start ({self.beta_start}) must be below method.beta_end ({self.beta_end})")
        return self


# the ``method`` section: validated against the class its ``name`` picks
AnyMethodSettings = Annotated[Union[tuple(SETTINGS.values())], Field(discriminator="name")]  # noqa: UP007
