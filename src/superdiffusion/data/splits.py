"""Label regimes and validation carving, seeded and deterministic."""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError


def labeled_count(n: int, percent: float) -> int:
    """``ceil(N * p / 100)`` (Sec. 4.2), rejecting regimes that leave no labeled image."""
    if not 0 < percent <= 100:
        raise ConfigError(f"data.labeled_percent must be in (0, 100], got {percent}")
    count = math.ceil(n * percent / 100 - 1e-9)
    if count < 1:
        raise ConfigError(f"data.labeled_percent={percent} leaves no labeled image among {n}")
    return count


def split_labeled(ids: list[str], percent: float, seed: int) -> tuple[list[str], list[str]]:
    """Draw the labeled subset of a regime with the run's seed; the rest is unlabeled."""
    order = np.random.default_rng([seed, 1]).permutation(len(ids))
    k = labeled_count(len(ids), percent)
    chosen = set(order[:k].tolist())
    labeled = [ids[i] for i in range(len(ids)) if i in chosen]
    unlabeled = [ids[i] for i in range(len(ids)) if i not in chosen]
    return labeled, unlabeled


def carve(ids: list[str], fraction: float, seed: int, stream: int) -> tuple[list[str], list[str]]:
    """Hold out ``round(N * fraction)`` (at least 1) of ``ids``; returns (kept, held_out)."""
    if not 0 < fraction < 1:
        raise ConfigError(f"split fraction must be in (0, 1), got {fraction}")
    if len(ids) < 2:
        raise ConfigError(f"cannot carve a split from {len(ids)} image(s)")
    order = np.random.default_rng([seed, stream]).permutation(len(ids))
    k = min(len(ids) - 1, max(1, round(len(ids) * fraction)))
    held = set(order[:k].tolist())
    return [ids[i] for i in range(len(ids)) if i not in held], [ids[i] for i in range(len(ids)) if i in held]
