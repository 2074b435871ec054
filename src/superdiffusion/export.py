"""A trained 2D run as one self-contained model file: TorchScript, or ONNX (through
``torch.export``), with its preprocessing, threshold and class names inside.

The exported model takes an image batch ``(B, C, H, W)`` at any size: floats in [0, 1] (an
image's values divided by its type's range, 255 for 8 bits and 65535 for 16, as ``predict``
reads files), or the integers themselves (uint8, int16, int32: divided so inside). The
TorchScript model refuses floats outside [0, 1] (an 8-bit image not divided would otherwise
come back all foreground); the ONNX graph cannot check values. It returns
``(mask, probabilities)``: ``(B, H, W)`` uint8 class indices (1 = foreground for binary
tasks) and ``(B, K, H, W)`` class probabilities, both at the input's size. Inside: resize to
the run's ``data.size`` (bilinear, antialiased), the run's normalisation, the segmenter, and
back to the input size, exactly as ``superdiffusion predict`` does. A diffusion method's
pure-noise mask input is fixed at export time: the draw ``predict`` uses for a single image
(seed ``train.seed``, step ``eval.inference_t``), so the exported model is deterministic.
The ONNX graph takes any batch size but only the model size: resize before calling it.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import safefs
from .data.dataset import PER_IMAGE_MODES
from .errors import ConfigError, RunFolderError
from .inference import Segmenter


class SegmentationModel(nn.Module):
    """Raw images in [0, 1] -> (mask, probabilities) at the input's size (scripted)."""

    def __init__(self, network: nn.Module, size: list[int], mean: list[float], std: list[float], threshold: float,
                 class_names: list[str], per_image: str = "none", check_range: bool = True):  # fmt: skip
        super().__init__()
        self.check_range = check_range  # TorchScript: refuse floats outside [0, 1] (ONNX cannot check values)
        self.network = network
        self.size = size
        self.per_image = per_image  # data.normalize's per-image step: none, percentile or per_image
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.threshold = threshold
        self.class_names = class_names
        self.binary = len(class_names) == 2

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = image.shape[-2], image.shape[-1]
        if image.dtype == torch.uint8:  # integers: divided by their type's range, as predict reads files
            x = image.float() / 255.0
        elif image.dtype == torch.int16 or image.dtype == torch.int32:
            x = image.float() / 65535.0
        else:
            x = image.float()
            if self.check_range and (bool(x.amax() > 1.001) or bool(x.amin() < -0.001)):
                raise ValueError(
                    "superdiffusion model: the image's values lie outside [0, 1]; divide them by the type's range "
                    "(255 for 8-bit images, 65535 for 16-bit) or pass the integer tensor itself"
                )
        if h != self.size[0] or w != self.size[1]:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        if self.per_image == "per_image":  # each image's own mean and std, channel by channel
            x = (x - x.mean(dim=(2, 3), keepdim=True)) / x.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)
        elif self.per_image == "percentile":  # each image's 0.5-99.5 percentiles to [-1, 1]
            flat = x.flatten(2)
            low = torch.quantile(flat, 0.005, dim=2, keepdim=True).unsqueeze(-1)
            high = torch.quantile(flat, 0.995, dim=2, keepdim=True).unsqueeze(-1)
            x = (torch.minimum(torch.maximum(x, low), high) - low) / (high - low).clamp_min(1e-6) * 2 - 1
        probs = self.network((x - self.mean) / self.std)
        probs = F.interpolate(probs, size=[h, w], mode="bilinear", align_corners=False)
        if self.binary:
            mask = (probs[:, 1:].sum(1) > self.threshold).to(torch.uint8)
        else:
            mask = probs.argmax(1).to(torch.uint8)
        return mask, probs


def build(segmenter: Segmenter, trace: bool = True) -> SegmentationModel:
    """The exportable model of a loaded run, on the CPU, in eval mode; its network traced for
    TorchScript (``trace``), or left eager for ``torch.export`` (ONNX)."""
    size = list(segmenter.require_fixed_size("export"))
    network = segmenter.frozen_network()
    network.requires_grad_(False)  # a model to run, not to train: its outputs need no graph
    if trace:
        example = torch.zeros(2, segmenter.channels, *size)
        with torch.no_grad(), warnings.catch_warnings():
            # the network always sees the model size, so the UNet's size-dependent padding is a constant
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            network = torch.jit.trace(network, example, check_trace=False)
    mode = segmenter.cfg.data.normalize
    per_image = mode if mode in PER_IMAGE_MODES else "none"
    stats = segmenter.stats
    return SegmentationModel(
        network, size, stats["mean"], stats["std"], segmenter.threshold, list(segmenter.class_names), per_image,
        check_range=trace,
    ).eval()


def metadata(cfg, state: dict[str, Any], model: SegmentationModel, fmt: str) -> dict[str, Any]:
    size = "any H, W" if fmt == "torchscript" else f"H, W = {model.size[0]}, {model.size[1]} (resize first)"
    return {
        "method": state["method"],
        "format": fmt,
        "input": (
            f"(B, C, H, W), {size}: float in [0, 1] (the image's values / its type's range: 255 for 8-bit, 65535 for "
            "16-bit images), or the uint8, int16 or int32 values themselves"
            + ("; floats outside [0, 1] are refused" if model.check_range else "; the values are not checked")
        ),
        "outputs": ["mask (B, H, W) uint8 class indices", "probabilities (B, K, H, W) float"],
        "channels": state["data"]["channels"],
        "size": model.size,
        "normalisation": {
            "per_image": model.per_image,
            "mean": state["data"]["stats"]["mean"],
            "std": state["data"]["stats"]["std"],
        },
        "threshold": model.threshold,
        "class_names": model.class_names,
        "dataset": cfg.data.name,
        "labeled_percent": cfg.data.labeled_percent,
        "seed": cfg.train.seed,
    }


def export(run_dir: str | Path, out: str | Path, fmt: str = "torchscript", force: bool = False) -> Path:
    """Write ``run_dir``'s model to ``out`` (``.pt`` TorchScript, or ``.onnx``), with a
    ``.json`` of its metadata beside it. Returns the model's path."""
    if fmt not in ("torchscript", "onnx"):
        raise ConfigError(f"--format must be torchscript or onnx, got {fmt!r}")
    out = Path(out)
    info = out.with_name(out.name + ".json")
    for path in (out, info):
        safefs.refuse_link(path)  # a link, dangling or not, is never written through
        if path.exists() and not force:
            raise RunFolderError(f"{path} already exists; pass --force to replace it")
    segmenter = Segmenter.from_run(run_dir, "cpu")
    model = build(segmenter, trace=fmt == "torchscript")
    meta = metadata(segmenter.cfg, segmenter.state, model, fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torchscript":
        scripted = torch.jit.script(model)
        with safefs.atomic(out) as handle:
            torch.jit.save(scripted, handle, _extra_files={"superdiffusion.json": json.dumps(meta)})
    else:
        _onnx(model, segmenter.channels, meta, out)
    safefs.write_text(info, json.dumps(meta, indent=2) + "\n")
    return out


ONNX_TORCH = (2, 13)  # the oldest torch whose exporter was tested to convert these models (2.9 fails in torch.export)


def _onnx(model: SegmentationModel, channels: int, meta: dict[str, Any], out: Path) -> None:
    have = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    if have < ONNX_TORCH:
        raise ConfigError(
            f"ONNX export needs torch >= {ONNX_TORCH[0]}.{ONNX_TORCH[1]} (this is {torch.__version__}); "
            "upgrade torch or use --format torchscript"
        )
    try:
        import onnx
    except ImportError:
        raise ConfigError(
            "ONNX export needs the onnx and onnxscript packages: pip install 'superdiffusion[onnx]'"
        ) from None
    example = torch.rand(2, channels, *model.size)  # not 1: an example batch of 1 would fix the size
    batch = torch.export.Dim("batch", min=1, max=1024)
    try:
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=["image"],
            output_names=["mask", "probabilities"],
            dynamic_shapes={"image": {0: batch}},
        )
    except Exception as err:  # the exporter's own message says which operator it could not convert
        raise ConfigError(
            f"ONNX export failed ({type(err).__name__}: {str(err).splitlines()[0]}); use --format torchscript"
        ) from None
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as scratch:  # the package's own folder
        first = Path(scratch) / "model.onnx"
        program.save(str(first))
        proto = onnx.load(str(first))
    onnx.helper.set_model_props(proto, {"superdiffusion": json.dumps(meta)})
    safefs.write_bytes(out, proto.SerializeToString())
