"""nnU-Net v2 raw and Medical Segmentation Decathlon folders, read in place."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image

from superdiffusion import api
from superdiffusion.config import DataConfig
from superdiffusion.data import build_data
from superdiffusion.errors import DataError


def write_nnunet_2d(root, n=10, size=24):
    """Two grey channels, three classes: channel 0 shows class 1, channel 1 class 2."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        label = np.zeros((size, size), np.uint8)
        label[2 : 8 + i % 5, 3:10] = 1
        label[12:20, 12 : 16 + i % 6] = 2
        for c, cls in enumerate((1, 2)):
            img = (rng.random((size, size)) * 60).astype(np.uint8)
            img[label == cls] += 150
            Image.fromarray(img).save(root / "imagesTr" / f"case{i:03d}_{c:04d}.png")
        Image.fromarray(label).save(root / "labelsTr" / f"case{i:03d}.png")
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "red", "1": "green"},
                "labels": {"background": 0, "nucleus": 1, "gland": 2},
                "numTraining": n,
                "file_ending": ".png",
            }
        )
    )
    return root


def _volume(i, size=20):
    label = np.zeros((size, size, size), np.uint8)
    label[4 : 10 + i % 4, 5:12, 6:14] = 1
    image = np.random.default_rng(i).normal(0, 1, label.shape).astype(np.float32) + 3 * label
    return image, label


def write_msd_3d(root, n=6):
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True)
    training = []
    for i in range(n):
        image, label = _volume(i)
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / "imagesTr" / f"hip_{i}.nii.gz"))
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(root / "labelsTr" / f"hip_{i}.nii.gz"))
        training.append({"image": f"./imagesTr/hip_{i}.nii.gz", "label": f"./labelsTr/hip_{i}.nii.gz"})
    (root / "dataset.json").write_text(
        json.dumps({"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "hippocampus"}, "training": training})
    )
    return root


def write_nnunet_3d(root, n=6, channels=1):
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True)
    for i in range(n):
        image, label = _volume(i)
        for c in range(channels):
            nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / "imagesTr" / f"c{i}_{c:04d}.nii.gz"))
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(root / "labelsTr" / f"c{i}.nii.gz"))
    names = {str(c): f"mod{c}" for c in range(channels)}
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": names, "labels": {"background": 0, "organ": 1}, "file_ending": ".nii.gz"})
    )
    return root


def test_nnunet_2d_trains_with_its_channels_classes_and_names(tmp_path):
    root = write_nnunet_2d(tmp_path / "Dataset001_Toy")
    results = api.train(tiny_config(f"data.root={root}", "method=supervised", "train.epochs=2"), tmp_path / "run")
    assert results["class_names"] == ["background", "nucleus", "gland"]
    assert set(results["test_per_class"]) == {"nucleus", "gland"}
    assert 0 <= results["test_per_class"]["gland"]["dice_per_image"] <= 1
    assert results["counts"]["test"] == 2  # carved from the labeled cases (imagesTs has no labels)
    saved = api.saved_config(tmp_path / "run")
    assert (saved.data.num_classes, saved.data.mask_mode, saved.data.spatial_dims) == (3, "index", 2)
    _, method, state = api.load_run(tmp_path / "run")
    assert state["data"]["channels"] == 2


def test_msd_and_nnunet_volumes_are_read_in_place(tmp_path):
    for root in (write_msd_3d(tmp_path / "Task04_Toy"), write_nnunet_3d(tmp_path / "Dataset002_Toy")):
        data = build_data(DataConfig(root=str(root), patch_size=[16, 16, 16]), seed=0)
        assert data.spatial_dims == 3 and data.num_classes == 2 and data.channels == 1
        assert data.class_names[1] in ("hippocampus", "organ")
        assert len(data.labeled) + len(data.unlabeled) + len(data.val) + len(data.test) == 6


def test_layout_problems_are_one_line_naming_the_file(tmp_path):
    root = write_nnunet_2d(tmp_path / "a")
    (root / "imagesTr" / "case003_0001.png").unlink()
    with pytest.raises(DataError, match="case003_0001.png: missing"):
        build_data(DataConfig(root=str(root)), seed=0)
    root = write_nnunet_2d(tmp_path / "b")
    with pytest.raises(DataError, match="num classes = 3, but data.num_classes=4"):
        build_data(DataConfig(root=str(root), num_classes=4), seed=0)
    spec = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**spec, "numTraining": 11}))
    with pytest.raises(DataError, match="numTraining is 11 but imagesTr holds 10 cases"):
        build_data(DataConfig(root=str(root)), seed=0)


def test_multichannel_volumes_train_and_predict_per_case(tmp_path):
    root = write_nnunet_3d(tmp_path / "Dataset003_Two", channels=2)
    data = build_data(DataConfig(root=str(root), patch_size=[16, 16, 16]), seed=0)
    assert data.channels == 2 and data.labeled.images[0].shape[0] == 2
    cfg = tiny_config(f"data.root={root}", "method=supervised", "data.patch_size=[16, 16, 16]", "train.epochs=1")
    api.train(cfg, tmp_path / "run")
    inputs = tmp_path / "new"
    inputs.mkdir()
    for c in (0, 1):
        shutil.copy(root / "imagesTr" / f"c0_{c:04d}.nii.gz", inputs)
    written = api.predict(tmp_path / "run", inputs, tmp_path / "pred")
    assert [p.name for p in written] == ["c0.nii.gz"]  # one case from its two channel files
    assert nib.load(str(written[0])).shape == nib.load(str(root / "labelsTr" / "c0.nii.gz")).shape
    (inputs / "c0_0001.nii.gz").unlink()
    with pytest.raises(DataError, match=r"c0: channel files \[0\] found, the model needs 2"):
        api.predict(tmp_path / "run", inputs, tmp_path / "pred2")


def write_msd_4d(root, n=6, modalities=2):
    """MSD's multi-modal layout (Prostate, BrainTumour): one 4D file per case, modality last."""
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True)
    training = []
    for i in range(n):
        image, label = _volume(i)
        stack = np.stack([image * (c + 1) for c in range(modalities)], axis=-1)
        nib.save(nib.Nifti1Image(stack, np.diag([0.6, 0.6, 3.0, 1.0])), str(root / "imagesTr" / f"pro_{i}.nii.gz"))
        nib.save(nib.Nifti1Image(label, np.diag([0.6, 0.6, 3.0, 1.0])), str(root / "labelsTr" / f"pro_{i}.nii.gz"))
        training.append({"image": f"./imagesTr/pro_{i}.nii.gz", "label": f"./labelsTr/pro_{i}.nii.gz"})
    modality = {str(c): f"mod{c}" for c in range(modalities)}
    (root / "dataset.json").write_text(
        json.dumps({"modality": modality, "labels": {"0": "background", "1": "gland"}, "training": training})
    )
    return root


def test_msd_multimodal_4d_volumes_train_and_predict(tmp_path):
    root = write_msd_4d(tmp_path / "Task05_Toy")
    data = build_data(DataConfig(root=str(root), patch_size=[16, 16, 16]), seed=0)
    assert data.channels == 2 and data.labeled.images[0].shape == (2, 20, 20, 20)
    cfg = tiny_config(f"data.root={root}", "method=supervised", "data.patch_size=[16, 16, 16]", "train.epochs=1")
    api.train(cfg, tmp_path / "run")
    written = api.predict(tmp_path / "run", root / "imagesTr" / "pro_0.nii.gz", tmp_path / "pred")
    assert [p.name for p in written] == ["pro_0.nii.gz"]
    assert nib.load(str(written[0])).shape == (20, 20, 20)


def test_dataset_json_folders_are_planned_and_keep_their_declared_classes(tmp_path):
    """An MSD or nnU-Net folder gets a plan like any folder (patch size, normalisation, name),
    while dataset.json keeps the classes, the channels and the dimensionality."""
    from superdiffusion.config import resolve
    from superdiffusion.plan import Planner, plan_for

    for root in (write_msd_3d(tmp_path / "Task04_Toy"), write_msd_4d(tmp_path / "Task05_Toy")):
        plan = plan_for(root, cache=False)
        assert plan.settings["data.patch_size"] == [16, 16, 16]  # within a 20^3 volume, in multiples of 16
        assert plan.settings["data.name"] == root.name
        assert (
            not {"data.mask_mode", "data.num_classes"} & set(plan.settings) and plan.settings["data.spatial_dims"] == 3
        )
        cfg = resolve([f"data.root={root}"], planner=Planner(cache=False))
        assert cfg.data.patch_size == [16, 16, 16] and cfg.data.name == root.name
    plan = plan_for(write_nnunet_2d(tmp_path / "Dataset001_Toy"), cache=False)
    assert plan.settings["data.size"] == [32, 32] and "data.mask_mode" not in plan.settings  # 24 px: kept near


def test_an_nnunet_folder_with_unlabeled_cases_runs_end_to_end(tmp_path):
    """imagesTr holds 10 cases, labelsTr 6: the other 4 are unlabeled training volumes (was:
    refused, "image without a label"; then refused on numTraining), and the whole path runs:
    plan, train, evaluate, show, predict."""
    from superdiffusion.experiments.page import write_page
    from superdiffusion.plan import plan_for

    root = write_nnunet_3d(tmp_path / "Dataset004_Part", n=10)
    for i in (1, 4, 6, 8):
        (root / "labelsTr" / f"c{i}.nii.gz").unlink()
    spec = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**spec, "numTraining": 6}))
    assert plan_for(root, cache=False).settings["data.spatial_dims"] == 3
    cfg = tiny_config(
        f"data.root={root}", "data.patch_size=[16, 16, 16]", "train.epochs=1", "method.rounds=1",
        "method.pretrain_epochs=1", "data.labeled_percent=50", "data.val_fraction=0.2",
    )  # fmt: skip
    data = build_data(cfg.data, seed=0)
    assert {"c1", "c4", "c6", "c8"} <= set(data.unlabeled.ids)
    assert not {"c1", "c4", "c6", "c8"} & set(data.labeled.ids + data.val.ids + data.test.ids)
    api.train(cfg, tmp_path / "run")
    assert api.evaluate(tmp_path / "run")["counts"]["test"] >= 1
    assert write_page(tmp_path / "run", samples=1).is_file()
    inputs = tmp_path / "new"
    inputs.mkdir()
    shutil.copy(root / "imagesTr" / "c1_0000.nii.gz", inputs)
    assert len(api.predict(tmp_path / "run", inputs, tmp_path / "pred")) == 1
    (root / "dataset.json").write_text(json.dumps({**spec, "numTraining": 7}))
    with pytest.raises(DataError, match="numTraining is 7 but imagesTr holds 10 cases, 6 of them with a label"):
        build_data(cfg.data, seed=0)


def test_a_multiclass_run_scores_each_case_and_class_and_shows_them_worst_first(tmp_path):
    """A three-class run writes test_per_case.csv (was: none): each case's mean foreground Dice
    over the classes its reference holds, and each class's Dice; the page orders the cases by
    that mean, shows each class's Dice, and no threshold (none applies to an argmax)."""
    import csv
    import re

    from superdiffusion.evaluation import multiclass_per_case
    from superdiffusion.experiments.page import write_page

    predicted = torch.tensor([[[1, 0], [0, 0]], [[2, 0], [0, 0]]])  # a: class 1 right, class 2 missed; b: right
    probs = torch.nn.functional.one_hot(predicted, 3).movedim(-1, 1).float()
    labels = torch.tensor([[[1, 0], [2, 0]], [[2, 0], [0, 0]]])
    rows = multiclass_per_case(probs, labels, ["a", "b"], ["nucleus", "gland"])
    assert rows[0] == {"id": "a", "dice": 0.5, "jaccard": 0.5, "dice_nucleus": 1.0, "dice_gland": 0.0}
    assert rows[1]["dice"] == 1.0 and rows[1]["dice_gland"] == 1.0  # its reference holds class 2 only

    root = write_nnunet_2d(tmp_path / "Dataset001_Toy")
    api.train(tiny_config(f"data.root={root}", "method=supervised", "train.epochs=1"), tmp_path / "run")
    with open(tmp_path / "run" / "test_per_case.csv", newline="") as handle:
        written = list(csv.DictReader(handle))
    assert len(written) == 2 and {"id", "dice", "jaccard", "dice_nucleus", "dice_gland"} <= set(written[0])
    page = write_page(tmp_path / "run", samples=1).read_text()
    shown = [float(d) for d in re.findall(r'data-dice="([0-9.]+)"', page)]
    assert shown == sorted(shown) and len(shown) == 2
    assert "mean foreground Dice" in page and " · gland " in page and "threshold" not in page
