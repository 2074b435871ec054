"""One UNet for every method, 2D or 3D (``spatial_dims``), with optional parts.

- ``time_embedding``: the diffusion step ``t`` is embedded (sinusoidal features -> MLP)
  and added to the features after the first block, as in the paper's pathways (Sec. 3.1).
- ``aux_decoders``: extra decoders fed perturbed encoder features (CCT).
- ``deep_supervision``: one 3x3 head per decoder scale, fed perturbed features while
  training and upsampled (nearest) to the input size (URPC).
- ``level_dropout``: element-wise dropout rate of each encoder level (SSL4MIS's UNet uses
  0.05, 0.1, 0.2, 0.3, 0.5), instead of the channel dropout that ``dropout`` ramps up.
- ``sdf_head``: a tanh head regressing the signed distance map (DTC).
- ``checkpointing``: recompute block activations in the backward pass (memory for 3D).
- ``channels_last``: 2D weights and activations in NHWC memory format (faster on CPU).

Tensors are ``(B, C, H, W)`` in 2D and ``(B, C, H, W, D)`` in 3D. Inputs whose sides are
not multiples of ``2 ** (levels - 1)`` are padded internally and cropped back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONVT = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_DROP = {2: nn.Dropout2d, 3: nn.Dropout3d}


def _norm(kind: str, dims: int, channels: int) -> nn.Module:
    if kind == "batch":
        return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(channels)
    if kind == "instance":
        return (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    raise ValueError(f"model.norm must be batch, instance or group, got {kind!r}")


class ConvBlock(nn.Sequential):
    """(conv 3 -> norm -> LeakyReLU) x 2 with optional dropout between (channel-wise, or
    element-wise with ``elementwise``)."""

    def __init__(self, dims: int, cin: int, cout: int, norm: str, dropout: float = 0.0, elementwise: bool = False):
        conv = _CONV[dims]
        layers: list[nn.Module] = [
            conv(cin, cout, 3, padding=1, bias=False),
            _norm(norm, dims, cout),
            nn.LeakyReLU(0.01),
        ]
        if dropout > 0:
            layers.append(nn.Dropout(dropout) if elementwise else _DROP[dims](dropout))
        layers += [conv(cout, cout, 3, padding=1, bias=False), _norm(norm, dims, cout), nn.LeakyReLU(0.01)]
        super().__init__(*layers)


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of the diffusion step, ``(B,) -> (B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def run_block(block: nn.Module, x: torch.Tensor, recompute: bool) -> torch.Tensor:
    """Apply ``block``; with ``recompute`` its activations are recomputed in the backward
    pass instead of stored (gradient checkpointing: less memory, about a third more compute)."""
    if recompute and torch.is_grad_enabled():
        return checkpoint(block, x, use_reentrant=False)
    return block(x)


class Decoder(nn.Module):
    """Upsampling path; returns the logits and the features of every scale (coarse to fine)."""

    def __init__(self, dims: int, features: tuple[int, ...], out_channels: int, norm: str, dropout: float):
        super().__init__()
        self.recompute = False
        rev = features[::-1]
        self.ups = nn.ModuleList(_CONVT[dims](rev[i], rev[i + 1], 2, stride=2) for i in range(len(rev) - 1))
        self.blocks = nn.ModuleList(ConvBlock(dims, 2 * rev[i + 1], rev[i + 1], norm) for i in range(len(rev) - 1))
        self.dropout = _DROP[dims](dropout) if dropout > 0 else nn.Identity()
        self.head = _CONV[dims](features[0], out_channels, 1)

    def forward(self, skips: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.dropout(skips[-1])
        scales = []
        for up, block, skip in zip(self.ups, self.blocks, reversed(skips[:-1])):
            x = run_block(block, torch.cat([up(x), skip], dim=1), self.recompute)
            scales.append(x)
        return self.head(x), scales


@dataclass
class UNetOutput:
    """Everything one forward pass produced. ``logits``: ``(B, out_channels, *spatial)``."""

    logits: torch.Tensor
    aux: list[torch.Tensor] = field(default_factory=list)
    deep: list[torch.Tensor] = field(default_factory=list)
    sdf: torch.Tensor | None = None


def perturb_features(x: torch.Tensor, kind: str, dropout: float = 0.5) -> torch.Tensor:
    """The feature perturbations of CCT and URPC (SSL4MIS): multiplicative uniform noise in
    [-0.3, 0.3] drawn once per call and shared by the whole batch, feature dropout of the
    most activated region, or element-wise dropout with rate ``dropout``."""
    if kind == "noise":
        return x + x * torch.empty(x.shape[1:], device=x.device, dtype=x.dtype).uniform_(-0.3, 0.3)
    if kind == "feature_dropout":
        attention = x.mean(dim=1, keepdim=True)
        flat = attention.flatten(1)
        threshold = flat.max(dim=1).values * torch.empty(x.shape[0], device=x.device).uniform_(0.7, 0.9)
        keep = (attention < threshold.view(-1, *([1] * (x.dim() - 1)))).to(x.dtype)
        return x * keep
    if kind == "dropout":
        return F.dropout(x, dropout, training=True)
    raise ValueError(f"unknown feature perturbation {kind!r}")


class UNet(nn.Module):
    """UNet with ``len(features)`` levels. ``forward(x, t)`` returns the main logits;
    ``forward_all(x, t)`` returns a :class:`UNetOutput` with the optional heads."""

    AUX_PERTURBATIONS = ("noise", "dropout", "feature_dropout")  # CCT's aux decoders 1, 2, 3
    AUX_DROPOUT = 0.3  # CCT's dropout decoder
    # URPC's heads, coarse to fine: dropout 0.5, feature dropout, feature noise (the finest
    # perturbed head is next to the main output, as in the reference decoder)
    DEEP_PERTURBATIONS = ("dropout", "feature_dropout", "noise")
    DEEP_DROPOUT = 0.5

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        spatial_dims: int = 2,
        features: tuple[int, ...] = (16, 32, 64, 128, 256),
        norm: str = "batch",
        dropout: float = 0.0,
        time_embedding: bool = False,
        aux_decoders: int = 0,
        deep_supervision: bool = False,
        sdf_head: bool = False,
        checkpointing: bool = False,
        channels_last: bool = False,
        level_dropout: tuple[float, ...] | None = None,
    ):
        super().__init__()
        self.checkpointing = checkpointing
        self.channels_last = channels_last and spatial_dims == 2
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        features = tuple(int(f) for f in features)
        self.spatial_dims = spatial_dims
        self.multiple = 2 ** (len(features) - 1)
        self.blocks = nn.ModuleList()
        cin = in_channels
        if level_dropout is not None and len(level_dropout) != len(features):
            raise ValueError(f"level_dropout needs one rate per level ({len(features)}), got {level_dropout}")
        for i, f in enumerate(features):
            if level_dropout is not None:
                block = ConvBlock(spatial_dims, cin, f, norm, float(level_dropout[i]), elementwise=True)
            else:
                block = ConvBlock(spatial_dims, cin, f, norm, dropout=dropout * (i / max(1, len(features) - 1)))
            self.blocks.append(block)
            cin = f
        self.pool = _POOL[spatial_dims](2)
        self.time_mlp = None
        if time_embedding:
            dim = 4 * features[0]
            self.time_dim = dim
            self.time_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, features[0]))
        self.decoder = Decoder(spatial_dims, features, out_channels, norm, dropout)
        self.aux = nn.ModuleList(Decoder(spatial_dims, features, out_channels, norm, 0.0) for _ in range(aux_decoders))
        self.deep_heads = nn.ModuleList()
        if deep_supervision:
            rev = features[::-1]
            self.deep_heads = nn.ModuleList(
                _CONV[spatial_dims](rev[i + 1], out_channels, 3, padding=1) for i in range(len(rev) - 2)
            )
        self.sdf = (
            _CONV[spatial_dims](features[0], out_channels - 1 if out_channels > 1 else 1, 1) if sdf_head else None
        )

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        if self.channels_last:  # NHWC convolutions are about a third faster on CPU (benchmarks/run.py)
            x = x.contiguous(memory_format=torch.channels_last)
        sizes = list(x.shape[2:])
        pads: list[int] = []
        for s in reversed(sizes):
            pads += [0, (-s) % self.multiple]
        if any(pads):
            x = F.pad(x, pads)
        return x, sizes

    def _encode(self, x: torch.Tensor, t: torch.Tensor | None) -> list[torch.Tensor]:
        skips = []
        for i, block in enumerate(self.blocks):
            x = run_block(block, x if i == 0 else self.pool(x), self.checkpointing)
            if i == 0 and self.time_mlp is not None:
                if t is None:
                    raise ValueError("this UNet embeds the diffusion step: pass t")
                emb = self.time_mlp(timestep_features(t, self.time_dim))
                x = x + emb.view(*emb.shape, *([1] * self.spatial_dims))
            skips.append(x)
        return skips

    @staticmethod
    def _crop(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        return x[(..., *(slice(0, s) for s in sizes))]

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        x, sizes = self._pad(x)
        logits, _ = self.decoder(self._encode(x, t))
        return self._crop(logits, sizes)

    def forward_all(self, x: torch.Tensor, t: torch.Tensor | None = None) -> UNetOutput:
        x, sizes = self._pad(x)
        skips = self._encode(x, t)
        logits, scales = self.decoder(skips)
        out = UNetOutput(self._crop(logits, sizes))
        for k, decoder in enumerate(self.aux):
            kind = self.AUX_PERTURBATIONS[k % len(self.AUX_PERTURBATIONS)]
            aux_logits, _ = decoder([perturb_features(s, kind, self.AUX_DROPOUT) for s in skips])
            out.aux.append(self._crop(aux_logits, sizes))
        kinds = self.DEEP_PERTURBATIONS[-len(self.deep_heads) :] if self.deep_heads else ()
        for head, feat, kind in zip(self.deep_heads, scales[:-1], kinds):
            if self.training:
                feat = perturb_features(feat, kind, self.DEEP_DROPOUT)
            up = F.interpolate(head(feat), size=x.shape[2:], mode="nearest")
            out.deep.append(self._crop(up, sizes))
        if self.deep_heads:
            out.deep.append(out.logits)
        if self.sdf is not None:
            out.sdf = self._crop(torch.tanh(self.sdf(scales[-1])), sizes)
        return out


@dataclass(frozen=True)
class UNetFactory:
    """Builds the UNets of a method from the ``model`` section: every network of a run shares
    its dimensionality, widths, normalisation and memory options; a method adds only what is
    its own (inputs, outputs, heads, a time embedding)."""

    spatial_dims: int = 2
    features: tuple[int, ...] = (16, 32, 64, 128, 256)
    norm: str = "batch"
    dropout: float = 0.0
    checkpointing: bool = False
    channels_last: bool = True

    @property
    def levels(self) -> int:
        return len(self.features)

    def __call__(self, in_channels: int, out_channels: int, **options) -> UNet:
        options.setdefault("dropout", self.dropout)
        options.setdefault("checkpointing", self.checkpointing)
        options.setdefault("channels_last", self.channels_last)
        return UNet(in_channels, out_channels, self.spatial_dims, self.features, self.norm, **options)
