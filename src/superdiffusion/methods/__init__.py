"""Every method, by name. A method turns a batch into named losses; the loop does the rest."""

from __future__ import annotations

from ..config import Config
from ..errors import ConfigError
from .base import Batch, Method, Phase, Prediction, StepContext
from .cct import CrossConsistency
from .cps import CrossPseudoSupervision
from .dtc import DualTaskConsistency
from .em import EntropyMinimization
from .mean_teacher import MeanTeacher, UncertaintyAwareMeanTeacher
from .superdiffusion import SuperDiffusion
from .supervised import Supervised
from .urpc import URPC

METHODS: dict[str, type[Method]] = {  # in the order of the paper's tables
    m.name: m
    for m in (
        Supervised,
        EntropyMinimization,
        MeanTeacher,
        CrossConsistency,
        UncertaintyAwareMeanTeacher,
        URPC,
        CrossPseudoSupervision,
        DualTaskConsistency,
        SuperDiffusion,
    )
}


def build_method(cfg: Config, channels: int, num_classes: int, spatial_dims: int) -> Method:
    name = cfg.method.name
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    return METHODS[name](cfg, channels, num_classes, spatial_dims)


__all__ = ["METHODS", "Batch", "Method", "Phase", "Prediction", "StepContext", "build_method"]
