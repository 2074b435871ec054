"""Batched prediction of normalised image tensors, with K noise draws for diffusion methods
and MONAI sliding windows for volumes; and the prediction files written for new images."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from PIL import Image

from . import safefs
from .data import normalize, normalize_each
from .data.folder import read_image, resize_image
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
    seed: int = 0,
    step: int | None = None,
    net: torch.nn.Module | None = None,
) -> Prediction:
    """Probabilities ``(N, C, *S)`` on the CPU (and the spread over draws when ``samples`` > 1).

    ``window``: sliding-window size for volumes (None: the whole image at once). ``seed`` (a
    run passes its ``train.seed``) derives a distinct, reproducible noise generator for each
    chunk of images and each batch of sliding windows, so draws are not correlated across them;
    ``step`` is the diffusion step of the pure-noise masks (``eval.inference_t``); ``net``
    replaces the method's segmenter (the paper's teacher, say).
    """
    if samples < 1:
        raise ConfigError(f"eval.samples must be >= 1, got {samples}")
    if samples > 1 and not method.stochastic_inference:
        raise ConfigError(f"method {method.name} predicts deterministically; eval.samples > 1 needs a diffusion method")
    other = {"net": net} if net is not None else {}  # another network than the method's segmenter
    was_training = method.training
    method.eval()
    probs, spreads = [], []
    try:
        for index, start in enumerate(range(0, images.shape[0], batch_size)):
            chunk = images[start : start + batch_size].to(device)
            if window is None:
                pred = method.predict(chunk, samples, generator(chunk, derived_seed(seed, index)), step, **other)
            else:
                seed_i = derived_seed(seed, index)
                pred = _sliding(method, chunk, samples, window, overlap, batch_size, seed_i, step, other)
            probs.append(pred.probs.float().cpu())
            if pred.spread is not None:
                spreads.append(pred.spread.float().cpu())
    finally:
        method.train(was_training)
    return Prediction(torch.cat(probs), torch.cat(spreads) if spreads else None)


def generator(like: torch.Tensor, seed: int) -> torch.Generator:
    """A generator on ``like``'s device, seeded ``seed``."""
    return torch.Generator(device=like.device).manual_seed(seed)


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
    step: int | None,
    other: dict | None = None,
) -> Prediction:
    calls = itertools.count()  # one seed per batch of windows

    def run(patch: torch.Tensor) -> torch.Tensor:
        pred = method.predict(patch, samples, generator(patch, derived_seed(seed, next(calls))), step, **(other or {}))
        if pred.spread is None:
            return pred.probs
        return torch.cat([pred.probs, pred.spread[:, None]], dim=1)

    roi = tuple(min(w, s) for w, s in zip(window, volume.shape[2:]))
    out = sliding_window_inference(volume, roi, batch_size, run, overlap=overlap, mode="gaussian")
    c = method.num_classes
    return Prediction(out[:, :c], out[:, c] if out.shape[1] > c else None)


def _mask_from(probs: torch.Tensor, num_classes: int, threshold: float) -> np.ndarray:
    if num_classes == 2:
        return (probs[1:].sum(0) > threshold).numpy().astype(np.uint8)
    return probs.argmax(0).numpy().astype(np.uint8)


def predict_image_file(
    method, cfg, data_info, path, output, samples, threshold, device, probabilities: bool = False
) -> list[Path]:
    """Segment one 2D image file into ``output/STEM.png`` (at the image's own size), plus
    ``STEM_uncertainty.png`` with several draws and, with ``probabilities``,
    ``STEM_probability.png``: the foreground probability as 16 bits (65535 = 1). ``data_info``:
    the checkpoint's ``data`` record (channels, normalisation statistics)."""
    stats, channels = data_info["stats"], data_info["channels"]
    image = read_image(path, channels)
    size = image.shape[1:]
    if cfg.data.size is None:  # trained on patches at native resolution: sliding windows over the image
        x = normalize(normalize_each(torch.from_numpy(image)[None], cfg.data.normalize), stats)
        window, overlap = tuple(cfg.data.patch_size), cfg.eval.sw_overlap
    else:
        x = normalize(normalize_each(resize_image(image, tuple(cfg.data.size))[None], cfg.data.normalize), stats)
        window, overlap = None, 0.5
    pred = predict_tensor(
        method, x, device, cfg.eval.batch_size, samples, window, overlap, cfg.train.seed, cfg.eval.inference_t
    )
    probs = torch.nn.functional.interpolate(pred.probs, size=size, mode="bilinear", align_corners=False)[0]
    mask = _mask_from(probs, method.num_classes, threshold)
    target = output / f"{path.stem}.png"
    _save_png(Image.fromarray(mask * 255 if method.num_classes == 2 else mask), target)
    written = [target]
    if pred.spread is not None:
        spread = torch.nn.functional.interpolate(pred.spread[None], size=size, mode="bilinear", align_corners=False)
        unc = (spread[0, 0].clamp(0, 0.5) * 510).numpy().astype(np.uint8)
        _save_png(Image.fromarray(unc), output / f"{path.stem}_uncertainty.png")
        written.append(output / f"{path.stem}_uncertainty.png")
    if probabilities:
        fg = (probs[1:].sum(0).clamp(0, 1) * 65535).round().numpy().astype(np.uint16)
        _save_png(Image.fromarray(fg), output / f"{path.stem}_probability.png")
        written.append(output / f"{path.stem}_probability.png")
    return written


def output_names(stem: str, spatial_dims: int, samples: int, probabilities: bool) -> list[str]:
    """The files a prediction of the input ``stem`` writes."""
    suffix = ".nii.gz" if spatial_dims == 3 else ".png"
    names = [f"{stem}{suffix}"]
    if samples > 1:
        names.append(f"{stem}_uncertainty{suffix}")
    if probabilities:
        names.append(f"{stem}_probability{suffix}")
    return names


def _save_png(image: Image.Image, target: Path) -> None:
    with safefs.atomic(target) as handle:
        image.save(handle, format="PNG")


def _save_nifti(image, target: Path) -> None:
    """A ``.nii.gz`` written atomically (never through a link)."""
    import gzip

    safefs.write_bytes(target, gzip.compress(image.to_bytes(), compresslevel=6))


def predict_volume_file(
    method, cfg, data_info, path, output, samples, threshold, device, probabilities: bool = False
) -> list[Path]:
    """Segment one volume by sliding windows into ``output/STEM.nii.gz`` with the input's
    affine, plus ``STEM_uncertainty.nii.gz`` (float) with several draws and, with
    ``probabilities``, ``STEM_probability.nii.gz``: the foreground probability (float32).
    ``data_info``: the checkpoint's ``data`` record (its training-set statistics)."""
    import nibabel as nib

    from .data.volumes import VolumePair, case_stem, load_volume_pair

    image, _, geometry = load_volume_pair(VolumePair(case_stem(path), path, None), cfg.data, labels=False)
    image = normalize(image[None], data_info["stats"])[0]
    pred = predict_tensor(
        method,
        image[None],
        device,
        cfg.eval.batch_size,
        samples,
        tuple(cfg.data.patch_size),
        cfg.eval.sw_overlap,
        cfg.train.seed,
        cfg.eval.inference_t,
    )
    mask = _mask_from(pred.probs[0], method.num_classes, threshold)
    stem = case_stem(path)
    target = output / f"{stem}.nii.gz"
    _save_nifti(nib.Nifti1Image(mask, geometry.affine), target)
    written = [target]
    if pred.spread is not None:
        unc = output / f"{stem}_uncertainty.nii.gz"
        _save_nifti(nib.Nifti1Image(pred.spread[0].numpy().astype(np.float32), geometry.affine), unc)
        written.append(unc)
    if probabilities:
        prob = output / f"{stem}_probability.nii.gz"
        fg = pred.probs[0, 1:].sum(0).clamp(0, 1).numpy().astype(np.float32)
        _save_nifti(nib.Nifti1Image(fg, geometry.affine), prob)
        written.append(prob)
    return written
