"""The paper's 2D/3D augmentations (random flips and 90-degree rotations), applied to
images and masks together, batched on the tensors' device from an explicit generator."""

from __future__ import annotations

import torch


def flip_rotate(
    images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: random flip of each spatial axis and a random quarter turn of the first
    two spatial axes (half turns only when they differ in length).

    ``images``: ``(B, C, *S)``; ``masks``: ``(B, *S)``. Returns new tensors.
    """
    dims = images.dim() - 2
    b = images.shape[0]
    flips = torch.rand(b, dims, generator=generator) < 0.5
    square = images.shape[2] == images.shape[3]
    turns = (
        torch.randint(0, 4, (b,), generator=generator) if square else 2 * torch.randint(0, 2, (b,), generator=generator)
    )
    out_i, out_m = [], []
    for k in range(b):
        img, msk = images[k], masks[k]
        axes = [d for d in range(dims) if flips[k, d]]
        if axes:
            img = img.flip([a + 1 for a in axes])
            msk = msk.flip(axes)
        if turns[k]:
            img = img.rot90(int(turns[k]), (1, 2))
            msk = msk.rot90(int(turns[k]), (0, 1))
        out_i.append(img)
        out_m.append(msk)
    return torch.stack(out_i).contiguous(), torch.stack(out_m).contiguous()
