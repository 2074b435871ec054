import csv
import re
import shutil
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image, ImageSequence
from torch import nn

from superdiffusion import api
from superdiffusion.data.volumes import read_volume, scan_volumes
from superdiffusion.errors import DataError
from superdiffusion.inference import predict_tensor
from superdiffusion.methods.base import Prediction

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "Hippocampus3D"
TINY3D = [
    "data.spatial_dims=3",
    "data.patch_size=[16, 16, 16]",
    "model.features=[8, 16, 32]",
    "train.epochs=2",
    "method.rounds=1",
    "method.pretrain_epochs=1",
    "data.labeled_percent=50",
    "data.normalize=percentile",
    "data.val_fraction=0.2",
]

BASELINE3D = [o for o in TINY3D if not o.startswith("method.")]


def write_volumes(root: Path, n=8, shape=(32, 32, 24), spacing=(1.5, 1.0, 2.0)):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    affine = np.diag([*spacing, 1.0])
    for i in range(n):
        label = np.zeros(shape, np.uint8)
        label[8 : 20 + i % 3, 6:18, 5:15] = 1
        image = rng.normal(0, 0.3, shape).astype(np.float32) + label * 2
        nib.save(nib.Nifti1Image(image, affine), str(root / "images" / f"v{i}.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(root / "labels" / f"v{i}.nii.gz"))
    return root


def test_volumes_train_predict_and_surface_metrics(tmp_path):
    root = write_volumes(tmp_path / "vols")
    cfg = tiny_config(*TINY3D, f"data.root={root}", "data.name=synthetic3d")
    results = api.train(cfg, tmp_path / "run")
    assert set(results["test"]) == {"resized", "surface"}
    # a bright box is found after a few steps; predicting every voxel foreground scores 0.12
    assert results["test"]["resized"]["dice_per_image"] > 0.8, results["test"]
    with open(tmp_path / "run" / "test_per_case.csv", newline="") as handle:
        cases = list(csv.DictReader(handle))
    assert len(cases) == results["counts"]["test"] and set(cases[0]) == {"id", "dice", "jaccard", "hd95", "asd"}
    assert np.mean([float(c["dice"]) for c in cases]) == pytest.approx(results["test"]["resized"]["dice_per_image"])
    hd = [float(c["hd95"]) for c in cases if c["hd95"] != "nan"]
    assert np.mean(hd) == pytest.approx(results["test"]["surface"]["hd95"])
    written = api.predict(tmp_path / "run", root / "images" / "v0.nii.gz", tmp_path / "pred", samples=2)
    out = nib.load(str(written[0]))
    assert out.shape == (32, 32, 24) and np.allclose(out.affine, np.diag([1.5, 1.0, 2.0, 1.0]))
    assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1} and len(written) == 2
    written = api.predict(tmp_path / "run", root, tmp_path / "pred_root")  # the dataset's folder: not its labels
    assert sorted(p.relative_to(tmp_path / "pred_root").as_posix() for p in written) == [
        f"images/v{i}.nii.gz" for i in range(8)
    ]

    # the same volume as NRRD in LPS space (x and y axes pointing the other way, an origin):
    # the predicted NIfTI (RAS) must overlay it in world coordinates, voxel for voxel
    import nrrd

    image = np.asarray(nib.load(str(root / "images" / "v0.nii.gz")).dataobj)
    origin = np.array([-40.0, 25.0, 7.0])  # LPS, millimetres
    header = {
        "space": "left-posterior-superior",
        "space directions": np.diag([-1.5, -1.0, 2.0]),
        "space origin": origin,
    }
    nrrd.write(str(tmp_path / "v0.nrrd"), image, header)
    from_nrrd = api.predict(tmp_path / "run", tmp_path / "v0.nrrd", tmp_path / "pred_nrrd", samples=2)[0]
    out_nrrd = nib.load(str(from_nrrd))
    assert out_nrrd.shape == image.shape
    assert np.array_equal(np.asarray(out_nrrd.dataobj), np.asarray(out.dataobj))  # same voxels, same prediction
    marked = np.array([14, 12, 10])  # inside the bright box, predicted foreground
    assert np.asarray(out_nrrd.dataobj)[tuple(marked)] == 1
    lps = origin + np.diag([-1.5, -1.0, 2.0]) @ marked  # where the NRRD header puts the voxel
    ras = lps * np.array([-1, -1, 1])  # the same point in NIfTI's RAS convention
    assert np.allclose(out_nrrd.affine @ [*marked, 1], [*ras, 1])


class Pointwise(nn.Module):
    """A method stand-in whose prediction at a voxel depends on that voxel only."""

    num_classes, stochastic_inference, name = 2, False, "pointwise"

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 1)

    def predict(self, x, samples=1, generator=None, step=None):
        return Prediction(self.conv(x).softmax(1))


def test_sliding_window_equals_whole_volume_for_a_pointwise_model():
    torch.manual_seed(0)
    model = Pointwise()
    volume = torch.randn(1, 1, 32, 32, 24)
    whole = model.predict(volume).probs
    windowed = predict_tensor(model, volume, torch.device("cpu"), 4, 1, window=(16, 16, 12), overlap=0.5).probs
    assert torch.allclose(whole, windowed, atol=1e-5)


def test_hdf5_and_nrrd_volumes(tmp_path):
    import nrrd

    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    (tmp_path / "case1").mkdir()
    with h5py.File(tmp_path / "case1" / "mri_norm2.h5", "w") as f:
        f["image"] = data
        f["label"] = (data > 60).astype(np.uint8)
    (tmp_path / "outside" / "case9").mkdir(parents=True)
    shutil.copy(tmp_path / "case1" / "mri_norm2.h5", tmp_path / "outside" / "case9")
    (tmp_path / "data").mkdir()
    (tmp_path / "case1").rename(tmp_path / "data" / "case1")
    (tmp_path / "data" / "case9").symlink_to(tmp_path / "outside" / "case9")  # a linked folder is not entered
    pairs = scan_volumes(tmp_path / "data")
    assert [p.id for p in pairs] == ["case1"]
    assert np.array_equal(read_volume(pairs[0].image, "label").array, (data > 60).astype(np.uint8))
    nrrd.write(
        str(tmp_path / "v.nrrd"),
        data,
        {"space directions": np.diag([0.6, 0.6, 2.5]), "space": "left-posterior-superior"},
    )
    vol = read_volume(tmp_path / "v.nrrd")
    assert np.array_equal(vol.array, data) and np.allclose(vol.spacing, (0.6, 0.6, 2.5))


def test_bad_volumes_are_named(tmp_path):
    root = write_volumes(tmp_path / "vols", n=3)
    (root / "images" / "v1.nii.gz").write_bytes(b"not a nifti")
    cfg = tiny_config(*TINY3D, f"data.root={root}")
    from superdiffusion.data import build_data

    with pytest.raises(DataError, match=r"v1.nii.gz: cannot read volume"):
        build_data(cfg.data, 0)
    (root / "labels" / "v2.nii.gz").unlink()  # a volume without a label: unlabeled
    assert scan_volumes(root)[2].label is None
    for label in (root / "labels").iterdir():
        label.unlink()
    with pytest.raises(DataError, match=r"labels: no label volumes"):
        scan_volumes(root)


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data/Hippocampus3D")
def test_real_hippocampus_volumes_through_the_whole_path(tmp_path):
    root = tmp_path / "hippo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for path in sorted((SHARED / "images").glob("*.nii.gz"))[:10]:
        shutil.copy(path, root / "images" / path.name)  # a link out of the data folder would be refused
        shutil.copy(SHARED / "labels" / path.name, root / "labels" / path.name)
    cfg = tiny_config(
        *TINY3D, f"data.root={root}", "data.patch_size=[32, 32, 32]", "train.epochs=1", "method.pretrain_epochs=0"
    )
    results = api.train(cfg, tmp_path / "run")
    assert results["counts"] == {"labeled": 3, "unlabeled": 3, "val": 2, "test": 2}
    assert np.isfinite(results["test"]["resized"]["dice_per_image"])
    written = api.predict(tmp_path / "run", root / "images", tmp_path / "pred")
    assert len(written) == 10
    first = nib.load(str(written[0]))
    assert first.shape == nib.load(str(root / "images" / written[0].name)).shape


def test_one_normalisation_vocabulary_for_volumes(tmp_path):
    """zscore is the training set's mean and std for volumes as for 2D images (a bright
    scanner stays bright); per_image is each volume's own; prediction applies the saved ones."""
    from superdiffusion.data import build_data
    from superdiffusion.inference import predict_volume_file
    from superdiffusion.methods import build_method

    root = write_volumes(tmp_path / "vols")
    for i in range(0, 8, 2):  # every other volume from a scanner ten times brighter
        img = nib.load(str(root / "images" / f"v{i}.nii.gz"))
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 10 + 5, img.affine), str(root / "images" / f"v{i}.nii.gz"))
    common = [*BASELINE3D, f"data.root={root}", "method=supervised"]
    cfg = tiny_config(*common, "data.normalize=zscore")
    data = build_data(cfg.data, 0)
    training = data.labeled.ids + data.unlabeled.ids
    raw = np.concatenate([np.asarray(nib.load(str(root / "images" / f"{i}.nii.gz")).dataobj).ravel() for i in training])
    assert data.stats["mean"][0] == pytest.approx(raw.mean(), rel=1e-5)
    assert data.stats["std"][0] == pytest.approx(raw.std(ddof=1), rel=1e-5)
    means = {i: float(v.mean()) for i, v in zip(data.labeled.ids, data.labeled.images)}
    assert max(means.values()) - min(means.values()) > 1  # the scanners stay apart
    per_image = build_data(tiny_config(*common, "data.normalize=per_image").data, 0)
    for volume in per_image.labeled.images + per_image.test.images:
        assert float(volume.mean()) == pytest.approx(0, abs=1e-4) and float(volume.std()) == pytest.approx(1, abs=1e-3)

    torch.manual_seed(0)
    method = build_method(cfg, 1, 2, 3).eval()
    case = data.test.ids[0]
    written = predict_volume_file(
        method, cfg, data.info(), root / "images" / f"{case}.nii.gz", tmp_path, 1, 0.5, torch.device("cpu"), True
    )
    saved = np.asarray(nib.load(str(written[-1])).dataobj)
    direct = predict_tensor(method, data.test.images[0][None], torch.device("cpu"), 64, 1, (16, 16, 16), 0.5, 0)
    assert np.allclose(saved, direct.probs[0, 1].numpy(), atol=1e-5)


def test_a_format_1_volume_run_with_zscore_reads_as_per_image(tmp_path):
    """Before format 2, zscore meant each volume's own z-score for volumes: such a checkpoint
    is read under that meaning's new name, and resuming it under zscore is refused."""
    from superdiffusion import checkpoint
    from superdiffusion.errors import RunFolderError
    from superdiffusion.runfolder import RunFolder

    cfg = tiny_config(*BASELINE3D, "method=supervised", "data.normalize=zscore")
    folder = RunFolder(tmp_path / "old")
    state = {"config": cfg.to_dict(), "format": 1, "method": "supervised"}
    folder.write_config(cfg)
    folder.checkpoints.mkdir(parents=True)
    checkpoint.save_atomic(state, folder.checkpoint_path("last"))
    assert folder.load_checkpoint()["config"]["data"]["normalize"] == "per_image"
    with pytest.raises(RunFolderError, match=r"changes data.normalize \(per_image -> zscore\)"):
        folder.prepare(cfg, resume=True, force=False)
    state["format"] = 2
    checkpoint.save_atomic(state, folder.checkpoint_path("last"))
    assert folder.load_checkpoint()["config"]["data"]["normalize"] == "zscore"


def test_2d_images_kept_as_nifti_train_as_2d_and_predict_back_to_nifti(tmp_path, monkeypatch):
    """A 2D dataset stored as NIfTI slices ((H, W, 1) images, (H, W) labels, as medical 2D sets
    often are) is planned as 2D, trains, and predicts NIfTI in the input's shape and affine."""
    from superdiffusion.config import resolve
    from superdiffusion.plan import Planner, plan_for

    root = tmp_path / "slices"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    affine = np.diag([0.8, 0.8, 6.0, 1.0])
    for i in range(10):
        label = np.zeros((40, 36), np.uint8)
        label[10 : 24 + i % 3, 8:22] = 1
        image = (rng.normal(300, 40, (40, 36)) + 500.0 * label).astype(np.int16)  # an MR slice's integer values
        nib.save(nib.Nifti1Image(image[..., None], affine), str(root / "images" / f"s{i}.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(root / "labels" / f"s{i}.nii.gz"))
    plan = plan_for(root, cache=False)
    assert plan.settings["data.spatial_dims"] == 2 and plan.settings["data.mask_mode"] == "binary"
    assert plan.fingerprint["size_median"] == [40, 36]
    cfg = resolve(
        [f"data.root={root}", "data.size=[32, 32]", "model.features=[8, 16, 32]", "method=supervised",
         "train.epochs=3", "train.steps_per_epoch=4", "train.batch_size=4", "train.labeled_batch_size=4",
         "data.labeled_percent=100", "train.lr=0.01"],
        planner=Planner(cache=False),
    )  # fmt: skip
    results = api.train(cfg, tmp_path / "run")
    assert results["test"]["resized"]["dice_per_image"] > 0.5, results["test"]
    written = api.predict(tmp_path / "run", root / "images", tmp_path / "pred", probabilities=True)
    assert sorted(p.name for p in written)[:2] == ["s0.nii.gz", "s0_probability.nii.gz"]
    out = nib.load(str(tmp_path / "pred" / "s0.nii.gz"))
    assert out.shape == (40, 36, 1) and np.allclose(out.affine, affine)
    assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1}
    truth = np.asarray(nib.load(str(root / "labels" / "s0.nii.gz")).dataobj)
    predicted = np.asarray(out.dataobj)[..., 0]
    assert 2 * (predicted * truth).sum() / (predicted.sum() + truth.sum()) > 0.5  # found in place, not transposed
    # a volume of such slices, given to the 2D model: segmented slice by slice along its last axis
    stack = np.concatenate([np.asarray(nib.load(root / "images" / f"s{i}.nii.gz").dataobj) for i in range(3)], axis=2)
    nib.save(nib.Nifti1Image(stack, affine), str(tmp_path / "volume.nii.gz"))
    written = api.predict(tmp_path / "run", tmp_path / "volume.nii.gz", tmp_path / "pred-volume", probabilities=True)
    assert [p.name for p in written] == ["volume.nii.gz", "volume_probability.nii.gz"]
    out = nib.load(str(tmp_path / "pred-volume" / "volume.nii.gz"))
    assert out.shape == (40, 36, 3) and np.allclose(out.affine, affine)
    for i in range(3):
        one = np.asarray(nib.load(str(tmp_path / "pred" / f"s{i}.nii.gz")).dataobj)[..., 0]
        assert np.array_equal(np.asarray(out.dataobj)[..., i], one)  # as the slice's own file predicts
    from superdiffusion.data import volumes

    decoded = []
    real = volumes._read_array
    monkeypatch.setattr(volumes, "_read_array", lambda path, *a: decoded.append(path.name) or real(path, *a))
    api.predict(tmp_path / "run", root / "images" / "s0.nii.gz", tmp_path / "pred-once")
    api.predict(tmp_path / "run", tmp_path / "volume.nii.gz", tmp_path / "pred-once")
    assert decoded == ["s0.nii.gz", "volume.nii.gz"]  # each file decoded once (a DICOM's decoding is slow)

    import itk  # the same slice as a 2D MetaImage (ITK's arrays run y, x; its space is LPS)

    slice_ = itk.image_from_array(
        np.ascontiguousarray(np.asarray(nib.load(root / "images" / "s0.nii.gz").dataobj)[..., 0].T)
    )
    slice_.SetSpacing([0.8, 0.8])
    itk.imwrite(slice_, str(tmp_path / "s0.mha"))
    out = nib.load(str(api.predict(tmp_path / "run", tmp_path / "s0.mha", tmp_path / "pred_mha")[0]))
    assert out.shape == (40, 36) and np.allclose(out.affine, np.diag([-0.8, -0.8, 1.0, 1.0]))
    assert np.array_equal(np.asarray(out.dataobj), predicted)
    itk.imwrite(slice_, str(tmp_path / "s0.DCM"))  # a 2D DICOM file (X-ray, ultrasound), read by ITK too
    out = nib.load(str(api.predict(tmp_path / "run", tmp_path / "s0.DCM", tmp_path / "pred_dcm")[0]))
    assert out.shape == (40, 36, 1) and np.array_equal(np.asarray(out.dataobj)[..., 0], predicted)  # one frame
    dicom = tmp_path / "dicom"  # a 2D dataset of DICOM images with PNG masks
    (dicom / "images").mkdir(parents=True)
    shutil.copytree(root / "labels", dicom / "masks")
    for k in range(10):
        plane = np.asarray(nib.load(root / "images" / f"s{k}.nii.gz").dataobj)[..., 0]
        itk.imwrite(itk.image_from_array(np.ascontiguousarray(plane.T)), str(dicom / "images" / f"s{k}.dcm"))
    plan = plan_for(dicom, cache=False)
    assert plan.settings["data.spatial_dims"] == 2 and plan.fingerprint["size_median"] == [40, 36]


def test_volumes_that_would_not_fit_in_memory_stop_before_reading(tmp_path, monkeypatch):
    """Eight 32x32x24 volumes: 8 x 24,576 voxels x (4 + 1) bytes = 983,040 bytes (a float32
    channel, one-byte labels)."""
    from superdiffusion.config import DataConfig
    from superdiffusion.data import build_data, dataset

    root = write_volumes(tmp_path / "vols")
    cfg = DataConfig(root=str(root), spatial_dims=3, patch_size=[16, 16, 16])
    monkeypatch.setattr(dataset, "available_memory", lambda: 983_039)
    with pytest.raises(DataError, match=r"vols: its 8 volumes take about 1 MB in memory"):
        build_data(cfg, seed=0)
    monkeypatch.setattr(dataset, "available_memory", lambda: 983_040)
    data = build_data(cfg, seed=0)
    assert data.channels == 1 and {m.dtype for m in data.labeled.masks + data.test.masks} == {torch.uint8}


def _as_metaimage(nifti: Path, target: Path, suffix: str) -> None:
    """``nifti`` written again as a MetaImage file ``target`` (ITK's arrays run z, y, x)."""
    import itk

    image = nib.load(str(nifti))
    out = itk.image_from_array(np.ascontiguousarray(np.asarray(image.dataobj).transpose(2, 1, 0)))
    out.SetSpacing([float(v) for v in image.header.get_zooms()[:3]])
    itk.imwrite(out, str(target.with_name(target.name + suffix)))


def test_metaimage_volumes_read_as_their_nifti_twins(tmp_path):
    """Grand-challenge and nnU-Net sets often come as MetaImage: images as .mha, labels as
    .mhd headers beside their .raw voxels. They read voxel for voxel as the same volumes in
    NIfTI, with their spacing."""
    from superdiffusion.config import DataConfig
    from superdiffusion.data import build_data
    from superdiffusion.data.volumes import stored_shape

    nifti = write_volumes(tmp_path / "nii", n=5)
    meta = tmp_path / "mha"
    for sub, suffix in (("images", ".mha"), ("labels", ".mhd")):
        (meta / sub).mkdir(parents=True)
        for path in sorted((nifti / sub).iterdir()):
            _as_metaimage(path, meta / sub / path.name.removesuffix(".nii.gz"), suffix)
    assert stored_shape(meta / "images" / "v0.mha") == (32, 32, 24) and (meta / "labels" / "v0.raw").is_file()
    a, b = (build_data(DataConfig(root=str(r), spatial_dims=3, patch_size=[16, 16, 16]), 0) for r in (nifti, meta))
    for name in ("labeled", "unlabeled", "val", "test"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.ids == y.ids and all(torch.equal(i, j) for i, j in zip(x.images, y.images))
        assert all(torch.equal(i, j) for i, j in zip(x.masks or [], y.masks or []))
        assert [v.spacing for v in y.geometry] == [(1.5, 1.0, 2.0)] * len(y)


def test_a_detached_header_is_read_only_with_its_voxels_beside_it(tmp_path, monkeypatch):
    """An .mhd or .nhdr header names the file holding its voxels, which could be anywhere: no
    input outside the data folder is read."""
    import nrrd

    from superdiffusion.data.volumes import read_volume

    secret = tmp_path / "elsewhere" / "secret.raw"
    secret.parent.mkdir()
    secret.write_bytes(np.zeros(8 * 8 * 4, np.uint8).tobytes())
    folder = tmp_path / "data" / "images"
    folder.mkdir(parents=True)
    (folder / "a.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 8 8 4\nElementType = MET_UCHAR\n"
        "ElementDataFile = ../../elsewhere/secret.raw\n"
    )
    with pytest.raises(DataError, match=r"a.mhd: its voxels are in '../../elsewhere/secret.raw', outside the header"):
        read_volume(folder / "a.mhd")
    nrrd.write(str(folder / "b.nhdr"), np.zeros((8, 8, 4), np.uint8), detached_header=True)
    header = re.sub(r"data file: .*", f"data file: {secret}", (folder / "b.nhdr").read_text())
    (folder / "b.nhdr").write_text(header.replace("encoding: gzip", "encoding: raw"))
    with pytest.raises(DataError, match=r"b.nhdr: its voxels are in '/.*secret.raw', outside the header"):
        read_volume(folder / "b.nhdr")
    (folder / "c.mhd").write_text("NDims = 3\nDimSize = 8 8 4\nElementDataFile = LIST\nx.raw\n")
    with pytest.raises(DataError, match=r"c.mhd: its voxels are named as 'LIST'"):
        read_volume(folder / "c.mhd")
    monkeypatch.setitem(sys.modules, "itk", None)  # ITK not installed: one line saying how to get it
    (folder / "d.mha").write_text("NDims = 3\nDimSize = 8 8 4\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n")
    with pytest.raises(DataError, match=r"d.mha: MetaImage .* not installed: pip install 'superdiffusion\[itk\]'"):
        read_volume(folder / "d.mha")
    broken = tmp_path / "broken"  # an ITK that fails to import (5.3 needs setuptools' pkg_resources)
    broken.mkdir()
    (broken / "itk.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'pkg_resources'\", name='pkg_resources')\n"
    )
    monkeypatch.delitem(sys.modules, "itk")
    monkeypatch.syspath_prepend(str(broken))
    with pytest.raises(DataError, match=r"d.mha: .* installed but fails to import \(No module named 'pkg_resources'\)"):
        read_volume(folder / "d.mha")


def _case_folders(flat: Path, root: Path, names: tuple[str, ...], label: str) -> Path:
    """write_volumes' cases as one folder per case (KiTS: case/imaging + case/segmentation;
    BraTS: case/case_flair, case_t1 ... + case/case_seg): each image file once per name."""
    for path in sorted((flat / "images").iterdir()):
        case = path.name.removesuffix(".nii.gz")
        folder = root / f"case_{case}"
        folder.mkdir(parents=True)
        for name in names:
            (folder / name.format(case=folder.name)).write_bytes(path.read_bytes())
        (folder / label.format(case=folder.name)).write_bytes((flat / "labels" / path.name).read_bytes())
    return root


def test_one_folder_per_case_is_a_volume_dataset(tmp_path):
    """KiTS keeps case_00000/imaging.nii.gz beside segmentation.nii.gz, BraTS each case's
    modalities beside its _seg file: one folder per case, the label told by its name. They read
    as the same volumes as images/ + labels/, the modalities as channels in name order, and
    predict takes a case folder, or a folder of them."""
    from superdiffusion.config import DataConfig
    from superdiffusion.data import build_data

    flat = write_volumes(tmp_path / "flat", n=5)
    kits = _case_folders(flat, tmp_path / "kits", ("imaging.nii.gz",), "segmentation.nii.gz")
    brats = _case_folders(flat, tmp_path / "brats", ("{case}_t2.nii.gz", "{case}_flair.nii.gz"), "{case}_seg.nii.gz")
    pairs = scan_volumes(brats)
    assert pairs[0].id == "case_v0" and [p.name for p in pairs[0].image] == [
        "case_v0_flair.nii.gz",
        "case_v0_t2.nii.gz",
    ]
    assert pairs[0].label.name == "case_v0_seg.nii.gz"
    cfg = {"spatial_dims": 3, "patch_size": [16, 16, 16]}
    a, b = build_data(DataConfig(root=str(flat), **cfg), 0), build_data(DataConfig(root=str(kits), **cfg), 0)
    assert [f"case_{i}" for i in a.test.ids] == b.test.ids and torch.equal(a.test.images[0], b.test.images[0])
    assert torch.equal(a.test.masks[0], b.test.masks[0])
    two = build_data(DataConfig(root=str(brats), **cfg), 0)
    assert two.channels == 2 and torch.equal(two.test.images[0][1], b.test.images[0][0])

    (brats / "case_v1" / "case_v1_t2.nii.gz").rename(brats / "case_v1" / "case_v1_t1.nii.gz")
    with pytest.raises(
        DataError, match=r"case_v1: holds the images \['flair', 't1'\]; the first case \['flair', 't2'\]"
    ):
        scan_volumes(brats)
    (brats / "case_v1" / "case_v1_t1.nii.gz").rename(brats / "case_v1" / "case_v1_t2.nii.gz")
    (brats / "case_v2" / "case_v2_seg.nii.gz").unlink()  # a case without its label: unlabeled
    assert [p.id for p in scan_volumes(brats) if p.label is None] == ["case_v2"]

    run = tmp_path / "run"
    api.train(tiny_config(*BASELINE3D, "method=supervised", f"data.root={kits}", "train.epochs=1"), run)
    written = api.predict(run, kits, tmp_path / "pred")  # a folder of case folders: outputs keep them
    assert sorted(p.relative_to(tmp_path / "pred").as_posix() for p in written)[:2] == [
        "case_v0/imaging.nii.gz", "case_v1/imaging.nii.gz"
    ]  # fmt: skip
    alone = api.predict(run, kits / "case_v3", tmp_path / "pred_one")  # one case folder: its label is not an input
    assert [p.name for p in alone] == ["imaging.nii.gz"]
    (brats / "case_v2" / "case_v2_seg.nii.gz").write_bytes((kits / "case_v2" / "segmentation.nii.gz").read_bytes())
    api.train(tiny_config(*BASELINE3D, "method=supervised", f"data.root={brats}", "train.epochs=1"), tmp_path / "run2")
    (brats / "case_v4" / "case_v4_seg.nii.gz").unlink()  # a case to segment: its modalities only
    written = api.predict(tmp_path / "run2", brats / "case_v4", tmp_path / "pred_two")
    assert [p.name for p in written] == ["case_v4.nii.gz"]


def test_data_masks_names_the_labels_folder_of_volumes(tmp_path):
    """Volumes beside a labels folder of another name (segmentations/): data.masks names it."""

    root = write_volumes(tmp_path / "vols", n=3)
    (root / "labels").rename(root / "segmentations")
    with pytest.raises(DataError, match=r"no labels/ \(or masks/\) folder beside images/"):
        scan_volumes(root)
    pairs = scan_volumes(root, "segmentations")
    assert [p.label.parent.name for p in pairs] == ["segmentations"] * 3


def _acdc_and_lits(tmp_path, n=4):
    """ACDC's patient folders (two labeled frames each, beside the unlabeled 4D cine) and LiTS'
    flat folder (volume-0.nii beside segmentation-0.nii)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        label = np.zeros((16, 16, 8), np.uint8)
        label[4 : 10 + i % 3, 4:12, 2:6] = 1
        image = (rng.normal(0, 0.3, label.shape) + 2 * label).astype(np.float32)
        patient = tmp_path / "acdc" / f"patient{i:03d}"
        patient.mkdir(parents=True)
        for frame in (1, 12):
            nib.save(nib.Nifti1Image(image, np.eye(4)), str(patient / f"patient{i:03d}_frame{frame:02d}.nii.gz"))
            nib.save(nib.Nifti1Image(label, np.eye(4)), str(patient / f"patient{i:03d}_frame{frame:02d}_gt.nii.gz"))
        nib.save(nib.Nifti1Image(np.stack([image] * 3, -1), np.eye(4)), str(patient / f"patient{i:03d}_4d.nii.gz"))
        (patient / "Info.cfg").write_text("ED: 1\nES: 12\n")
        (tmp_path / "lits").mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(tmp_path / "lits" / f"volume-{i}.nii"))
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(tmp_path / "lits" / f"segmentation-{i}.nii"))
    return tmp_path / "acdc", tmp_path / "lits"


def test_case_folders_of_several_labeled_volumes_and_flat_folders_pair_each_label_with_its_image(tmp_path):
    """A patient folder of several labeled frames (ACDC: patient001_frame01 + _frame01_gt, ... and
    the 4D cine, which has no label) gives one case per label, grouped by the patient; a flat folder
    of images and labels pairs them by name, or by their shared number (LiTS)."""
    from superdiffusion.config import DataConfig
    from superdiffusion.data.volumes import build_volume_data

    acdc, lits = _acdc_and_lits(tmp_path)
    pairs = scan_volumes(acdc)
    assert [p.id for p in pairs[:3]] == ["patient000/patient000_frame01", "patient000/patient000_frame12",
                                         "patient001/patient001_frame01"]  # fmt: skip
    assert pairs[1].label.name == "patient000_frame12_gt.nii.gz" and pairs[1].columns == {"case": "patient000"}
    assert len(pairs) == 8  # the 4D cines left out
    data = build_volume_data(DataConfig(root=str(acdc), spatial_dims=3, val_fraction=0.25, test_fraction=0.25), 0)
    splits = [{i.split("/")[0] for i in s.ids} for s in (data.labeled, data.unlabeled, data.val, data.test)]
    assert not (splits[2] & splits[3]) and not ((splits[0] | splits[1]) & (splits[2] | splits[3]))
    assert data.grouped_by == "case"  # a patient's frames on one side of every split
    from types import SimpleNamespace

    from superdiffusion.inference import Segmenter

    model = SimpleNamespace(spatial_dims=3, channels=1)  # what Segmenter.inputs reads
    cases = Segmenter.inputs(model, acdc)  # predict on the patients' folders: their labeled frames
    assert [p.name for p in cases[:2]] == ["patient000_frame01.nii.gz", "patient000_frame12.nii.gz"] and len(cases) == 8
    assert [p.name for p in Segmenter.inputs(model, lits)][:1] == ["volume-0.nii"] and len(
        Segmenter.inputs(model, lits)
    ) == 4
    pairs = scan_volumes(lits)
    assert [(p.id, p.label.name) for p in pairs[:2]] == [
        ("volume-0", "segmentation-0.nii"),
        ("volume-1", "segmentation-1.nii"),
    ]
    from superdiffusion.plan import plan_for

    assert plan_for(lits, cache=False).settings["data.spatial_dims"] == 3  # a flat folder of volumes is 3D
    assert plan_for(acdc, cache=False).settings["data.group_column"] == "case"
    (lits / "segmentation-3.nii").rename(lits / "segmentation-7.nii")
    with pytest.raises(DataError, match=r"segmentation-7.nii: no image volume pairs with this label"):
        scan_volumes(lits)


def _write_series(volume: np.ndarray, folder: Path, spacing=(1.0, 1.0, 2.0)) -> None:
    """``volume`` (x, y, z) as a DICOM series: one .dcm file a slice (ITK's arrays run z, y, x)."""
    import itk

    image = itk.image_from_array(np.ascontiguousarray(volume.transpose(2, 1, 0)))
    image.SetSpacing(list(spacing))
    folder.mkdir(parents=True)
    names = [str(folder / f"IM{k:04d}.dcm") for k in range(volume.shape[2])]
    writer = itk.ImageSeriesWriter[itk.Image[itk.SS, 3], itk.Image[itk.SS, 2]].New(
        Input=image, FileNames=names, ImageIO=itk.GDCMImageIO.New()
    )
    writer.Update()


def test_dicom_series_folders_are_volumes(tmp_path):
    """A clinical set keeps each scan as a DICOM series, a folder of slices (images/CASE/IM0000.dcm
    ...), beside its label volume (labels/CASE.nii.gz): each folder is one volume, planned 3D,
    trained, and predicted back as CASE.nii.gz."""
    from superdiffusion.data.volumes import is_series
    from superdiffusion.plan import plan_for

    vols = write_volumes(tmp_path / "vols", n=6, shape=(24, 24, 12))
    root = tmp_path / "series"
    (root / "labels").mkdir(parents=True)
    for k in range(6):
        image = np.asarray(nib.load(str(vols / "images" / f"v{k}.nii.gz")).dataobj)
        _write_series((image * 100).astype(np.int16), root / "images" / f"v{k}")
        label = np.asarray(nib.load(str(vols / "labels" / f"v{k}.nii.gz")).dataobj)  # on the series' own grid
        nib.save(
            nib.Nifti1Image(label, read_volume(root / "images" / f"v{k}").affine), str(root / "labels" / f"v{k}.nii.gz")
        )
    assert is_series(root / "images" / "v0") and not is_series(root / "labels")
    pairs = scan_volumes(root)
    assert [p.id for p in pairs] == [f"v{k}" for k in range(6)]
    volume = read_volume(pairs[0].image)
    assert volume.array.shape == (24, 24, 12) and np.array_equal(
        volume.array, (np.asarray(nib.load(str(vols / "images" / "v0.nii.gz")).dataobj) * 100).astype(np.int16)
    )
    assert plan_for(root, cache=False).settings["data.spatial_dims"] == 3
    cfg = tiny_config(*TINY3D, f"data.root={root}", "data.normalize=percentile")
    api.train(cfg, tmp_path / "run")
    written = api.predict(tmp_path / "run", root / "images", tmp_path / "pred")
    assert sorted(p.name for p in written) == [f"v{k}.nii.gz" for k in range(6)]
    assert nib.load(str(written[0])).shape == (24, 24, 12)
    assert [p.name for p in api.predict(tmp_path / "run", root / "images" / "v1", tmp_path / "one")] == ["v1.nii.gz"]


def test_volumes_without_a_label_train_unlabeled(tmp_path):
    """Labels drawn for some volumes only (images/ + labels/, or case folders): the others are
    unlabeled training volumes, never validation or test, and every labeled training volume is
    labeled (planned), as for 2D images."""
    from superdiffusion.data import build_data
    from superdiffusion.plan import plan_for

    root = write_volumes(tmp_path / "vols", n=8, shape=(16, 16, 12))
    for k in (2, 5):
        (root / "labels" / f"v{k}.nii.gz").unlink()
    assert [p.id for p in scan_volumes(root) if p.label is None] == ["v2", "v5"]
    cfg = tiny_config(*TINY3D, f"data.root={root}", "data.labeled_percent=100", "data.val_fraction=0.2").data
    data = build_data(cfg, seed=0)
    assert set(data.unlabeled.ids) == {"v2", "v5"} and len(data.unlabeled.images) == 2
    assert sorted(data.labeled.ids + data.val.ids + data.test.ids) == ["v0", "v1", "v3", "v4", "v6", "v7"]
    plan = plan_for(root, cache=False)
    assert plan.settings["data.labeled_percent"] == 100 and plan.reasons["data.labeled_percent"].startswith(
        "2 of the 8"
    )
    cases = tmp_path / "cases"  # one folder per case, one without its label
    for k in range(8):
        (cases / f"case{k}").mkdir(parents=True)
        shutil.copy(root / "images" / f"v{k}.nii.gz", cases / f"case{k}" / "imaging.nii.gz")
        if k not in (2, 5):
            shutil.copy(root / "labels" / f"v{k}.nii.gz", cases / f"case{k}" / "segmentation.nii.gz")
    assert [p.id for p in scan_volumes(cases) if p.label is None] == ["case2", "case5"]


def test_case_folders_of_2d_planes_beside_their_sequences(tmp_path, caplog):
    """CAMUS keeps one folder per patient of 2D echo frames, each with its mask, beside the
    frames' whole sequence (``patient0001/patient0001_2CH_ED.nii.gz``, ``..._2CH_ED_gt.nii.gz``,
    ``..._2CH_half_sequence.nii.gz``): a 2D dataset grouped by patient (was: read as volumes and
    refused); the sequences, volumes beside 2D images, are left out of training, logged, and a
    2D model segments them frame by frame."""
    from superdiffusion.config import resolve
    from superdiffusion.data.folder import scan_folder
    from superdiffusion.plan import Planner, plan_for

    root = tmp_path / "camus"
    rng = np.random.default_rng(0)
    affine = np.diag([0.3, 0.15, 1.0, 1.0])
    for p in range(1, 11):
        case = root / f"patient{p:04d}"
        case.mkdir(parents=True)
        (case / "Info_2CH.cfg").write_text("ED: 1\nES: 9\n")
        for view in ("2CH", "4CH"):
            frames = []
            for phase in ("ED", "ES"):
                label = np.zeros((40, 36), np.uint8)
                label[8:30, 10:26] = 1
                label[14:22, 14:20] = 2
                image = (rng.random((40, 36)) * 80 + 90 * (label > 0)).astype(np.uint8)
                nib.save(nib.Nifti1Image(image, affine), str(case / f"patient{p:04d}_{view}_{phase}.nii.gz"))
                nib.save(nib.Nifti1Image(label, affine), str(case / f"patient{p:04d}_{view}_{phase}_gt.nii.gz"))
                frames.append(image)
            sequence = np.stack(frames * 3, axis=-1)
            nib.save(nib.Nifti1Image(sequence, affine), str(case / f"patient{p:04d}_{view}_half_sequence.nii.gz"))
    plan = plan_for(root, cache=False)
    assert plan.settings["data.spatial_dims"] == 2 and plan.settings["data.num_classes"] == 3
    assert plan.settings["data.group_column"] == "folder"
    with caplog.at_level("INFO", logger="superdiffusion"):
        pairs = scan_folder(root)
    assert len(pairs) == 40 and all(p.mask.name == p.image.name.replace(".nii.gz", "_gt.nii.gz") for p in pairs)
    assert "20 files holding several slices beside 2D images are left out" in caplog.text
    cfg = resolve([f"data.root={root}", "data.size=[32, 32]", "model.features=[8, 16]", "method=supervised",
                   "train.epochs=1", "train.steps_per_epoch=1", "train.batch_size=4", "train.labeled_batch_size=2"],
                  planner=Planner(cache=False))  # fmt: skip
    api.train(cfg, tmp_path / "run")
    written = api.predict(tmp_path / "run", root / "patient0001", tmp_path / "pred")
    assert sorted(p.name for p in written) == sorted(
        f"patient0001_{v}_{s}.nii.gz" for v in ("2CH", "4CH") for s in ("ED", "ES", "half_sequence")
    )
    assert nib.load(str(tmp_path / "pred" / "patient0001_2CH_half_sequence.nii.gz")).shape == (40, 36, 6)


def _save_stack(path: Path, volume: np.ndarray) -> None:
    """``volume`` (x, y, z) as a multi-page TIFF, one page a z slice of (y, x), as ImageJ saves stacks."""
    pages = [Image.fromarray(np.ascontiguousarray(volume[:, :, k].T)) for k in range(volume.shape[2])]
    pages[0].save(path, save_all=True, append_images=pages[1:])


def test_tiff_stacks_are_volumes(tmp_path):
    """Microscopy keeps 3D images as multi-page TIFF stacks (``images/*.tif`` + ``masks/*.tif``, a
    page a slice): planned and trained as volumes, their voxels as the pages hold them, and a
    stack's prediction written back as a stack of the same pages (0/255 for one class).
    A TIFF's pages of other sizes (previews) do not make it a stack."""
    from superdiffusion.data.volumes import is_stack, stored_shape
    from superdiffusion.plan import plan_for

    source = write_volumes(tmp_path / "vols", n=8, shape=(24, 20, 16))
    root = tmp_path / "stacks"
    for sub, kind in (("images", np.uint16), ("labels", np.uint8)):
        (root / ("masks" if sub == "labels" else sub)).mkdir(parents=True, exist_ok=True)
        for path in sorted((source / sub).iterdir()):
            arr = np.asarray(nib.load(str(path)).dataobj)
            arr = (arr * 1000 + 2000).astype(kind) if sub == "images" else arr.astype(kind)
            _save_stack(root / ("masks" if sub == "labels" else sub) / path.name.replace(".nii.gz", ".tif"), arr)
    stack = root / "images" / "v0.tif"
    assert is_stack(stack) and stored_shape(stack) == (24, 20, 16)
    volume = read_volume(root / "masks" / "v0.tif")
    assert np.array_equal(volume.array, np.asarray(nib.load(str(source / "labels" / "v0.nii.gz")).dataobj))
    plan = plan_for(root, cache=False)
    assert plan.settings["data.spatial_dims"] == 3 and plan.fingerprint["images"] == 8
    cfg = tiny_config(*BASELINE3D, f"data.root={root}", "method=supervised", "data.normalize=percentile")
    api.train(cfg, tmp_path / "run")
    (written,) = api.predict(tmp_path / "run", stack, tmp_path / "pred")
    assert written.name == "v0.tif"
    with Image.open(written) as out:
        assert out.n_frames == 16 and out.size == (24, 20)
        pages = [np.asarray(page.copy()) for page in ImageSequence.Iterator(out)]
    assert set(np.unique(pages)) <= {0, 255}
    with Image.open(root / "masks" / "v0.tif") as truth:
        drawn = np.stack([np.asarray(page.copy()) for page in ImageSequence.Iterator(truth)]) > 0
    found = np.stack(pages) > 0
    assert 2 * (found & drawn).sum() / (found.sum() + drawn.sum()) > 0.5  # in place, page by page
    preview = tmp_path / "preview.tif"  # a photo with a smaller preview page: a 2D image
    Image.new("RGB", (32, 24)).save(preview, save_all=True, append_images=[Image.new("RGB", (8, 6))])
    assert not is_stack(preview)


def test_case_folders_kept_deeper_as_bids_keeps_them(tmp_path):
    """Neuroimaging sets keep each scan deeper, as BIDS does (ATLAS:
    ``sub-r001s001/ses-1/anat/sub-r001s001_ses-1_T1w.nii.gz`` beside its
    ``..._label-L_desc-T1lesion_mask.nii.gz``): each such folder is a case, its image's role named
    less the subject and session (``T1w``), the sessions of one subject grouped together, and
    ``predict`` writes each case's mask in the same folders."""
    from superdiffusion.plan import plan_for

    root = tmp_path / "ATLAS" / "R001"
    source = write_volumes(tmp_path / "vols", n=12, shape=(24, 20, 16))
    for k in range(12):
        subject, session = f"sub-r001s{k // 2:03d}", f"ses-{k % 2 + 1}"
        anat = root / subject / session / "anat"
        anat.mkdir(parents=True)
        shutil.copy(source / "images" / f"v{k}.nii.gz", anat / f"{subject}_{session}_space-orig_T1w.nii.gz")
        shutil.copy(source / "labels" / f"v{k}.nii.gz",
                    anat / f"{subject}_{session}_space-orig_label-L_desc-T1lesion_mask.nii.gz")  # fmt: skip
    (root / "participants.tsv").write_text("participant_id\n")
    pairs = scan_volumes(root)
    assert len(pairs) == 12 and pairs[1].id == "sub-r001s000/ses-2/anat"
    assert pairs[1].label.name == "sub-r001s000_ses-2_space-orig_label-L_desc-T1lesion_mask.nii.gz"
    assert pairs[1].columns["case"] == pairs[0].columns["case"] == "sub-r001s000"
    plan = plan_for(tmp_path / "ATLAS", cache=False)  # the wrapping folder too
    assert plan.settings["data.spatial_dims"] == 3 and plan.fingerprint["images"] == 12
    assert plan.settings["data.group_column"] == "case"
    cfg = tiny_config(*BASELINE3D, f"data.root={root}", "method=supervised")
    api.train(cfg, tmp_path / "run")
    written = api.predict(tmp_path / "run", root, tmp_path / "pred")
    assert len(written) == 12
    assert (
        tmp_path / "pred" / "sub-r001s005" / "ses-2" / "anat" / "sub-r001s005_ses-2_space-orig_T1w.nii.gz"
    ).is_file()


def test_volumes_kept_one_folder_per_patient_in_images_and_labels(tmp_path):
    """``images/patient007/scan0.nii.gz`` beside ``labels/patient007/scan0.nii.gz``: a volume
    dataset whose ids keep the patient's folder, grouped by it; ``predict`` on the dataset writes
    each scan's mask in its patient's folder, one case a scan."""
    from superdiffusion.plan import plan_for

    source = write_volumes(tmp_path / "vols", n=24, shape=(24, 20, 16))
    root = tmp_path / "pervolume"
    for k in range(24):
        for sub in ("images", "labels"):
            folder = root / sub / f"patient{k // 2:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / sub / f"v{k}.nii.gz", folder / f"scan{k % 2}.nii.gz")
    pairs = scan_volumes(root)
    assert [p.id for p in pairs[:2]] == ["patient000/scan0", "patient000/scan1"] and len(pairs) == 24
    assert pairs[1].label == root / "labels" / "patient000" / "scan1.nii.gz"
    plan = plan_for(root, cache=False)
    assert plan.settings["data.spatial_dims"] == 3 and plan.settings["data.group_column"] == "folder"
    cfg = tiny_config(*BASELINE3D, f"data.root={root}", "method=supervised")
    api.train(cfg, tmp_path / "run")
    written = api.predict(tmp_path / "run", root, tmp_path / "pred")
    assert sorted(p.relative_to(tmp_path / "pred").as_posix() for p in written)[:2] == [
        "images/patient000/scan0.nii.gz", "images/patient000/scan1.nii.gz"
    ]  # fmt: skip


@pytest.mark.parametrize("where", ["beside", "unlabeled_root"])
def test_unlabeled_volumes_are_trained_on_and_the_run_can_be_inspected(tmp_path, where):
    """Unlabeled volumes, beside the labeled ones (images/ without a label) or in
    ``data.unlabeled_root``, are training volumes (was: ``unlabeled_root`` silently dropped for
    volumes), and a run trained with them is evaluated and shown from its splits.json (was:
    "8 image(s) this run was trained or tested on are gone" while the files were there)."""
    from superdiffusion.data import build_data
    from superdiffusion.experiments.page import write_page

    root = write_volumes(tmp_path / "vols", n=6, shape=(16, 16, 12))
    extra = [f"v{k}" for k in (6, 7, 8)]
    if where == "beside":
        write_volumes(tmp_path / "more", n=9, shape=(16, 16, 12))
        for k in extra:
            shutil.copy(tmp_path / "more" / "images" / f"{k}.nii.gz", root / "images" / f"{k}.nii.gz")
        settings = [f"data.root={root}"]
    else:
        write_volumes(tmp_path / "more", n=9, shape=(16, 16, 12))
        alone = tmp_path / "unlabeled" / "images"
        alone.mkdir(parents=True)
        for k in extra:
            shutil.copy(tmp_path / "more" / "images" / f"{k}.nii.gz", alone / f"{k}.nii.gz")
        settings = [f"data.root={root}", f"data.unlabeled_root={alone.parent}"]
    cfg = tiny_config(*TINY3D, *settings, "train.epochs=1", "method.pretrain_epochs=0")
    data = build_data(cfg.data, seed=0)
    assert set(extra) <= set(data.unlabeled.ids) and len(data.unlabeled.images) == len(data.unlabeled.ids)
    api.train(cfg, tmp_path / "run")
    again = api.evaluate(tmp_path / "run")
    assert again["test"]["resized"]["dice_per_image"] >= 0
    page = write_page(tmp_path / "run", samples=1).read_text()
    assert "<td>native resolution</td>" in page  # was: "resized", for volumes scored at their own size
    ranking, following = api.suggest(tmp_path / "run", count=2, samples=1)  # the unlabeled volumes, ranked
    with open(ranking, newline="") as handle:
        ranked = [row["id"] for row in csv.DictReader(handle)]
    assert set(extra) <= set(ranked) and set(ranked) <= set(data.unlabeled.ids)
    if where == "beside":  # a labeled_ids file names cases of the folder; unlabeled_root's are not among them
        assert following is not None and len(following.read_text().split()) >= 2
