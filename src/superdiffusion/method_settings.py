"""Each method's settings, typed and checked: the ``method`` section of the configuration.

The section is a union keyed on ``method.name``: ``method=cps`` validates the section against
:class:`CPSSettings`, so a misspelt or ill-typed setting is refused before anything runs, and
``config.yaml`` records every setting of the method, defaults included. A method's own
defaults (its reference's ``lambda_max`` and ramp) live on its class here; each
:class:`~superdiffusion.methods.Method` names its class as ``Method.Settings``.

This module sits below :mod:`superdiffusion.config` and imports nothing of the package.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Ramp = Literal["linear", "sigmoid", "constant"]


class MethodSettings(BaseModel):
    """What every method shares: the weight of its unsupervised terms and its labeled loss."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str
    # the unsupervised weight lambda reaches lambda_max following ramp: linear,
    # lambda_max * epoch / epochs (the paper); sigmoid, exp(-5 (1 - x)^2) (Laine & Aila)
    lambda_max: float = Field(0.1, ge=0)
    ramp: Ramp = "sigmoid"
    # reference: the method's own lambda_max and ramp (below); paper: Appendix A's linear ramp
    # to 5 for every method
    lambda_schedule: Literal["reference", "paper"] = "reference"
    # auto: the method's reference (0.5 (CE + Dice); DTC: Dice; the paper's method: CE); ce; ce_dice; dice
    supervised_loss: Literal["auto", "ce", "ce_dice", "dice"] = "auto"


class SupervisedSettings(MethodSettings):
    """Labeled images only."""

    name: Literal["supervised"] = "supervised"
    lambda_max: float = Field(0.0, ge=0)
    ramp: Ramp = "constant"


class EMSettings(MethodSettings):
    """Entropy minimisation; SSL4MIS's sigmoid ramp to 0.1."""

    name: Literal["em"] = "em"


class MTSettings(MethodSettings):
    """Mean teacher; SSL4MIS's sigmoid ramp to 0.1."""

    name: Literal["mt"] = "mt"
    ema_decay: float = Field(0.99, ge=0, le=1)
    input_noise: float = Field(0.1, ge=0)  # teacher input noise: clamp(N(0, s^2), -2s, 2s)


class UAMTSettings(MTSettings):
    """Uncertainty-aware mean teacher; SSL4MIS's sigmoid ramp to 0.1."""

    name: Literal["uamt"] = "uamt"  # type: ignore[assignment]
    mc_passes: int = Field(8, ge=1)  # noisy teacher passes that give the uncertainty (not the target)


class CCTSettings(MethodSettings):
    """Cross-consistency training; SSL4MIS's sigmoid ramp to 0.1."""

    name: Literal["cct"] = "cct"
    aux_decoders: int = Field(3, ge=1)  # feature noise, dropout, feature dropout (cycled)
    detach_main: bool = True


class URPCSettings(MethodSettings):
    """Uncertainty rectified pyramid consistency; SSL4MIS's sigmoid ramp to 0.1."""

    name: Literal["urpc"] = "urpc"


class CPSSettings(MethodSettings):
    """Cross pseudo supervision; SSL4MIS's sigmoid ramp to 0.1."""

    name: Literal["cps"] = "cps"


class DTCSettings(MethodSettings):
    """Dual-task consistency; the DTC authors' sigmoid ramp to 1.0."""

    name: Literal["dtc"] = "dtc"
    lambda_max: float = Field(1.0, ge=0)
    sdf_weight: float = Field(0.3, ge=0)
    sharpness: float = Field(1500.0, gt=0)  # k of sigmoid(-k * sdf)


class SuperDiffusionSettings(MethodSettings):
    """The paper's method (Sec. 3): linear ramp of lambda to 5 (Appendix A); the ``cpu`` and
    ``quick`` profiles lower it to 0.1 (README, "Thin structures")."""

    name: Literal["superdiffusion"] = "superdiffusion"
    lambda_max: float = Field(5.0, ge=0)
    ramp: Ramp = "linear"
    rounds: int = Field(5, ge=0)  # R of Sec. 3.3; 0 gives plain diffusion co-training
    pretrain_epochs: int = Field(-1, ge=-1)  # teacher pretraining (Eq. 5-7); -1: a quarter of train.epochs; 0: off
    recon_space: Literal["noise", "image"] = "noise"  # noise: MSE on predicted noise; image: MSE on x0 clipped
    pretrain_image_input: Literal["noisy", "noise"] = "noisy"  # noisy: q(i, t', v) (Sec. 3.3); noise: pure (Eq. 6)
    x0_clip: float = Field(1.0, gt=0)
    # --- options beyond the paper (its reading is the default) ---
    mask_noise: Literal["paper", "zero"] = "paper"  # paper: the mask input is q(0, t, v); zero: a zero tensor
    pseudo_loss: Literal["ce", "ce_dice"] = "ce"  # ce (Eq. 9, 13); ce_dice: 0.5 (CE + Dice) for CPS and align
    pseudo_confidence: float = Field(0.0, ge=0, lt=1)  # > 0: pseudo-labelled pixels below it are ignored
    timesteps: int = Field(1000, ge=2)
    beta_start: float = Field(1e-4, gt=0, lt=1)
    beta_end: float = Field(0.02, gt=0, lt=1)

    @model_validator(mode="after")
    def _consistent(self) -> SuperDiffusionSettings:
        if self.pretrain_image_input == "noise" and self.recon_space == "noise":
            # the noise that would turn pure noise into the image is (x_t - sqrt(A_t) i) / sqrt(1 - A_t):
            # about 100 times the noise at small t, an ill-conditioned target
            raise ValueError(
                "method.pretrain_image_input=noise needs method.recon_space=image (a noise-space target "
                "divides by sqrt(1 - A_t), ~0.01 at small t)"
            )
        if self.beta_start >= self.beta_end:
            raise ValueError(f"method.beta_start ({self.beta_start}) must be below method.beta_end ({self.beta_end})")
        return self


SETTINGS: dict[str, type[MethodSettings]] = {
    cls.model_fields["name"].default: cls
    for cls in (
        SupervisedSettings,
        EMSettings,
        MTSettings,
        CCTSettings,
        UAMTSettings,
        URPCSettings,
        CPSSettings,
        DTCSettings,
        SuperDiffusionSettings,
    )
}

AnyMethodSettings = Annotated[
    SupervisedSettings
    | EMSettings
    | MTSettings
    | CCTSettings
    | UAMTSettings
    | URPCSettings
    | CPSSettings
    | DTCSettings
    | SuperDiffusionSettings,
    Field(discriminator="name"),
]
