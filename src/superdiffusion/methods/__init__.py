"""Every method, by name. A method turns a batch into named losses; the loop does the rest."""

from __future__ import annotations

from ..config import Config
from ..method_settings import SETTINGS
from ..nn import UNetFactory
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
    """The method of ``cfg``, built from its own settings (``cfg.method``) and UNets shaped by
    ``cfg.model``: the one place where a method meets the configuration."""
    m = cfg.model
    unets = UNetFactory(spatial_dims, tuple(m.features), m.norm, m.dropout, m.checkpointing, m.channels_last)
    return METHODS[cfg.method.name](cfg.method, unets, channels, num_classes)


assert list(METHODS) == list(SETTINGS), "every method has one settings class, in the same order"

__all__ = ["METHODS", "Batch", "Method", "Phase", "Prediction", "StepContext", "build_method"]
