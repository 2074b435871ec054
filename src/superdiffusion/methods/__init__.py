"""Every method, by name. A method turns a batch into named losses; the loop does the rest.

A method is registered once: its settings class with ``@register`` in
:mod:`..method_settings` (which gives the order of the paper's tables), and its class with
``@register`` in a module of this package, which is imported here by discovery."""

from __future__ import annotations

import importlib
import pkgutil

from ..config import Config
from ..method_settings import SETTINGS
from ..nn import UNetFactory
from .base import REGISTERED, Batch, Method, Phase, Prediction, StepContext

for _module in pkgutil.iter_modules(__path__):  # each method module registers its classes
    importlib.import_module(f"{__name__}.{_module.name}")

if set(REGISTERED) != set(SETTINGS):
    raise TypeError(
        f"methods without settings: {sorted(set(REGISTERED) - set(SETTINGS))}; "
        f"settings without a method: {sorted(set(SETTINGS) - set(REGISTERED))}"
    )
METHODS: dict[str, type[Method]] = {name: REGISTERED[name] for name in SETTINGS}  # the paper's tables' order


def build_method(cfg: Config, channels: int, num_classes: int, spatial_dims: int) -> Method:
    """The method of ``cfg``, built from its own settings (``cfg.method``) and UNets shaped by
    ``cfg.model``: the one place where a method meets the configuration."""
    m = cfg.model
    unets = UNetFactory(spatial_dims, tuple(m.features), m.norm, m.dropout, m.checkpointing, m.channels_last)
    return METHODS[cfg.method.name](cfg.method, unets, channels, num_classes)


__all__ = ["METHODS", "Batch", "Method", "Phase", "Prediction", "StepContext", "build_method"]
