"""`superdiffusion export`: the shipped model gives the masks `predict` gives."""

import json

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image

from superdiffusion import api
from superdiffusion.data.folder import read_image
from superdiffusion.errors import ConfigError, RunFolderError
from superdiffusion.export import ONNX_TORCH, export

FAST = ["train.epochs=1", "train.steps_per_epoch=2", "method.pretrain_epochs=0", "method.rounds=1"]


@pytest.mark.parametrize(
    "method, normalize", [("superdiffusion", "minmax"), ("cps", "minmax"), ("cps", "percentile"), ("cps", "per_image")]
)
def test_exported_model_gives_the_masks_predict_gives(tmp_path, pair_folder, method, normalize):
    run = tmp_path / "run"
    overrides = [
        f"data.root={pair_folder}",
        f"method={method}",
        "data.labeled_percent=50",
        f"data.normalize={normalize}",
    ]
    api.train(tiny_config(*FAST[:2], *(FAST[2:] if method == "superdiffusion" else []), *overrides), run)
    images = sorted((pair_folder / "images").glob("*.png"))
    predicted = tmp_path / "predicted"
    api.predict(run, pair_folder / "images", predicted, probabilities=True, device="cpu")
    path = export(run, tmp_path / "model.pt")
    model = torch.jit.load(str(path))
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    assert meta["class_names"] == ["background", "foreground"] and meta["size"] == [32, 32]
    assert model.threshold == pytest.approx(json.loads((run / "results.json").read_text())["selection"]["threshold"])
    for image in images:  # one at a time, at their own size (24x20, not the model's 32x32)
        x = torch.from_numpy(read_image(image, meta["channels"]))[None]
        mask, probs = model(x)
        expected = np.asarray(Image.open(predicted / f"{image.stem}.png")) > 0
        assert mask.shape == (1, *expected.shape)
        assert np.array_equal(mask[0].numpy().astype(bool), expected)
        saved = np.asarray(Image.open(predicted / f"{image.stem}_probability.png")).astype(np.float64) / 65535
        assert np.abs(probs[0, 1:].sum(0).numpy() - saved).max() < 1e-4  # the 16-bit PNG's rounding
    with pytest.raises(RunFolderError, match="already exists"):
        export(run, tmp_path / "model.pt")
    if method == "cps" and normalize == "minmax":  # the raw 8-bit values: divided inside; 0-255 floats: refused
        raw = torch.from_numpy(np.asarray(Image.open(images[0]).convert("RGB" if meta["channels"] == 3 else "L")))
        raw = raw.permute(2, 0, 1)[None] if raw.dim() == 3 else raw[None, None]
        scaled = torch.from_numpy(read_image(images[0], meta["channels"]))[None]
        assert torch.equal(model(raw)[0], model(scaled)[0])
        with pytest.raises(Exception, match="outside \\[0, 1\\]"):
            model(raw.float())
        assert "uint8" in meta["input"] and "refused" in meta["input"] and "8-bit / 255" not in meta["input"]


def test_onnx_export_agrees_with_predict(tmp_path, pair_folder):
    ort = pytest.importorskip("onnxruntime")
    run = tmp_path / "run"
    overrides = [f"data.root={pair_folder}", "method=superdiffusion", "data.labeled_percent=50", "data.size=[24, 20]"]
    api.train(tiny_config(*FAST, *overrides), run)
    if tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) < ONNX_TORCH:  # the oldest supported torch
        with pytest.raises(ConfigError, match="ONNX export needs torch >= 2.13"):
            export(run, tmp_path / "model.onnx", fmt="onnx")
        return
    predicted = tmp_path / "predicted"
    api.predict(run, pair_folder / "images", predicted, device="cpu")
    path = export(run, tmp_path / "model.onnx", fmt="onnx")
    session = ort.InferenceSession(str(path))
    images = sorted((pair_folder / "images").glob("*.png"))
    batch = np.stack([read_image(image, 3) for image in images]).astype(np.float32)  # 24x20: the model size
    masks, probs = session.run(None, {"image": batch})
    assert probs.shape == (len(images), 2, 24, 20)
    for image, mask, p in zip(images, masks, probs):
        expected = np.asarray(Image.open(predicted / f"{image.stem}.png")) > 0
        # the noise input is the one-image draw; ONNX Runtime's kernels differ in the last bits
        near = np.abs(p[1] - json.loads(path.with_name(path.name + ".json").read_text())["threshold"]) < 1e-4
        assert np.array_equal(mask.astype(bool)[~near], expected[~near])
