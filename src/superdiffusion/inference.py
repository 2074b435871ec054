"""Batched prediction of normalised image tensors, with K noise draws for diffusion methods
and MONAI sliding windows for volumes."""

from __future__ import annotations

import itertools

import torch
from monai.inferers import sliding_window_inference

from .errors import ConfigError
from .methods import Method, Prediction


@torch.inference_mode()
def predict_tensor(
    method: Method,
    images: torch.Tensor,
    device: torch.device,
    batch_size: int = 16,
    samples: int = 1,
    window: tuple[int, ...] | None = None,
    overlap: float = 0.5,
    seed: int | None = None,
) -> Prediction:
    """Probabilities ``(N, C, *S)`` on the CPU (and the spread over draws when ``samples`` > 1).

    ``window``: sliding-window size for volumes (None: the whole image at once). ``seed``
    (default: the run's ``train.seed``) derives a distinct, reproducible noise seed for each
    chunk of images and each batch of sliding windows, so draws are not correlated across them.
    """
    base = method.cfg.train.seed if seed is None else seed
    if samples < 1:
        raise ConfigError(f"eval.samples must be >= 1, got {samples}")
    if samples > 1 and not method.stochastic_inference:
        raise ConfigError(f"method {method.name} predicts deterministically; eval.samples > 1 needs a diffusion method")
    was_training = method.training
    method.eval()
    probs, spreads = [], []
    try:
        for index, start in enumerate(range(0, images.shape[0], batch_size)):
            chunk = images[start : start + batch_size].to(device)
            if window is None:
                pred = method.predict(chunk, samples, seed=derived_seed(base, index))
            else:
                pred = _sliding(method, chunk, samples, window, overlap, batch_size, derived_seed(base, index))
            probs.append(pred.probs.float().cpu())
            if pred.spread is not None:
                spreads.append(pred.spread.float().cpu())
    finally:
        method.train(was_training)
    return Prediction(torch.cat(probs), torch.cat(spreads) if spreads else None)


def derived_seed(base: int, *indices: int) -> int:
    """A reproducible seed for one chunk (and window batch) of a prediction."""
    value = base
    for i in indices:
        value = (value * 1_000_003 + i + 1) % (2**63 - 1)
    return value


def _sliding(
    method: Method,
    volume: torch.Tensor,
    samples: int,
    window: tuple[int, ...],
    overlap: float,
    batch_size: int,
    seed: int,
) -> Prediction:
    calls = itertools.count()  # one seed per batch of windows

    def run(patch: torch.Tensor) -> torch.Tensor:
        pred = method.predict(patch, samples, seed=derived_seed(seed, next(calls)))
        if pred.spread is None:
            return pred.probs
        return torch.cat([pred.probs, pred.spread[:, None]], dim=1)

    roi = tuple(min(w, s) for w, s in zip(window, volume.shape[2:]))
    out = sliding_window_inference(volume, roi, batch_size, run, overlap=overlap, mode="gaussian")
    c = method.num_classes
    return Prediction(out[:, :c], out[:, c] if out.shape[1] > c else None)
