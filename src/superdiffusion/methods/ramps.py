"""Weights of unsupervised terms over training."""

from __future__ import annotations

import math

from ..errors import ConfigError


def linear_ramp(epoch: int, epochs: int) -> float:
    """The paper's schedule: ``current_epoch / max_epochs`` with 1-based epochs, so the last
    epoch has weight 1 (Sec. 3.3)."""
    return min(1.0, (epoch + 1) / max(1, epochs))


def sigmoid_ramp(epoch: int, epochs: int) -> float:
    """Laine & Aila's ``exp(-5 (1 - x)^2)``, ``x = epoch / epochs`` (used by MT, UAMT, CCT,
    URPC, CPS and DTC in their reference implementations)."""
    x = min(1.0, max(0.0, epoch / max(1, epochs)))
    return float(math.exp(-5.0 * (1.0 - x) ** 2))


RAMPS = {"linear": linear_ramp, "sigmoid": sigmoid_ramp, "constant": lambda epoch, epochs: 1.0}


def ramp_weight(kind: str, lambda_max: float, epoch: int, epochs: int, lambda_start: float = 0.0) -> float:
    """lambda for ``epoch``: from ``lambda_start`` to ``lambda_max`` along the ramp."""
    if kind not in RAMPS:
        raise ConfigError(f"method.ramp must be one of {', '.join(RAMPS)}, got {kind!r}")
    return lambda_start + (lambda_max - lambda_start) * RAMPS[kind](epoch, epochs)
