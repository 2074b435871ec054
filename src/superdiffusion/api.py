"""Typed entry points: train, evaluate and predict. The command line is a thin layer on top."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import checkpoint
from .config import RESUMABLE_KEYS, Config, flat, from_dict
from .data import SegmentationData, build_data, normalize
from .data.folder import IMAGE_EXTENSIONS, read_image, read_mask, resize_image
from .errors import ConfigError, DataError, RunFolderError
from .evaluation import (
    PROTOCOLS,
    best_threshold,
    binary_scores,
    foreground_probability,
    multiclass_scores,
    per_image_at_size,
    surface_distances,
    sweep,
    thresholds,
)
from .inference import predict_tensor
from .methods import METHODS, Method, build_method
from .runfolder import RunFolder, write_json
from .training import Trainer, resolve_device, split_probabilities


def default_run_dir(cfg: Config) -> Path:
    percent = f"{cfg.data.labeled_percent:g}"
    return Path("runs") / cfg.data.name / cfg.method.name / f"p{percent}-s{cfg.train.seed}"


def train(cfg: Config, run_dir: str | Path | None = None, resume: bool = False, force: bool = False) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir``, then evaluate the selected checkpoint on test.

    Returns the results written to ``run_dir/results.json``.
    """
    folder = RunFolder(run_dir if run_dir else default_run_dir(cfg))
    cfg = with_method_settings(cfg)  # config.yaml records every setting of the method, defaults included
    rank, world = distributed_setup(cfg)
    if rank == 0:
        folder.lock()  # one writer at a time: a second sweep or a requeued job stops here
    try:
        if resume and folder.started:
            check_resume(folder.path, with_method_settings(folder.read_config()), cfg)
        data = build_data(cfg.data, cfg.train.seed, validation=uses_validation(cfg))
        trainer = Trainer(cfg, data, folder.path, rank, world)
        start = time.perf_counter()
        best = trainer.fit(resume=resume, force=force)
        if world > 1:
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
            if rank != 0:
                return {}
        best = dict(best, path=str(folder.checkpoint_path("best")))
        results = evaluate_method(trainer.method, data, cfg, best, trainer.device)
        results["health"] = trainer.health
        results["train_seconds"] = round(trainer.elapsed, 2)
        results["wall_seconds_this_process"] = round(time.perf_counter() - start, 2)
        folder.write_results(results)
        return results
    finally:
        folder.unlock()


def saved_config(run_dir: str | Path) -> Config:
    """The settings a run folder was trained with (its ``config.yaml``)."""
    return RunFolder(run_dir).read_config()


def with_method_settings(cfg: Config) -> Config:
    """``cfg`` with ``method.params`` holding every setting of its method, defaults included
    (checked by the method), so a run's record does not depend on later defaults."""
    if cfg.method.name not in METHODS:
        raise ConfigError(f"unknown method {cfg.method.name!r}; available: {', '.join(METHODS)}")
    cfg = from_dict(cfg.to_dict())
    cfg.method.params = dataclasses.asdict(METHODS[cfg.method.name].parse_params(cfg.method.params))
    return cfg


def check_resume(run_dir: Path, saved: Config, cfg: Config) -> None:
    """Refuse to resume ``run_dir`` with settings other than :data:`RESUMABLE_KEYS`, in one line."""
    old, new = flat(saved), flat(cfg)
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k) and k not in RESUMABLE_KEYS]
    if changed:
        diffs = ", ".join(f"{k} ({old.get(k)} -> {new.get(k)})" for k in changed)
        raise RunFolderError(
            f"{run_dir} was trained with other settings; --resume may change only {', '.join(RESUMABLE_KEYS)}, "
            f"but this command changes {diffs}: drop those, or train into a new --out"
        )


def distributed_setup(cfg: Config) -> tuple[int, int]:
    """Join the process group when started by ``torchrun`` (gloo on CPU, NCCL on GPU)."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    rank = int(os.environ["RANK"])
    cuda = cfg.train.device != "cpu" and torch.cuda.is_available()
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        cfg.train.device = f"cuda:{local}"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return rank, world


def uses_validation(cfg: Config) -> bool:
    """The paper's protocol selects on test: no validation carve-out, and the labeled subset is
    drawn from all training images (``ceil(N p / 100)``), as for Table 1."""
    return cfg.eval.protocol != "paper"


def protocol_label(checkpoint_split: str, threshold_split: str) -> str:
    """``honest`` when checkpoint and threshold were both chosen on validation, ``paper`` when
    both on test, ``paper-threshold`` for a validation checkpoint with a test-tuned threshold."""
    if checkpoint_split == threshold_split:
        return "honest" if checkpoint_split == "val" else "paper"
    return "paper-threshold"


def evaluate_method(
    method: Method,
    data: SegmentationData,
    cfg: Config,
    best: dict[str, Any],
    device: torch.device,
    protocol: str | None = None,
) -> dict[str, Any]:
    """Load the selected checkpoint's weights into ``method`` and score the test split.

    The checkpoint's own record (``best["split"]``) says where it was chosen. ``protocol``
    (default: the run's) is ``honest`` (use the threshold chosen with the checkpoint) or
    ``paper`` (tune the threshold on test). A checkpoint chosen on test is never called honest.
    """
    run_best = best.get("path")
    if run_best:
        method.load_state_dict(checkpoint.load(Path(run_best))["model"])
    protocol = protocol or cfg.eval.protocol
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    trained_split, trained_metric = PROTOCOLS[cfg.eval.protocol]  # for checkpoints without their own record
    checkpoint_split, metric = best.get("split") or trained_split, best.get("metric") or trained_metric
    if protocol == "honest" and checkpoint_split != "val":
        raise ConfigError(
            f"this run chose its checkpoint on the {checkpoint_split} split (trained with eval.protocol="
            f"{cfg.eval.protocol}); its scores cannot be reported as honest: retrain with eval.protocol=honest"
        )
    threshold_split = "test" if protocol == "paper" else checkpoint_split
    test = data.test
    results: dict[str, Any] = {
        "method": cfg.method.name,
        "dataset": cfg.data.name,
        "labeled_percent": cfg.data.labeled_percent,
        "seed": cfg.train.seed,
        "protocol": protocol_label(checkpoint_split, threshold_split),
        "selection": {
            "split": checkpoint_split,
            "metric": metric,
            "epoch": best.get("epoch"),
            "threshold": best.get("threshold", 0.5),
            "threshold_split": threshold_split,
        },
        "counts": {
            "labeled": len(data.labeled),
            "unlabeled": len(data.unlabeled),
            "val": len(data.val),
            "test": len(test),
        },
        "samples": cfg.eval.samples,
    }
    spreads: list[torch.Tensor] = []
    probs, masks = split_probabilities(method, test, cfg, device, keep=spreads)
    if data.num_classes != 2:
        results["test"] = {"resized": multiclass_scores(probs, masks)}
        return results
    if threshold_split == "test":  # the paper tunes the threshold on test itself, by pooled Jaccard
        grid = thresholds(cfg.eval.threshold_start, cfg.eval.threshold_stop, cfg.eval.threshold_step)
        sweep_rows = sweep(foreground_probability(probs), masks, grid)
        results["selection"]["threshold"] = best_threshold(sweep_rows, PROTOCOLS["paper"][1])["threshold"]
    threshold = results["selection"]["threshold"]
    fg = foreground_probability(probs)
    results["test"] = {"resized": binary_scores(fg, masks, threshold)}
    if data.spatial_dims == 2 and test.pairs:
        d = cfg.data
        originals = [read_mask(p.mask, d.num_classes, d.mask_mode, d.mask_threshold) for p in test.pairs]
        results["test"]["original"] = per_image_at_size(fg, originals, threshold)
    if data.spatial_dims == 3:
        results["test"]["surface"] = surface_distances(fg, test, threshold)
    if spreads:
        results["test"]["mean_uncertainty"] = float(spreads[0].mean())
    return results


def load_run(run_dir: str | Path, which: str = "best.pt") -> tuple[Config, Method, dict[str, Any]]:
    """Rebuild the method of a run folder from its checkpoint alone."""
    state = RunFolder(run_dir).load_checkpoint(which)
    cfg = from_dict(state["config"])
    d = state["data"]
    method = build_method(cfg, d["channels"], d["num_classes"], d["spatial_dims"])
    method.load_state_dict(state["model"])
    return cfg, method, state


def evaluate(
    run_dir: str | Path, protocol: str | None = None, samples: int | None = None, device: str = "auto"
) -> dict[str, Any]:
    """Re-score a finished run's selected checkpoint on its test split (the data are split
    as the run was trained; see :func:`evaluate_method` for ``protocol``). ``device``:
    auto, cpu or cuda[:N], whatever device the run was trained on."""
    cfg, method, state = load_run(run_dir)
    if samples:
        cfg.eval.samples = samples
    data = build_data(cfg.data, cfg.train.seed, validation=uses_validation(cfg))
    device = resolve_device(device)
    results = evaluate_method(method.to(device), data, cfg, dict(state["best"]), device, protocol)
    write_json(Path(run_dir) / f"evaluation-{results['protocol']}-k{cfg.eval.samples}.json", results)
    return results


def _inputs(path: Path) -> list[Path]:
    from .data.volumes import is_volume

    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS or is_volume(p))
    if not files:
        raise DataError(f"{path}: no image or volume files")
    return files


def predict(
    run_dir: str | Path,
    inputs: str | Path,
    output: str | Path,
    samples: int = 1,
    force: bool = False,
    device: str = "auto",
) -> list[Path]:
    """Segment every image or volume of ``inputs`` (a file or a folder).

    2D: a PNG mask per image at the input's size (0/255 for binary tasks, class indices
    otherwise). 3D: a NIfTI label volume with the input's affine, by sliding windows.
    With ``samples`` > 1, an uncertainty map beside each (standard deviation of the
    foreground probability over draws; PNG scaled x 510, NIfTI as float).
    """
    cfg, method, state = load_run(run_dir)
    device = resolve_device(device)  # not the training device: a run trained on a GPU predicts anywhere
    method.to(device)
    threshold = float(state["best"].get("threshold", 0.5))
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    files = _inputs(Path(inputs))
    if not force:
        from .data.volumes import volume_stem

        for path in files:
            stem = volume_stem(path) if method.spatial_dims == 3 else path.stem
            suffix = ".nii.gz" if method.spatial_dims == 3 else ".png"
            for name in (f"{stem}{suffix}", f"{stem}_uncertainty{suffix}"):
                if (output / name).exists():
                    raise RunFolderError(
                        f"{output / name} already exists; choose another output folder or pass --force"
                    )
    written: list[Path] = []
    for path in files:
        if method.spatial_dims == 3:
            written += _predict_volume(method, cfg, path, output, samples, threshold, device)
        else:
            written += _predict_image(method, cfg, state, path, output, samples, threshold, device)
    return written


def _mask_from(probs: torch.Tensor, num_classes: int, threshold: float) -> np.ndarray:
    if num_classes == 2:
        return (probs[1:].sum(0) > threshold).numpy().astype(np.uint8)
    return probs.argmax(0).numpy().astype(np.uint8)


def _predict_image(method, cfg, state, path, output, samples, threshold, device) -> list[Path]:
    stats, channels = state["data"]["stats"], state["data"]["channels"]
    image = read_image(path, channels)
    size = image.shape[1:]
    x = normalize(resize_image(image, tuple(cfg.data.size))[None], stats)
    pred = predict_tensor(method, x, device, samples=samples)
    probs = torch.nn.functional.interpolate(pred.probs, size=size, mode="bilinear", align_corners=False)[0]
    mask = _mask_from(probs, method.num_classes, threshold)
    target = output / f"{path.stem}.png"
    Image.fromarray(mask * 255 if method.num_classes == 2 else mask).save(target)
    written = [target]
    if pred.spread is not None:
        spread = torch.nn.functional.interpolate(pred.spread[None], size=size, mode="bilinear", align_corners=False)
        unc = (spread[0, 0].clamp(0, 0.5) * 510).numpy().astype(np.uint8)
        Image.fromarray(unc).save(output / f"{path.stem}_uncertainty.png")
        written.append(output / f"{path.stem}_uncertainty.png")
    return written


def _predict_volume(method, cfg, path, output, samples, threshold, device) -> list[Path]:
    import nibabel as nib

    from .data.volumes import VolumePair, load_volume_pair, volume_stem

    image, _, geometry = load_volume_pair(VolumePair(volume_stem(path), path, path), cfg.data, labels=False)
    pred = predict_tensor(
        method, image[None], device, cfg.eval.batch_size, samples, tuple(cfg.data.patch_size), cfg.eval.sw_overlap
    )
    mask = _mask_from(pred.probs[0], method.num_classes, threshold)
    target = output / f"{volume_stem(path)}.nii.gz"
    nib.save(nib.Nifti1Image(mask, geometry.affine), str(target))
    written = [target]
    if pred.spread is not None:
        unc = output / f"{volume_stem(path)}_uncertainty.nii.gz"
        nib.save(nib.Nifti1Image(pred.spread[0].numpy().astype(np.float32), geometry.affine), str(unc))
        written.append(unc)
    return written
