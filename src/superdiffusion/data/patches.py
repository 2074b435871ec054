"""Images of their own sizes (volumes, or 2D images with ``data.size`` null): random training
patches, and stacking with zero padding for scoring."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_patches(
    volumes: list[torch.Tensor], labels: list[torch.Tensor], size: tuple[int, ...], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One random patch per volume (volumes smaller than ``size`` are zero-padded)."""
    out_i, out_l = [], []
    for img, lab in zip(volumes, labels):
        pads = []
        for s, p in zip(reversed(img.shape[1:]), reversed(size)):
            pads += [0, max(0, p - s)]
        if any(pads):
            img, lab = F.pad(img, pads), F.pad(lab, pads)
        starts = [int(torch.randint(0, s - p + 1, (1,), generator=generator)) for s, p in zip(img.shape[1:], size)]
        region = tuple(slice(a, a + p) for a, p in zip(starts, size))
        out_i.append(img[(slice(None), *region)])
        out_l.append(lab[region])
    return torch.stack(out_i), torch.stack(out_l)


def pad_stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stack tensors of different trailing sizes, zero-padded to the largest."""
    shape = [max(t.shape[d] for t in tensors) for d in range(tensors[0].dim())]
    out = tensors[0].new_zeros((len(tensors), *shape))
    for k, t in enumerate(tensors):
        out[(k, *(slice(0, s) for s in t.shape))] = t
    return out
