"""Export a finished 2D run (TorchScript and ONNX) and measure how far the exported models
agree with `superdiffusion predict` on the same images: pixel agreement of the masks, the
largest probability difference and the file sizes.

    python benchmarks/export_check.py RUN IMAGES --out benchmarks/results/export-check.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from superdiffusion import api
from superdiffusion.data.folder import read_image
from superdiffusion.export import export


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/export-check.json"))
    args = parser.parse_args()
    images = sorted(args.images.glob("*.png"))[: args.count]
    work = Path(tempfile.mkdtemp())
    (work / "in").mkdir()
    for image in images:
        (work / "in" / image.name).symlink_to(image.resolve())
    api.predict(args.run, work / "in", work / "predicted", probabilities=True, device="cpu")
    expected = {i.stem: np.asarray(Image.open(work / "predicted" / f"{i.stem}.png")) > 0 for i in images}
    probability = {
        i.stem: np.asarray(Image.open(work / "predicted" / f"{i.stem}_probability.png")) / 65535 for i in images
    }
    result = {
        "command": f"python benchmarks/export_check.py {args.run} {args.images} --count {args.count}",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "images": len(images),
    }
    model = torch.jit.load(str(export(args.run, work / "model.pt")))
    agree, diff = [], []
    for image in images:
        mask, probs = model(torch.from_numpy(read_image(image, 3))[None])
        agree.append(float((mask[0].numpy().astype(bool) == expected[image.stem]).mean()))
        diff.append(float(np.abs(probs[0, 1:].sum(0).numpy() - probability[image.stem]).max()))
    result["torchscript"] = {
        "megabytes": (work / "model.pt").stat().st_size / 2**20,
        "pixel_agreement": float(np.mean(agree)),
        "images_identical": sum(a == 1.0 for a in agree),
        "max_probability_difference": max(diff),
    }
    try:
        import onnxruntime as ort
    except ImportError:
        result["onnx"] = "onnxruntime is not installed"
    else:
        path = export(args.run, work / "model.onnx", fmt="onnx")
        meta = json.loads(path.with_name(path.name + ".json").read_text())
        session = ort.InferenceSession(str(path))
        size = tuple(meta["size"])
        agree = []
        for image in images:
            x = torch.from_numpy(read_image(image, 3))[None]
            if tuple(x.shape[-2:]) != size:  # the ONNX graph takes the model size
                x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True)
            mask, _ = session.run(None, {"image": x.numpy()})
            if mask.shape[1:] == expected[image.stem].shape:
                agree.append(float((mask[0].astype(bool) == expected[image.stem]).mean()))
        result["onnx"] = {
            "megabytes": path.stat().st_size / 2**20,
            "pixel_agreement": float(np.mean(agree)) if agree else None,
            "images_compared": len(agree),
            "images_identical": sum(a == 1.0 for a in agree),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
