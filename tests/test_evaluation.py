import numpy as np
import torch

from superdiffusion.evaluation import (
    best_threshold,
    binary_scores,
    multiclass_scores,
    per_image_at_size,
    sweep,
    thresholds,
)


def test_dice_and_jaccard_known_by_hand():
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[0, :2] = 1  # 8 pixels
    prob = torch.zeros(2, 4, 4)
    prob[0, :1] = 0.9  # 4 true positives, 4 false negatives
    prob[0, 3, 0] = 0.8  # one false positive
    s = binary_scores(prob, target, 0.5)
    # image 0: dice = 8 / (8 + 1 + 4) ; image 1: both empty -> 1
    assert abs(s["dice_per_image"] - (8 / 13 + 1) / 2) < 1e-9
    assert abs(s["jaccard_per_image"] - (4 / 9 + 1) / 2) < 1e-9
    assert abs(s["dice_pooled"] - 8 / 13) < 1e-9 and abs(s["jaccard_pooled"] - 4 / 9) < 1e-9


def test_threshold_sweep_and_choice():
    grid = thresholds(0, 0.9, 0.02)
    assert len(grid) == 46 and grid[-1] == 0.9
    target = torch.tensor([[[1, 1, 0, 0]]])
    prob = torch.tensor([[[0.7, 0.75, 0.6, 0.1]]])
    best = best_threshold(sweep(prob, target, grid), "dice_per_image")
    assert best["dice_per_image"] == 1.0 and 0.6 <= best["threshold"] < 0.7


def test_multiclass_matches_binary_on_two_classes():
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 8, 8)
    target = (torch.rand(3, 8, 8) > 0.5).long()
    probs = logits.softmax(1)
    m = multiclass_scores(probs, target)
    b = binary_scores(probs[:, 1], target, 0.5)
    assert abs(m["dice_per_image"] - b["dice_per_image"]) < 1e-6


def test_scores_at_original_size():
    prob = torch.zeros(1, 4, 4)
    prob[0, :2] = 1.0
    mask = np.zeros((8, 8), np.uint8)
    mask[:4] = 255
    s = per_image_at_size(prob, [mask], 0.5)
    assert s["dice_per_image"] == 1.0
