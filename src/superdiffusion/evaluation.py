"""Metrics: Dice and Jaccard of the foreground (per image and pooled), threshold sweeps,
surface distances, and the collapse flags of a run's history. Where thresholds and
checkpoints are chosen (the protocols) is :mod:`superdiffusion.protocol`."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import compute_dice, compute_iou, compute_roc_auc


def thresholds(start: float, stop: float, step: float) -> list[float]:
    count = int(round((stop - start) / step)) + 1
    return [round(start + i * step, 6) for i in range(count)]


def foreground_probability(probs: torch.Tensor) -> torch.Tensor:
    """``(N, C, *S)`` class probabilities -> ``(N, *S)`` probability of any foreground class."""
    return probs[:, 1:].sum(1)


def _counts(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dims = tuple(range(1, pred.dim()))
    tp = (pred & target).sum(dims).double()
    fp = (pred & ~target).sum(dims).double()
    fn = (~pred & target).sum(dims).double()
    return tp, fp, fn


def _image_scores(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice and Jaccard of each image (an empty prediction of an empty target scores 1)."""
    empty = (tp + fp + fn) == 0
    dice = torch.where(empty, torch.ones_like(tp), 2 * tp / (2 * tp + fp + fn).clamp_min(1))
    jac = torch.where(empty, torch.ones_like(tp), tp / (tp + fp + fn).clamp_min(1))
    return dice, jac


def _scores(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> dict[str, float]:
    """Per-image means (an empty prediction of an empty target scores 1) and pooled values."""
    dice, jac = _image_scores(tp, fp, fn)
    TP, FP, FN = tp.sum(), fp.sum(), fn.sum()
    return {
        "dice_per_image": float(dice.mean()),
        "jaccard_per_image": float(jac.mean()),
        "dice_pooled": float(2 * TP / (2 * TP + FP + FN).clamp_min(1)),
        "jaccard_pooled": float(TP / (TP + FP + FN).clamp_min(1)),
    }


def sweep(fg_prob: torch.Tensor, labels: torch.Tensor, grid: list[float]) -> list[dict[str, float]]:
    """Binary scores of ``fg_prob > th`` for each threshold of ``grid``, with the fraction of
    pixels predicted foreground and the true one."""
    target = labels > 0
    pixels = target.numel()
    true_fraction = float(target.sum()) / pixels
    rows = []
    for th in grid:
        tp, fp, fn = _counts(fg_prob > th, target)
        rows.append(
            {
                "threshold": th,
                **_scores(tp, fp, fn),
                "predicted_fraction": float((tp + fp).sum()) / pixels,
                "true_fraction": true_fraction,
            }
        )
    return rows


def best_threshold(results: list[dict[str, float]], metric: str) -> dict[str, float]:
    """The sweep entry with the highest ``metric`` (the lowest threshold on ties)."""
    return max(results, key=lambda r: (r[metric], -r["threshold"]))


def binary_scores(fg_prob: torch.Tensor, labels: torch.Tensor, threshold: float) -> dict[str, float]:
    return _scores(*_counts(fg_prob > threshold, labels > 0))


AUROC_PIXELS = 200_000  # pixels (evenly strided) behind the zero-label AUROC: MONAI's ranks them in Python


def label_agreement(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """How well an unsupervised mask (a pretrained teacher's) matches the labels: the Dice of its
    argmax (mean over images and foreground classes); in binary tasks also the Dice with the two
    classes swapped (``dice_swapped``) and the pixel AUROC of the foreground probability (0.5:
    no relation; near 0: the inverted mask)."""
    if probs.shape[1] != 2:
        return {"dice": multiclass_scores(probs, labels)["dice_per_image"]}
    fg, target = foreground_probability(probs), labels > 0
    dice = float(_image_scores(*_counts(fg > 0.5, target))[0].mean())
    swapped = float(_image_scores(*_counts(fg < 0.5, target))[0].mean())
    flat_p, flat_t = fg.flatten().float(), target.flatten().float()
    stride = max(1, flat_p.numel() // AUROC_PIXELS)
    flat_p, flat_t = flat_p[::stride], flat_t[::stride]
    auroc = float(compute_roc_auc(flat_p, flat_t)) if 0 < flat_t.sum() < flat_t.numel() else float("nan")
    return {"dice": dice, "dice_swapped": swapped, "auroc": auroc}


def per_case_scores(fg_prob: torch.Tensor, labels: torch.Tensor, threshold: float, ids: list[str]) -> list[dict]:
    """One row per image or volume: its id, Dice and Jaccard (the terms of the per-image mean)."""
    dice, jac = _image_scores(*_counts(fg_prob > threshold, labels > 0))
    return [{"id": i, "dice": float(d), "jaccard": float(j)} for i, d, j in zip(ids, dice, jac)]


def multiclass_per_case(probs: torch.Tensor, labels: torch.Tensor, ids: list[str], names: list[str]) -> list[dict]:
    """One row per image or volume of a multi-class task: its id, ``dice`` and ``jaccard`` (the
    mean over the foreground classes its reference holds; over every class when it holds none,
    as :func:`multiclass_scores` does for a split) and each class's ``dice_NAME``. ``names``:
    the foreground classes' names."""
    dice, iou = _per_class(probs, labels)
    rows = []
    for k, case in enumerate(ids):
        present = present_classes(labels[k : k + 1], probs.shape[1])
        keep = present if present.any() else torch.ones_like(present)
        row = {"id": case, "dice": float(dice[k, keep].mean()), "jaccard": float(iou[k, keep].mean())}
        rows.append(row | {f"dice_{name}": float(d) for name, d in zip(names, dice[k])})
    return rows


def _per_class(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, C - 1)`` Dice and IoU of each foreground class in each image (argmax; MONAI)."""
    c = probs.shape[1]
    pred = F.one_hot(probs.argmax(1), c).movedim(-1, 1)
    target = F.one_hot(labels, c).movedim(-1, 1)
    dice = compute_dice(pred, target, include_background=False, ignore_empty=False)
    iou = compute_iou(pred, target, include_background=False, ignore_empty=False)
    return dice, iou


def present_classes(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(C - 1,)`` whether each foreground class appears anywhere in the reference masks."""
    return torch.bincount(labels.flatten().clamp(0, num_classes - 1), minlength=num_classes)[1:] > 0


def multiclass_scores(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Argmax segmentation scored with MONAI's Dice and IoU, averaged over the foreground classes
    present in the reference (a declared class no mask holds would score 1 for predicting
    nothing, and drown the real ones); over every class when none is present."""
    dice, iou = _per_class(probs, labels)
    present = present_classes(labels, probs.shape[1])
    if present.any():
        dice, iou = dice[:, present], iou[:, present]
    return {"dice_per_image": float(dice.mean()), "jaccard_per_image": float(iou.mean())}


def per_class_scores(probs: torch.Tensor, labels: torch.Tensor, names: list[str]) -> dict[str, dict[str, float]]:
    """Dice and Jaccard of each foreground class (mean over images), keyed by the class name
    (``names``: index -> name, background first); a class absent from every reference mask is
    marked ``present: False``, with no score."""
    dice, iou = _per_class(probs, labels)
    present = present_classes(labels, probs.shape[1])
    return {
        name: {
            "dice_per_image": float(dice[:, k].mean()),
            "jaccard_per_image": float(iou[:, k].mean()),
            "present": True,
        }
        if present[k]
        else {"dice_per_image": None, "jaccard_per_image": None, "present": False}
        for k, name in enumerate(names[1:])
    }


def per_image_at_size(
    fg_prob: torch.Tensor, masks: list[np.ndarray], threshold: float, spatial_dims: int = 2
) -> dict[str, float]:
    """Scores at each image's original resolution: probabilities are resized (bilinear) to
    the size of the original mask before thresholding."""
    tp = fp = fn = None
    rows = []
    mode = "bilinear" if spatial_dims == 2 else "trilinear"
    for prob, mask in zip(fg_prob, masks):
        target = torch.from_numpy(mask > 0)[None]
        up = F.interpolate(prob[None, None].float(), size=mask.shape, mode=mode, align_corners=False)[0]
        rows.append(_counts(up > threshold, target))
    tp, fp, fn = (torch.cat(x) for x in zip(*rows))
    return _scores(tp, fp, fn)


def surface_distances(fg_prob: torch.Tensor, split, threshold: float) -> dict[str, float]:
    """Mean 95 % Hausdorff distance and average surface distance per volume (MONAI), in
    physical units from each volume's spacing. Volumes where prediction or target is empty
    are skipped (counted in ``empty``)."""
    import warnings

    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
    rows = []
    for k, mask in enumerate(split.masks):
        size = tuple(mask.shape)
        pred = fg_prob[k][tuple(slice(0, s) for s in size)] > threshold
        target = mask > 0
        if not pred.any() or not target.any():
            rows.append({"hd95": float("nan"), "asd": float("nan")})
            continue
        spacing = list(split.geometry[k].spacing) if split.geometry else None
        y_pred = torch.stack([~pred, pred])[None].float()
        y = torch.stack([~target, target])[None].float()
        hd = float(compute_hausdorff_distance(y_pred, y, percentile=95, spacing=spacing)[0, 0])
        asd = float(compute_average_surface_distance(y_pred, y, symmetric=True, spacing=spacing)[0, 0])
        rows.append({"hd95": hd, "asd": asd})
    hd = [r["hd95"] for r in rows if not np.isnan(r["hd95"])]
    asd = [r["asd"] for r in rows if not np.isnan(r["asd"])]
    return {
        "hd95": float(np.mean(hd)) if hd else float("nan"),
        "asd": float(np.mean(asd)) if asd else float("nan"),
        "empty": len(rows) - len(hd),
        "per_case": rows,
    }


def pseudo_label_drift(pseudo_fraction: float, true_fraction: float | None) -> str | None:
    """``pseudo_labels_background`` when the pseudo-labels' foreground share is under a quarter
    of the true one, ``pseudo_labels_foreground`` when it is over 90 % (truth under 50 %)."""
    if not true_fraction:
        return None
    if pseudo_fraction < 0.25 * true_fraction:
        return "pseudo_labels_background"
    if pseudo_fraction > 0.9 and true_fraction < 0.5:
        return "pseudo_labels_foreground"
    return None


def health_flags(history: list[dict], best: dict, grid: list[float], key: str) -> list[str]:
    """Signs that a run collapsed, from its selection records (``history`` rows holding
    ``key``, its threshold and foreground fractions) and the selected one (``best``):

    - ``threshold_at_edge``: the selected threshold is the first or last of the grid;
    - ``all_foreground`` / ``all_background``: at that threshold the selection split is
      (nearly) all foreground (>= 95 % of pixels, truth under 80 %) or nearly all background
      (under 5 % of the true foreground fraction);
    - ``pseudo_labels_background`` / ``pseudo_labels_foreground``: in the last epoch the
      pseudo-labels on unlabeled images (``pseudo_fg`` in ``history``) were under a quarter of
      the true foreground fraction, or over 90 % foreground;
    - ``degrading``: the last score fell below 75 % of the best one while the last threshold
      sank into the lowest tenth of the grid (pseudo-labels drifting to background, typically).
    """
    flags = []
    if "threshold" in best and best["threshold"] in (grid[0], grid[-1]):
        flags.append("threshold_at_edge")
    pred, true = best.get("predicted_fraction"), best.get("true_fraction")
    if pred is not None and true is not None:
        if pred >= 0.95 and true < 0.8:
            flags.append("all_foreground")
        elif true > 0 and pred < 0.05 * true:
            flags.append("all_background")
    pseudo = [h["pseudo_fg"] for h in history if "pseudo_fg" in h]
    drift = pseudo_label_drift(pseudo[-1], true) if pseudo else None
    if drift:
        flags.append(drift)
    scored = [h for h in history if key in h]
    if scored and best.get("score"):
        last = scored[-1]
        low = grid[0] + 0.1 * (grid[-1] - grid[0])
        if last[key] < 0.75 * best["score"] and last.get("threshold", 1.0) <= low:
            flags.append("degrading")
    return flags


FLAG_ADVICE = {
    "threshold_at_edge": "the selected threshold sits at the edge of the grid",
    "all_foreground": "the selected predictions paint (nearly) every pixel foreground",
    "all_background": "the selected predictions are (nearly) all background",
    "degrading": "the validation score fell far below its best while the threshold sank to the grid's bottom",
    "pseudo_labels_background": "the pseudo-labels on unlabeled images are almost all background: the unsupervised "
    "terms teach the networks to miss the structure (try a lower method.lambda_max or method.pseudo_confidence)",
    "pseudo_labels_foreground": "the pseudo-labels on unlabeled images are almost all foreground",
}
