"""Dual-task consistency (Luo et al., AAAI 2021), as the authors' code defines it: a
segmentation head and a tanh signed-distance head whose transform ``sigmoid(-k sdf)`` must
agree with the segmentation.

- Labeled loss: foreground soft Dice (squared denominators, pooled over the batch) plus
  0.3 x the MSE between the distance head and the normalised signed distance of the label.
- Consistency on every item of the batch: ``mean((sigmoid(-1500 sdf) - p_fg)^2)``, weighted by
  the sigmoid ramp to 1.0 (the reference's consistency weight).

Differences: the segmentation is a C-class softmax (the reference: one sigmoid channel);
an empty or all-foreground label gives a zero distance map (the reference leaves zeros for
an empty one and divides by zero for a full one).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..method_settings import DTCSettings
from .base import Batch, Method, StepContext, register


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Normalised signed distance of a binary mask: -1..0 inside, 0 on the boundary,
    0..1 outside (each side scaled by its own maximum). The boundary is the object pixels
    with a background neighbour (the reference's ``find_boundaries(mode='inner')``): an object
    pixel on the image edge is not boundary for that reason alone. An empty or full mask
    gives zeros."""
    mask = mask.astype(bool)
    out = np.zeros(mask.shape, dtype=np.float32)
    if not mask.any() or mask.all():
        return out
    outside = ndimage.distance_transform_edt(~mask)
    inside = ndimage.distance_transform_edt(mask)
    boundary = mask & ~ndimage.binary_erosion(mask, border_value=1)
    out = outside / outside.max() - inside / inside.max()
    out[boundary] = 0
    return out.astype(np.float32)


def batch_signed_distance(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B, *S)`` class indices -> ``(B, C-1, *S)`` signed distances of each foreground class."""
    arr = labels.cpu().numpy()
    maps = [[signed_distance(arr[b] == c) for c in range(1, num_classes)] for b in range(arr.shape[0])]
    return torch.from_numpy(np.asarray(maps)).to(labels.device)


@register
class DualTaskConsistency(Method):
    name = "dtc"
    in_table1 = False  # the paper compares DTC on volumes (Table 2)
    description = "dual-task consistency: segmentation + signed-distance heads kept consistent"
    default_supervised_loss = "dice"

    Settings = DTCSettings

    def __init__(self, settings, unets, channels, num_classes):
        super().__init__(settings, unets, channels, num_classes)
        self.net = self.unets(channels, num_classes, sdf_head=True)

    def losses(self, batch: Batch, ctx: StepContext):
        out = self.net.forward_all(batch.images)
        losses = {"sup": self.labeled_loss(out.logits, batch)}
        if batch.has_labeled:
            lab = batch.labeled
            target = batch_signed_distance(batch.labels[lab], self.num_classes)
            losses["sdf"] = self.params.sdf_weight * F.mse_loss(out.sdf[lab], target)
        mask_from_sdf = torch.sigmoid(-self.params.sharpness * out.sdf)
        foreground = out.logits.softmax(1)[:, 1:]
        losses["consistency"] = F.mse_loss(mask_from_sdf, foreground)
        return losses

    def segmenter(self):
        return self.net
