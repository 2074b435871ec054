"""Evaluation protocols: where a checkpoint and its threshold are chosen, and how the test
split is scored. Everything that decides what a reported number means lives here.

- honest (default): threshold and checkpoint chosen on the validation split (carved from
  the training images), reported on test per image (mean) and pooled.
- paper: the authors' protocol behind Table 1: threshold (0..0.9, step 0.02) and
  checkpoint chosen to maximise the pooled Jaccard on the test set itself; no validation
  split, and the labeled subset is drawn from all training images.
- paper-threshold: a checkpoint chosen on validation, scored with a threshold tuned on test
  (``evaluate --protocol paper`` on an honest run).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint
from .config import Config
from .data import SegmentationData, Split, build_data
from .data.dataset import class_names
from .data.folder import read_mask
from .data.patches import pad_stack
from .data.prior import intensity_prior
from .errors import ConfigError
from .evaluation import (
    best_threshold,
    binary_scores,
    foreground_probability,
    health_flags,
    label_agreement,
    multiclass_per_case,
    multiclass_scores,
    per_case_scores,
    per_class_scores,
    per_image_at_size,
    surface_distances,
    sweep,
    thresholds,
)
from .inference import derived_seed, generator, predict_tensor
from .methods import Method
from .runfolder import RunFolder
from .uncertainty import binary_entropy, finite, uncertainty_report

PROTOCOLS = {
    "honest": ("val", "dice_per_image"),
    "paper": ("test", "jaccard_pooled"),
}


def uses_validation(cfg: Config) -> bool:
    """The paper's protocol selects on test: no validation carve-out, and the labeled subset is
    drawn from all training images (``ceil(N p / 100)``), as for Table 1."""
    return cfg.eval.protocol != "paper"


def run_data(run_dir: str | Path, cfg: Config) -> SegmentationData:
    """The data of a trained run, split exactly as it was trained (its ``splits.json``): what
    evaluate, suggest, figure and show score."""
    return build_data(cfg.data, cfg.train.seed, uses_validation(cfg), RunFolder(run_dir).read_splits())


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
        # where the labeled subset came from: a percentage drawn with the seed, or a file of ids (whose
        # runs are no seed of a percentage: report keeps them apart)
        "labels": (
            {"source": "ids", "file": Path(cfg.data.labeled_ids).name, "count": len(data.labeled)}
            if cfg.data.labeled_ids
            else {"source": "percent", "percent": cfg.data.labeled_percent, "count": len(data.labeled)}
        ),
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
    if not any(bool((mask > 0).any()) for mask in test.masks):
        results["warnings"] = [
            f"no test mask holds any foreground: every empty prediction scores 1, so the test scores say nothing "
            f"({len(test)} test images)"
        ]
    spreads: list[torch.Tensor] = []
    probs, masks = split_probabilities(method, test, cfg, device, keep=spreads)
    names = class_names(data.num_classes, data.class_names)
    resized = data.spatial_dims == 2 and cfg.data.size is not None
    results["scored_at"] = "x".join(map(str, cfg.data.size)) if resized else "native resolution"
    if data.class_names:
        results["class_names"] = list(data.class_names)
    if data.num_classes != 2:
        results["test"] = {"resized": multiclass_scores(probs, masks)}
        results["test_per_class"] = per_class_scores(probs, masks, names)
        results["per_case"] = multiclass_per_case(probs, masks, list(test.ids), list(results["test_per_class"]))
        return results
    if threshold_split == "test":  # the paper tunes the threshold on test itself, by pooled Jaccard
        grid = thresholds(cfg.eval.threshold_start, cfg.eval.threshold_stop, cfg.eval.threshold_step)
        sweep_rows = sweep(foreground_probability(probs), masks, grid)
        results["selection"]["threshold"] = best_threshold(sweep_rows, PROTOCOLS["paper"][1])["threshold"]
    threshold = results["selection"]["threshold"]
    fg = foreground_probability(probs)
    results["test"] = {"resized": binary_scores(fg, masks, threshold)}
    results["per_case"] = per_case_scores(fg, masks, threshold, list(test.ids))  # written as test_per_case.csv
    if resized and test.pairs:  # else scored at native size already
        d = cfg.data
        originals = [read_mask(p.mask, d.num_classes, d.mask_mode, d.mask_threshold, d.mask_values) for p in test.pairs]
        results["test"]["original"] = per_image_at_size(fg, originals, threshold)
    if data.spatial_dims == 3:
        results["test"]["surface"] = surface_distances(fg, test, threshold)
        for row, distances in zip(results["per_case"], results["test"]["surface"].pop("per_case")):
            row.update(distances)
    if spreads:
        results["test"]["mean_uncertainty"] = float(spreads[0].mean())
    sources = {"entropy": binary_entropy(fg)}
    if spreads:
        sources["spread"] = spreads[0]
    teacher = method.teacher_net()
    if teacher is not None and data.spatial_dims == 2:
        sources["teacher_disagreement"] = (teacher_probability(method, teacher, test, cfg, device) - fg).abs()
    if has_dropout(method.segmenter()) and test.size is not None:
        sources["mc_dropout"] = mc_dropout_spread(method, test, cfg, device)
    dice = [row["dice"] for row in results["per_case"]]
    results["uncertainty"] = finite(uncertainty_report(fg, masks, threshold, dice, sources))
    return results


MC_DROPOUT_PASSES = 8


def has_dropout(net: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in net.modules())


@torch.inference_mode()
def mc_dropout_spread(method: Method, split: Split, cfg: Config, device: torch.device) -> torch.Tensor:
    """MC dropout (Gal & Ghahramani): the standard deviation of the foreground probability
    over :data:`MC_DROPOUT_PASSES` passes with the segmenter's dropout on (batch norm stays in
    eval mode), seeded from ``train.seed``: the reference uncertainty a baseline can give."""
    net = method.segmenter()
    method.eval()
    drops = [m for m in net.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    torch.manual_seed(cfg.train.seed)
    chunks = []
    try:
        for m in drops:
            m.train()
        for start in range(0, len(split), cfg.eval.batch_size):
            images = split.stack(slice(start, start + cfg.eval.batch_size)).to(device)
            passes = torch.stack(
                [foreground_probability(method.predict(images).probs.float()) for _ in range(MC_DROPOUT_PASSES)]
            )
            chunks.append(passes.std(0, unbiased=False).cpu())
    finally:
        method.eval()
    return torch.cat(chunks)


@torch.inference_mode()
def teacher_probability(method: Method, teacher, split: Split, cfg: Config, device: torch.device) -> torch.Tensor:
    """The teacher's foreground probability on a 2D split (one draw, batches of ``eval.batch_size``)."""
    method.eval()
    chunks = []
    for start in range(0, len(split), cfg.eval.batch_size):
        images = split.stack(slice(start, start + cfg.eval.batch_size)).to(device)
        draw = generator(images, derived_seed(cfg.train.seed, start))
        probs = method.predict(images, 1, draw, cfg.eval.inference_t, net=teacher).probs
        chunks.append(foreground_probability(probs.float().cpu()))
    return torch.cat(chunks)


@dataclass
class Selection:
    """One evaluated epoch scored on the selection split (at its best threshold in binary tasks)."""

    split_name: str
    metric: str
    scores: dict[str, Any]
    split: Split

    @property
    def score(self) -> float:
        return self.scores[self.metric]

    @property
    def threshold(self) -> float:
        return self.scores.get("threshold", 0.5)

    @property
    def variable_size(self) -> bool:
        return self.split.size is None

    @property
    def fractions(self) -> dict[str, float]:
        """Predicted and true foreground fractions (binary tasks)."""
        return {k: self.scores[k] for k in ("predicted_fraction", "true_fraction") if k in self.scores}

    @property
    def record(self) -> dict[str, Any]:
        """The fields this evaluation adds to the epoch's history row."""
        threshold = {"threshold": self.scores["threshold"]} if "threshold" in self.scores else {}
        return {f"{self.split_name}_{self.metric}": self.score, **threshold, **self.fractions}

    def best(self, epoch: int) -> dict[str, Any]:
        """The run's ``best`` record, were this epoch the best so far."""
        best = {"score": self.score, "metric": self.metric, "split": self.split_name, "epoch": epoch}
        return best | {"threshold": self.threshold} | self.fractions


def select_epoch(method: Method, data: SegmentationData, cfg: Config, device: torch.device) -> Selection:
    """Score the protocol's selection split (validation, or test under the paper's protocol)."""
    split_name, metric = PROTOCOLS[cfg.eval.protocol]
    split = getattr(data, split_name)
    score = selection_scores(method, split, cfg, device)
    return Selection(split_name, metric, best_threshold(score, metric) if method.num_classes == 2 else score[0], split)


def example_predictions(method: Method, split: Split, cfg: Config, device: torch.device, count: int = 4):
    """The first ``count`` images of a split, their class probabilities and their masks."""
    images = split.stack(slice(0, count))
    e = cfg.eval
    pred = predict_tensor(method, images, device, e.batch_size, 1, seed=cfg.train.seed, step=e.inference_t)
    return images, pred.probs, split.stack_masks(slice(0, count))


def selection_scores(method: Method, split: Split, cfg: Config, device: torch.device) -> list[dict[str, float]]:
    probs, masks = split_probabilities(method, split, cfg, device)
    if method.num_classes != 2:
        return [multiclass_scores(probs, masks)]
    grid = thresholds(cfg.eval.threshold_start, cfg.eval.threshold_stop, cfg.eval.threshold_step)
    return sweep(foreground_probability(probs), masks, grid)


def split_probabilities(method: Method, split: Split, cfg: Config, device: torch.device, keep=None, net=None):
    """Class probabilities and masks of a split, stacked; volumes of different sizes are
    zero-padded to the largest (padding adds no true or false positive). ``keep`` receives
    the :class:`Prediction` (for its spread); ``net`` replaces the method's segmenter."""
    if split.size is None:  # each case at its own size, by sliding windows
        window = tuple(cfg.data.patch_size)
        preds = [
            predict_tensor(
                method,
                img[None],
                device,
                cfg.eval.batch_size,
                cfg.eval.samples,
                window,
                cfg.eval.sw_overlap,
                cfg.train.seed,
                cfg.eval.inference_t,
                net,
            )
            for img in split.images
        ]
        probs = pad_stack([p.probs[0] for p in preds])
        masks = pad_stack(list(split.masks)).long()
        if keep is not None and preds[0].spread is not None:
            keep.append(pad_stack([p.spread[0] for p in preds]))
        return probs, masks
    pred = predict_tensor(
        method,
        split.stack(),
        device,
        cfg.eval.batch_size,
        cfg.eval.samples,
        seed=cfg.train.seed,
        step=cfg.eval.inference_t,
        net=net,
    )
    if keep is not None and pred.spread is not None:
        keep.append(pred.spread)
    return pred.probs, split.stack_masks()


def labeled_agreement(method: Method, data: SegmentationData, cfg: Config, device: torch.device):
    """``score(net)``: how well ``net``'s prediction matches the labeled training images (see
    :func:`evaluation.label_agreement`). Training data only: no validation or test image is read."""

    def score(net: torch.nn.Module) -> dict[str, float]:
        probs, masks = split_probabilities(method, data.labeled, cfg, device, net=net)
        return label_agreement(probs, masks)

    return score


@torch.inference_mode()
def hidden_label_scores(method: Method, data: SegmentationData, cfg: Config, device: torch.device) -> dict[str, float]:
    """The mechanism at work, measured against the masks the label regime hides (``data.hidden``,
    at most ``eval.hidden_max`` images, evenly spread): the Dice and AUROC of the student's
    prediction, of the teacher's (methods with one) and of the student's targets
    (:meth:`~superdiffusion.methods.Method.pseudo_targets`, 2D at a fixed size), and the
    targets' foreground share beside the hidden masks'. Reads no image a batch is built from
    differently, changes no weight."""
    hidden = data.hidden
    if hidden is None or not len(hidden):
        return {}
    index = sorted({round(i) for i in np.linspace(0, len(hidden) - 1, min(cfg.eval.hidden_max, len(hidden)))})
    split = Split([hidden.images[i] for i in index], [hidden.masks[i] for i in index], [hidden.ids[i] for i in index],
                  size=hidden.size)  # fmt: skip
    found: dict[str, float] = {}
    nets = {"student": None, "teacher": method.teacher_net()}
    for name, net in nets.items():
        if name == "student" or net is not None:
            probs, masks = split_probabilities(method, split, cfg, device, net=net)
            scores = label_agreement(probs, masks)
            found.update({f"hidden_{name}_{k}": v for k, v in scores.items() if k in ("dice", "auroc")})
    if split.size is not None:  # the targets need whole images as the batches hold them
        was = method.training
        method.eval()
        torch.manual_seed(cfg.train.seed)  # a diffusion method's t and noise: the same draw every epoch
        try:
            chunks = []
            for start in range(0, len(split), cfg.eval.batch_size):
                images = split.stack(slice(start, start + cfg.eval.batch_size)).to(device)
                targets = method.pseudo_targets(images)
                if targets is None:
                    break
                chunks.append(targets.float().cpu())
        finally:
            method.train(was)
        if chunks:
            masks, targets = split.stack_masks(), torch.cat(chunks)
            scores = label_agreement(targets, masks)
            found.update({f"hidden_targets_{k}": v for k, v in scores.items() if k in ("dice", "auroc")})
            found["hidden_targets_fg"] = float((targets.argmax(1) > 0).float().mean())
            found["hidden_true_fg"] = float((masks > 0).float().mean())
    return found


def intensity_prior_agreement(split: Split) -> dict[str, Any]:
    """The control for a pretrained teacher's zero-label score: Otsu's threshold on each labeled
    training image's grey values (:func:`evaluation.intensity_prior`), scored against their
    labels as the teacher is, its polarity chosen by the teacher's rule (swapped when it ranks
    the labeled foreground below the background). Binary tasks."""
    from .methods.superdiffusion import inverted  # the teacher's polarity rule, one owner

    probs = pad_stack([intensity_prior(image) for image in split.images])
    found = label_agreement(probs, pad_stack(list(split.masks)).long())
    if inverted(found):
        return {"dice": found["dice_swapped"], "auroc": 1 - found["auroc"], "swapped": True}
    return {"dice": found["dice"], "auroc": found["auroc"], "swapped": False}


def run_health(history: list[dict[str, Any]], best: dict[str, Any], eval_cfg, num_classes: int) -> dict[str, Any]:
    """Collapse flags of a finished run (see :func:`evaluation.health_flags`): ``{"ok", "flags"}``."""
    split_name, metric = PROTOCOLS[eval_cfg.protocol]
    flags = []
    if num_classes == 2 and best:
        grid = thresholds(eval_cfg.threshold_start, eval_cfg.threshold_stop, eval_cfg.threshold_step)
        flags = health_flags(history, best, grid, f"{split_name}_{metric}")
    return {"ok": not flags, "flags": flags}
