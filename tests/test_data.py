import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_pair_folder
from PIL import Image

from superdiffusion.config import DataConfig
from superdiffusion.data import build_data, scan_folder
from superdiffusion.data.augment import flip_rotate
from superdiffusion.data.folder import read_image, read_mask
from superdiffusion.data.splits import labeled_count, split_labeled
from superdiffusion.errors import ConfigError, DataError


@pytest.mark.parametrize(
    "n,p,k", [(144, 1, 2), (144, 2, 3), (144, 5, 8), (144, 10, 15), (144, 20, 29), (144, 100, 144)]
)
def test_labeled_count_is_ceil(n, p, k):
    assert labeled_count(n, p) == k == math.ceil(n * p / 100)


def test_labeled_split_is_seeded_disjoint_and_complete():
    ids = [f"i{k}" for k in range(50)]
    lab, unl = split_labeled(ids, 10, seed=3)
    assert len(lab) == 5 and len(unl) == 45 and not set(lab) & set(unl) and set(lab) | set(unl) == set(ids)
    assert split_labeled(ids, 10, seed=3) == (lab, unl)
    assert split_labeled(ids, 10, seed=4)[0] != lab


@pytest.mark.parametrize("p", [0, -5, 100.5])
def test_regimes_out_of_range_are_refused(p):
    with pytest.raises(ConfigError, match="labeled_percent"):
        labeled_count(100, p)


def test_builtin_ph2_splits():
    data = build_data(DataConfig(labeled_percent=5), seed=0)
    assert len(data.test) == 40  # split.csv
    assert len(data.val) == 16 and len(data.labeled) == 8 and len(data.unlabeled) == 136
    ids = [set(s.ids) for s in (data.labeled, data.unlabeled, data.val, data.test)]
    assert sum(map(len, ids)) == 200 and len(set().union(*ids)) == 200
    assert data.labeled.stack().shape == (8, 3, 128, 128) and data.labeled.stack().min() >= -1
    assert set(data.labeled.stack_masks().unique().tolist()) == {0, 1}
    again = build_data(DataConfig(labeled_percent=5), seed=0)
    assert again.labeled.ids == data.labeled.ids and again.val.ids == data.val.ids


def test_folder_without_split_gets_a_fixed_test_split(tmp_path):
    from conftest import write_pair_folder

    root = write_pair_folder(tmp_path / "d", n=10, split=False)
    cfg = DataConfig(root=str(root), size=[16, 16], labeled_percent=50, val_fraction=0.2)
    a, b = build_data(cfg, seed=0), build_data(cfg, seed=1)
    assert a.test.ids == b.test.ids and len(a.test) == 2
    assert len(a.val) == 2 and len(a.labeled) == 3


def _subject_folder(tmp_path, header="id,split,subject", test=True):
    """16 images of 4 subjects (4 frames each); the last subject is the test split."""
    root = write_pair_folder(tmp_path / "d", n=16, split=False)
    rows = [header] + [f"case{i},{'test' if test and i >= 12 else 'train'},s{i // 4}" for i in range(16)]
    (root / "split.csv").write_text("\n".join(rows) + "\n")
    return root


def subjects(split):
    return {p.columns["subject"] for p in split.pairs}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_validation_holds_out_whole_subjects_when_split_csv_names_them(tmp_path, seed):
    # frames of one subject are near-duplicates: a validation split that shares subjects with
    # training chooses the checkpoint and threshold on what it has already seen
    cfg = DataConfig(root=str(_subject_folder(tmp_path)), size=[16, 16], labeled_percent=50, val_fraction=0.25)
    data = build_data(cfg, seed=seed)
    train = subjects(data.labeled) | subjects(data.unlabeled)
    assert len(data.val) == 4 and len(subjects(data.val)) == 1 and not subjects(data.val) & train
    assert subjects(data.test) == {"s3"} and len(data.labeled) + len(data.unlabeled) == 8
    assert data.summary().endswith("; whole subjects: 2 training, 1 validation")


def test_carved_test_split_holds_out_whole_subjects_too(tmp_path):
    cfg = DataConfig(root=str(_subject_folder(tmp_path, test=False)), size=[16, 16], test_fraction=0.25)
    data = build_data(cfg, seed=0)
    assert len(data.test) == 4 and len(subjects(data.test)) == 1
    assert not subjects(data.test) & (subjects(data.labeled) | subjects(data.unlabeled) | subjects(data.val))


def test_group_column_null_splits_image_by_image_and_a_missing_column_is_one_line(tmp_path):
    root = _subject_folder(tmp_path)
    by_image = build_data(DataConfig(root=str(root), size=[16, 16], val_fraction=0.25, group_column=None), seed=0)
    grouped = build_data(DataConfig(root=str(root), size=[16, 16], val_fraction=0.25), seed=0)
    assert len(by_image.val) == 3 and by_image.val.ids != grouped.val.ids
    with pytest.raises(DataError, match=r"split.csv: no column 'patient' for data.group_column; .*subject"):
        build_data(DataConfig(root=str(root), size=[16, 16], group_column="patient"), seed=0)


def test_one_training_subject_cannot_give_a_validation_split_of_whole_subjects(tmp_path):
    root = write_pair_folder(tmp_path / "d", n=6)
    rows = ["id,split,patient"] + [f"case{i},{'test' if i >= 4 else 'train'},{'a' if i < 4 else 'b'}" for i in range(6)]
    (root / "split.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"split.csv: the 4 images .* share one 'patient'.*data.group_column=null"):
        build_data(DataConfig(root=str(root), size=[16, 16]), seed=0)


def test_a_run_saved_before_group_column_existed_keeps_its_image_by_image_split():
    from superdiffusion.config import Config, from_dict

    saved = Config().to_dict()
    del saved["data"]["group_column"]
    assert from_dict(saved).data.group_column is None and Config().data.group_column == "auto"


def test_augmentation_moves_image_and_mask_together():
    images = torch.arange(2 * 16, dtype=torch.float32).view(2, 1, 4, 4).repeat(4, 1, 1, 1)
    masks = images[:, 0].long()
    out_i, out_m = flip_rotate(images, masks, torch.Generator().manual_seed(0))
    assert torch.equal(out_i[:, 0].long(), out_m)
    assert any(not torch.equal(out_i[k], images[k]) for k in range(8))


# --- hostile data: each a clear error naming the file -----------------------------------------
def _corrupt(root, case):
    if case == "test image without mask":  # a training image without one trains unlabeled
        (root / "masks" / "case5.png").unlink()
        return "case5.png", "a test image without a mask"
    if case == "mask without image":
        Image.fromarray(np.zeros((24, 20), np.uint8)).save(root / "masks" / "extra.png")
        return "extra.png", "mask without an image"
    if case == "size mismatch":
        Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "case2.png")
        return "case2.png", "is 10x10"
    if case == "truncated png":
        data = (root / "images" / "case3.png").read_bytes()
        (root / "images" / "case3.png").write_bytes(data[: len(data) // 3])
        return "case3.png", "cannot read"
    if case == "not an image":
        (root / "images" / "case3.png").write_text("hello")
        return "case3.png", "cannot read"
    if case == "mask with many values":
        Image.fromarray(np.arange(24 * 20).reshape(24, 20).astype(np.uint8) % 5).save(root / "masks" / "case0.png")
        return "case0.png", "distinct values"
    if case == "split names a missing file":
        with open(root / "split.csv", "a") as handle:
            handle.write("ghost,train\n")
        return "ghost", "has no image"
    if case == "split with unknown split":
        text = (root / "split.csv").read_text().replace("case0,train", "case0,training")
        (root / "split.csv").write_text(text)
        return "training", "not one of"
    if case == "images without masks":
        shutil.rmtree(root / "masks")
        return "data.unlabeled_root=", "no masks/ (or labels/) folder"
    if case == "empty images folder":
        for p in (root / "images").iterdir():
            p.unlink()
        return "images", "no image files"
    raise AssertionError(case)


CASES = [
    "test image without mask",
    "mask without image",
    "size mismatch",
    "truncated png",
    "not an image",
    "mask with many values",
    "split names a missing file",
    "split with unknown split",
    "empty images folder",
    "images without masks",
]


@pytest.mark.parametrize("case", CASES)
def test_hostile_data_gives_a_clear_error(pair_folder, case):
    name, message = _corrupt(pair_folder, case)
    with pytest.raises(DataError) as info:
        build_data(DataConfig(root=str(pair_folder), size=[16, 16], labeled_percent=50), seed=0)
    assert name in str(info.value) and message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(DataError, match="not found"):
        scan_folder(tmp_path / "nowhere")


def test_sixteen_bit_and_palette_files(tmp_path):
    arr16 = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(arr16).save(tmp_path / "grey16.png")
    img = read_image(tmp_path / "grey16.png")
    assert img.shape == (1, 8, 8) and abs(img.max() - 63000 / 65535) < 1e-4
    pal = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    pal.save(tmp_path / "pal.png")
    assert read_mask(tmp_path / "pal.png", 3, "index").tolist() == [[0, 1], [2, 1]]
    with pytest.raises(DataError, match="outside the classes"):
        read_mask(tmp_path / "pal.png", 2, "index")
    # the same palette file as a binary mask: black and two colours are classes, not one foreground
    with pytest.raises(DataError, match=r"pal.png: colour mask with 3 colours"):
        read_mask(tmp_path / "pal.png", 2, "binary")
    assert read_mask(tmp_path / "pal.png", 2, "threshold").tolist() == [[0, 1], [1, 1]]


def test_a_folder_with_both_masks_and_labels_names_them(tmp_path):
    root = write_pair_folder(tmp_path / "data")
    (root / "labels").mkdir()
    with pytest.raises(DataError, match="holds both masks/ and labels/"):
        scan_folder(root)


def test_thin_structure_generator_is_seeded_thin_and_in_range(tmp_path):
    from scipy import ndimage

    from superdiffusion.cli import main
    from superdiffusion.data.synthetic import write_thin_structures

    assert main(["make-dataset", "thin", str(tmp_path / "a"), "--count", "6", "--size", "96", "--seed", "3"]) == 0
    write_thin_structures(tmp_path / "b", count=6, size=96, seed=3)
    for name in ("thin000", "thin005"):
        for sub in ("images", "masks"):
            a = np.asarray(Image.open(tmp_path / "a" / sub / f"{name}.png"))
            assert np.array_equal(a, np.asarray(Image.open(tmp_path / "b" / sub / f"{name}.png")))
        mask = np.asarray(Image.open(tmp_path / "a" / "masks" / f"{name}.png")) > 0
        image = np.asarray(Image.open(tmp_path / "a" / "images" / f"{name}.png")).astype(float)
        assert 0.045 <= mask.mean() <= 0.16
        # thin: no foreground pixel is more than 2 px from the background (widths 1-3 px, crossings aside)
        inside = ndimage.distance_transform_edt(mask)[mask]
        assert np.median(inside) <= 1.5 and np.percentile(inside, 90) <= 2.0
        assert image[mask].mean() < image[~mask].mean() - 5  # darker vessels, faintly
    assert (tmp_path / "a" / "split.csv").read_text().count(",test") == 3
    with pytest.raises(DataError, match="not empty"):
        write_thin_structures(tmp_path / "a", count=6, size=96)


def test_lossy_jpeg_masks_need_and_get_the_threshold_mode(tmp_path):
    root = write_pair_folder(tmp_path / "jpeg", n=6)
    truth = {}
    for png in sorted((root / "masks").glob("*.png")):
        mask = np.asarray(Image.open(png))
        truth[png.stem] = mask > 0
        rgb = np.repeat(mask[..., None], 3, -1)
        Image.fromarray(rgb).save(png.with_suffix(".jpg"), quality=60)  # lossy, colour JPEG masks
        png.unlink()
    with pytest.raises(DataError, match=r"distinct values .*data.mask_mode=threshold"):
        build_data(DataConfig(root=str(root), size=[16, 16], labeled_percent=50), seed=0)
    mask = read_mask(root / "masks" / "case0.jpg", 2, "threshold")
    assert mask.shape == truth["case0"].shape and (mask.astype(bool) == truth["case0"]).mean() > 0.97
    assert read_mask(root / "masks" / "case0.jpg", 2, "threshold", threshold=250).sum() < mask.sum()
    data = build_data(DataConfig(root=str(root), size=[16, 16], labeled_percent=50, mask_mode="threshold"), seed=0)
    assert set(data.labeled.stack_masks().unique().tolist()) == {0, 1}
    zero_one = tmp_path / "01.png"
    Image.fromarray(truth["case1"].astype(np.uint8)).save(zero_one)  # 0/1 masks: foreground is 1
    assert np.array_equal(read_mask(zero_one, 2, "threshold").astype(bool), truth["case1"])


def test_dataset_presets_read_the_data_folder_and_say_how_to_fill_it(tmp_path, monkeypatch):
    from superdiffusion.config import resolve
    from superdiffusion.data import resolve_root
    from superdiffusion.errors import DataError

    root = resolve(["dataset=ph2-full"]).data.root
    monkeypatch.setenv("SUPERDIFFUSION_DATA", str(tmp_path))
    with pytest.raises(DataError, match="import-dataset ph2 PH2_DOWNLOAD") as err:
        resolve_root(root)
    assert str(tmp_path / "PH2") in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "PH2").mkdir()
    assert resolve_root(root) == tmp_path / "PH2"
    monkeypatch.delenv("SUPERDIFFUSION_DATA")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "PH2").mkdir(parents=True)
    assert resolve_root(root) == Path("data") / "PH2"  # the default data folder, relative to the working dir


def test_fainter_thin_structures_keep_their_masks_and_lose_contrast(tmp_path):
    from superdiffusion.cli import main

    args = ["make-dataset", "thin", "--count", "4", "--size", "96", "--seed", "1"]
    assert main([*args[:2], str(tmp_path / "plain"), *args[2:]]) == 0
    assert main([*args[:2], str(tmp_path / "faint"), *args[2:], "--contrast", "0.3", "--noise", "0.04"]) == 0
    gaps = {}
    for kind in ("plain", "faint"):
        mask = np.asarray(Image.open(tmp_path / kind / "masks" / "thin000.png")) > 0
        image = np.asarray(Image.open(tmp_path / kind / "images" / "thin000.png")).astype(float)
        gaps[kind] = (image[~mask].mean() - image[mask].mean(), mask)
    assert np.array_equal(gaps["plain"][1], gaps["faint"][1])  # the same structures
    assert 0 < gaps["faint"][0] < 0.5 * gaps["plain"][0]
    assert main([*args[:2], str(tmp_path / "bad"), *args[2:], "--contrast", "0"]) != 0


def test_a_stack_or_animation_is_not_read_as_its_first_frame(tmp_path):
    """A multi-page TIFF (a microscopy stack) read as 2D would silently be its first slice."""
    frames = [Image.fromarray(np.full((16, 16), 40 * i, np.uint8)) for i in range(3)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    for name in ("stack.tif", "anim.gif"):
        with pytest.raises(DataError, match=rf"{name}: holds 3 frames of 16x16"):
            read_image(tmp_path / name)


def test_a_file_named_dicom_that_is_not_stops_with_one_line(tmp_path):
    """DICOM files are read by ITK (tests/test_volumes.py); one that is not DICOM is named."""
    from superdiffusion.plan import plan_for

    root = write_pair_folder(tmp_path / "data")
    for path in (root / "images").iterdir():
        path.unlink()
        path.with_suffix(".dcm").write_bytes(b"DICM" + bytes(200))  # a truncated file
    with pytest.raises(DataError, match=r"images/case0.dcm: cannot read"):
        plan_for(root, cache=False)


def test_a_dataset_that_would_not_fit_in_memory_stops_before_reading(tmp_path, monkeypatch):
    """Training holds every case in memory; running out of it would end the process without a
    word. Six 24x20 RGB images at native resolution take 6 x 480 x (3 x 4 + 1) = 37,440 bytes
    (float32 channels, a one-byte mask)."""
    from superdiffusion.data import dataset

    root = write_pair_folder(tmp_path / "data")
    monkeypatch.setattr(dataset, "available_memory", lambda: 37_439)
    with pytest.raises(DataError, match=r"data: its 6 images take about 0 MB in memory .* more than the 0 MB"):
        build_data(DataConfig(root=str(root), size=None, patch_size=[16, 16]), seed=0)
    monkeypatch.setattr(dataset, "available_memory", lambda: 37_440)
    assert len(build_data(DataConfig(root=str(root), size=None, patch_size=[16, 16]), seed=0).test) == 2


def test_a_photo_is_read_the_way_it_is_displayed(tmp_path):
    """A camera JPEG stores its pixels sideways with an EXIF orientation; viewers, annotation
    tools and OpenCV show it turned, and its mask is drawn on what they show."""
    root = tmp_path / "photos"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(5):
        shown = np.zeros((40, 30, 3), np.uint8)  # as displayed: 40 rows, 30 columns
        shown[5:15, 3 + i : 12 + i] = 250  # a bright patch near the top
        mask = (shown[..., 0] > 0).astype(np.uint8) * 255
        stored = Image.fromarray(shown).transpose(Image.Transpose.ROTATE_90)  # stored turned a quarter
        exif = Image.Exif()
        exif[0x0112] = 6  # display: rotate 90 degrees clockwise
        stored.save(root / "images" / f"p{i}.jpg", exif=exif, quality=95)
        Image.fromarray(mask).save(root / "masks" / f"p{i}.png")
    assert read_image(root / "images" / "p0.jpg").shape == (3, 40, 30)
    data = build_data(DataConfig(root=str(root), size=None, patch_size=[16, 16], labeled_percent=100), seed=0)
    for image, mask in zip(data.test.images, data.test.masks):
        bright = image.mean(0) > image.mean()
        assert (bright == mask.bool()).float().mean() > 0.97


def test_a_split_csv_as_spreadsheets_write_it_is_read(tmp_path):
    """Excel's UTF-8 CSV starts with a byte-order mark, people write file names for ids and
    capitalise or pad the split: all of it means what it says."""
    root = write_pair_folder(tmp_path / "data", split=False)
    rows = ["id,split"] + [f"case{i}.png, {'Test' if i >= 4 else 'TRAIN'} " for i in range(6)]
    (root / "split.csv").write_bytes(("\r\n".join(rows) + "\r\n").encode("utf-8-sig"))
    pairs = scan_folder(root)
    assert [p.split for p in pairs] == ["train"] * 4 + ["test"] * 2
    # a row with more values than the header has columns: the extra value is not a column
    (root / "split.csv").write_text("id,split\n" + "".join(f"case{i},train,extra\n" for i in range(6)))
    assert {p.split for p in scan_folder(root)} == {"train"}


def test_masks_named_after_their_image_with_any_suffix_are_paired(tmp_path):
    """Retinal and other public sets name a mask after its image plus a tag of their own
    (STARE's im0001.ah.ppm, CHASE_DB1's Image_01L_1stHO.png, x_gt.png); a mask that two could
    claim, or two masks for one image (BUSI's x_mask.png and x_mask_1.png), stop with one line."""
    root = tmp_path / "retina"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    grey = Image.fromarray(np.full((8, 8), 90, np.uint8))
    binary = Image.fromarray((np.arange(64).reshape(8, 8) % 2 * 255).astype(np.uint8))
    for image, mask in [("im0001.ppm", "im0001.ah.ppm"), ("Image_01L.jpg", "Image_01L_1stHO.png"),
                        ("Image_01L_2.jpg", "Image_01L_2_1stHO.png"), ("x.png", "x_gt.png"), ("y.png", "y.png")]:  # fmt: skip
        grey.save(root / "images" / image)
        binary.save(root / "masks" / mask)
    pairs = {p.id: p.mask.name for p in scan_folder(root)}
    assert pairs == {
        "im0001": "im0001.ah.ppm",
        "Image_01L": "Image_01L_1stHO.png",
        "Image_01L_2": "Image_01L_2_1stHO.png",
        "x": "x_gt.png",
        "y": "y.png",
    }
    binary.save(root / "masks" / "x_gt_2.png")
    with pytest.raises(DataError, match=r"x.png: its masks x_gt.png, x_gt_2.png overlap"):
        scan_folder(root)


def test_masks_are_held_in_one_byte_a_pixel_and_batched_as_class_indices():
    """Training holds every mask in memory: a class map needs one byte a pixel, not the eight of
    int64 (for 3D sets, most of the memory). Batches and scoring still get int64 class indices."""
    from superdiffusion.data.folder import compact_mask

    data = build_data(DataConfig(labeled_percent=5), seed=0)
    for split in (data.labeled, data.val, data.test):
        assert {m.dtype for m in split.masks} == {torch.uint8}
    assert data.labeled.stack_masks().dtype == torch.long
    assert set(data.labeled.stack_masks().unique().tolist()) == {0, 1}
    wide = compact_mask(np.array([[0, 255], [256, 300]]))  # more classes than a byte holds keep their values
    assert wide.tolist() == [[0, 255], [256, 300]] and wide.element_size() <= 4
    assert compact_mask(np.array([[0, 3]])).dtype == torch.uint8


def _in_subfolders(root, per_folder=3):
    """write_pair_folder's cases moved into one subfolder per patient, each patient's slices
    named alike (images/p0/s0.png, images/p1/s0.png ...), as slices exported per patient are."""
    for sub in ("images", "masks"):
        for k, path in enumerate(sorted((root / sub).iterdir(), key=lambda p: int(p.stem[4:]))):
            target = root / sub / f"p{k // per_folder}" / f"s{k % per_folder}.png"
            target.parent.mkdir(exist_ok=True)
            path.rename(target)
    return root


def test_images_in_subfolders_are_cases_of_their_subfolder(tmp_path):
    """Slices kept one folder per patient (images/p0/s0.png, masks/p0/s0.png): every subfolder is
    read, ids keep their subfolder, and carved splits hold out whole subfolders, so no patient's
    slices sit on both sides of a split."""
    from superdiffusion.plan import plan_for

    root = _in_subfolders(write_pair_folder(tmp_path / "data", n=30, split=False))
    outside = write_pair_folder(tmp_path / "outside", n=2, split=False)
    (root / "images" / "linked").symlink_to(outside / "images")  # a linked folder is not entered
    pairs = scan_folder(root)
    assert [p.id for p in pairs[:4]] == ["p0/s0", "p0/s1", "p0/s2", "p1/s0"] and len(pairs) == 30
    assert pairs[4].columns == {"folder": "p1"} and pairs[4].mask == root / "masks" / "p1" / "s1.png"
    data = build_data(DataConfig(root=str(root), size=[16, 16], labeled_percent=50, val_fraction=0.25), seed=0)
    patients = [{i.split("/")[0] for i in s.ids} for s in (data.labeled, data.unlabeled, data.val, data.test)]
    train, val, test = patients[0] | patients[1], patients[2], patients[3]
    assert not (train & val or train & test or val & test), patients
    assert len(train | val | test) == 10 and data.grouped_by == "folder"
    classes = _in_subfolders(write_pair_folder(tmp_path / "classes", n=30, split=False), per_folder=10)
    assert build_data(DataConfig(root=str(classes), size=[16, 16]), seed=0).grouped_by is None  # benign/, malignant/
    plan = plan_for(classes, cache=False)
    assert plan.settings["data.group_column"] is None and "3 subfolders" in plan.reasons["data.group_column"]
    (root / "split.csv").write_text("id,split,patient\n" + "".join(
        f"{p.id},{'test' if p.id.startswith('p7') else 'train'},P{p.id[1]}\n" for p in pairs))  # fmt: skip
    assert build_data(DataConfig(root=str(root), size=[16, 16]), seed=0).grouped_by == "patient"  # split.csv's wins
    (root / "split.csv").unlink()
    assert plan_for(root, cache=False).settings["data.group_column"] == "folder"


def test_predict_keeps_an_input_folder_s_subfolders(tmp_path):
    """Predicting a folder of per-patient subfolders writes each mask into the same subfolder
    (two patients' s0.png would otherwise be one output), never through a linked subfolder."""
    from conftest import tiny_config

    from superdiffusion import api
    from superdiffusion.errors import RunFolderError

    root = _in_subfolders(write_pair_folder(tmp_path / "data", n=12, split=False))
    api.train(tiny_config("method=supervised", f"data.root={root}", "data.val_fraction=0.25"), tmp_path / "run")
    written = api.predict(tmp_path / "run", root / "images", tmp_path / "pred")
    assert sorted(p.relative_to(tmp_path / "pred").as_posix() for p in written)[:4] == [
        "p0/s0.png", "p0/s1.png", "p0/s2.png", "p1/s0.png"
    ]  # fmt: skip
    inside = api.predict(tmp_path / "run", root / "images", root / "images" / "pred")  # the output inside the inputs
    again = api.predict(tmp_path / "run", root / "images", root / "images" / "pred", force=True)
    assert len(inside) == len(again) == 12  # its masks are not predicted in turn
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "pred2").mkdir()
    (tmp_path / "pred2" / "p1").symlink_to(elsewhere)
    with pytest.raises(RunFolderError, match=r"pred2/p1 is a symbolic link"):
        api.predict(tmp_path / "run", root / "images", tmp_path / "pred2")
    assert not list(elsewhere.iterdir()) and not (tmp_path / "pred2" / "p0").exists()


def test_predict_on_a_dataset_folder_segments_its_images_not_its_masks(tmp_path):
    """Pointed at a dataset's own folder (images/ + masks/, or train/ and test/ folders of them),
    predict segments the images, not the masks or labels beside them."""
    from conftest import tiny_config

    from superdiffusion import api

    root = write_pair_folder(tmp_path / "data", n=8, split=False)
    api.train(tiny_config("method=supervised", f"data.root={root}", "data.val_fraction=0.25"), tmp_path / "run")
    written = api.predict(tmp_path / "run", root, tmp_path / "pred")
    assert sorted({p.parent.name for p in written}) == ["images"] and len(written) == 8
    split = tmp_path / "split"
    write_pair_folder(split / "Training", n=4, split=False)
    (write_pair_folder(split / "test", n=2, split=False) / "masks").rename(split / "test" / "labels")
    written = api.predict(tmp_path / "run", split, tmp_path / "pred-split")
    assert sorted(p.relative_to(tmp_path / "pred-split").parent.as_posix() for p in written) == (
        ["Training/images"] * 4 + ["test/images"] * 2
    )
    cvc = _renamed(write_pair_folder(tmp_path / "flat", n=3, split=False), tmp_path / "cvc", "Original", "Ground Truth")
    written = api.predict(tmp_path / "run", cvc, tmp_path / "pred-cvc")
    assert sorted(p.relative_to(tmp_path / "pred-cvc").as_posix() for p in written) == [
        f"Original/{k}.png" for k in range(3)
    ]


def test_masks_kept_beside_their_images(tmp_path):
    """Kaggle-style sets keep each mask beside its image, named after it (LGG's
    TCGA_A/TCGA_A_1.tif + TCGA_A_1_mask.tif, BUSI's 'benign (1).png' + 'benign (1)_mask.png'),
    often one folder per patient: read as pairs, grouped by their folder; predict on such a
    folder leaves the masks out."""
    flat = write_pair_folder(tmp_path / "flat", n=30, split=False)
    root = tmp_path / "lgg"
    for k in range(30):
        patient = root / f"TCGA_{k // 3}"
        patient.mkdir(parents=True, exist_ok=True)
        shutil.copy(flat / "images" / f"case{k}.png", patient / f"TCGA_{k // 3}_{k % 3}.png")
        shutil.copy(flat / "masks" / f"case{k}.png", patient / f"TCGA_{k // 3}_{k % 3}_mask.png")
    pairs = scan_folder(root)
    assert [p.id for p in pairs[:2]] == ["TCGA_0/TCGA_0_0", "TCGA_0/TCGA_0_1"] and len(pairs) == 30
    assert pairs[1].mask.name == "TCGA_0_1_mask.png" and pairs[1].columns["folder"] == "TCGA_0"
    data = build_data(DataConfig(root=str(root), size=[16, 16], labeled_percent=50, val_fraction=0.25), seed=0)
    assert data.grouped_by == "folder" and sum(map(len, (data.labeled, data.unlabeled, data.val, data.test))) == 30
    from superdiffusion.plan import plan_for

    plan = plan_for(root, cache=False)
    assert plan.settings["data.group_column"] == "folder" and plan.fingerprint["images"] == 30
    assert {m.max().item() for m in data.labeled.masks} == {1}  # the masks read as masks, not as images
    second = np.zeros_like(np.asarray(Image.open(flat / "masks" / "case0.png")))
    second[-4:, -5:] = 255  # BUSI: a second lesion, in a mask of its own
    Image.fromarray(second).save(root / "TCGA_0" / "TCGA_0_0_mask_1.png")
    pairs = scan_folder(root)
    assert [m.name for m in pairs[0].mask] == ["TCGA_0_0_mask.png", "TCGA_0_0_mask_1.png"]
    union = read_mask(pairs[0].mask, 2, "binary")  # a binary task: the union of the lesions
    first = read_mask(root / "TCGA_0" / "TCGA_0_0_mask.png", 2, "binary")
    assert union.sum() == first.sum() + 20 and union[-1, -1] == 1
    with pytest.raises(DataError, match=r"TCGA_0_0_mask.png: one of 2 masks of one image; in a task of 3 classes"):
        read_mask(pairs[0].mask, 3, "index")
    assert plan_for(root, cache=False).fingerprint["images"] == 30
    from conftest import tiny_config

    from superdiffusion import api

    api.train(tiny_config("method=supervised", f"data.root={root}", "data.val_fraction=0.25"), tmp_path / "run")
    assert "TCGA_0/TCGA_0_0" in (tmp_path / "run" / "splits.json").read_text()  # the image of two masks trained
    written = api.predict(tmp_path / "run", root, tmp_path / "pred")  # the images, not their masks
    assert len(written) == 30 and (tmp_path / "pred" / "TCGA_3" / "TCGA_3_2.png").is_file()
    (root / "TCGA_1" / "TCGA_1_2_mask.png").unlink()  # an image without a mask: unlabeled
    assert [p.id for p in scan_folder(root) if p.mask is None] == ["TCGA_1/TCGA_1_2"]


def test_a_folder_split_into_train_val_test_folders(tmp_path):
    """Many public sets come as train/, val/ and test/ folders (Training/, Testing/ ...), each of
    images/ + masks/: the folders give the splits, and ids keep their folder."""
    root = tmp_path / "data"
    write_pair_folder(root / "Training", n=8, split=False)
    write_pair_folder(root / "val", n=3, split=False)
    write_pair_folder(root / "Testing", n=3, split=False)
    pairs = scan_folder(root)
    assert {p.id: p.split for p in pairs}["Testing/case2"] == "test" and len(pairs) == 14
    data = build_data(DataConfig(root=str(root), size=[16, 16], labeled_percent=50), seed=0)
    assert len(data.test) == 3 and len(data.val) == 3 and all(i.startswith("val/") for i in data.val.ids)
    (root / "split.csv").write_text("id,split\n")
    with pytest.raises(DataError, match=r"split.csv: the Testing/, Training/ and val/ folders already give"):
        scan_folder(root)


def _renamed(flat, root, images, masks, image_name="{}", mask_name="{}", mask_suffix=None):
    """``flat``'s pairs under folders and names of a public set's own choosing."""
    for k in range(len(list((flat / "images").iterdir()))):
        for source, folder, name in ((flat / "images", images, image_name), (flat / "masks", masks, mask_name)):
            target = (
                root / folder / (name.format(k) + (mask_suffix if mask_suffix and source.name == "masks" else ".png"))
            )
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / f"case{k}.png", target)
    return root


def test_image_and_mask_folders_found_by_pairing_their_names(tmp_path):
    """Public sets name their two folders as they like (ISIC's ..._Training_Input/ and
    ..._GroundTruth/ with ISIC_0000000_segmentation.png, CVC-ClinicDB's Original/ and
    'Ground Truth/' with equal names, Shenzhen's CXR_png/ and mask/): the folder whose files pair
    with the other's by name, and read as masks, holds the masks; each is read as such."""
    flat = write_pair_folder(tmp_path / "flat", n=12, split=False)
    isic = _renamed(flat, tmp_path / "isic", "ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth",
                    "ISIC_{:07d}", "ISIC_{:07d}_segmentation")  # fmt: skip
    (isic / "ISIC2018_Task1-2_Training_Input" / "LICENSE.txt").write_text("a licence\n")
    cvc = _renamed(flat, tmp_path / "cvc", "Original", "Ground Truth", "{}", "{}")
    shenzhen = _renamed(flat, tmp_path / "shenzhen", "CXR_png", "mask", "CHNCXR_{:04d}_0", "CHNCXR_{:04d}_0_mask")
    plain = _renamed(flat, tmp_path / "plain", "A", "B", "{}", "{}")  # no word says which: the files do
    for root, images in (
        (isic, "ISIC2018_Task1-2_Training_Input"),
        (cvc, "Original"),
        (shenzhen, "CXR_png"),
        (plain, "A"),
    ):
        pairs = scan_folder(root)
        assert len(pairs) == 12 and all(p.image.parent.name == images for p in pairs), root
        assert all(p.mask.parent.name != images for p in pairs)
        data = build_data(DataConfig(root=str(root), size=[16, 16], labeled_percent=50), seed=0)
        assert {m.max().item() for m in data.labeled.masks} == {1}  # the masks read as masks
    from superdiffusion.plan import plan_for

    assert plan_for(cvc, cache=False).fingerprint["images"] == 12


def test_ambiguous_mask_folders_are_named_not_guessed(tmp_path):
    """DRIVE keeps beside images/ both the vessel masks (1st_manual/21_manual1.gif) and the field
    of view (mask/21_training_mask.gif): either could be read as the masks, so neither is guessed;
    the line names both."""
    flat = write_pair_folder(tmp_path / "flat", n=6, split=False)
    drive = _renamed(flat, tmp_path / "drive" / "training", "images", "1st_manual", "{}_training", "{}_manual1")
    _renamed(flat, drive, "images", "mask", "{}_training", "{}_training_mask")
    _renamed(flat, tmp_path / "drive" / "test", "images", "1st_manual", "{}_test", "{}_manual1")
    _renamed(flat, tmp_path / "drive" / "test", "images", "mask", "{}_test", "{}_test_mask")
    with pytest.raises(DataError, match=r"drive/test: images/ sits beside 2 folders .*1st_manual/, mask/\); name the"):
        scan_folder(tmp_path / "drive")
    pairs = scan_folder(tmp_path / "drive", masks="1st_manual")  # data.masks: named, in each split folder
    assert {p.mask.parent.name for p in pairs} == {"1st_manual"} and len(pairs) == 12
    assert {p.id: p.mask.name for p in pairs}["test/3_test"] == "3_manual1.png"
    data = build_data(DataConfig(root=str(tmp_path / "drive"), size=[16, 16], masks="1st_manual"), seed=0)
    assert len(data.test) == 6
    from superdiffusion.plan import plan_for

    assert plan_for(tmp_path / "drive", cache=False, masks="1st_manual").fingerprint["images"] == 12
    with pytest.raises(DataError, match=r"test/2nd_manual: data.masks names no folder"):
        scan_folder(tmp_path / "drive", masks="2nd_manual")
    with pytest.raises(ValueError, match=r"data.masks names a folder inside data.root"):
        DataConfig(masks="../elsewhere")


def test_a_mask_folder_named_otherwise_beside_images_is_planned_and_read(tmp_path):
    """images/ beside GroundTruth/ (a name the reader does not know): the plan and the reader
    both take GroundTruth/ as the masks, since its files pair with the images."""
    from superdiffusion.plan import plan_for

    flat = write_pair_folder(tmp_path / "flat", n=12, split=False)
    root = _renamed(flat, tmp_path / "data", "images", "GroundTruth", "{}", "{}_GT")
    assert plan_for(root, cache=False).fingerprint["images"] == 12
    assert all(p.mask.parent.name == "GroundTruth" for p in scan_folder(root))


def test_patient_folders_of_like_named_slices_are_not_taken_for_image_and_mask_folders(tmp_path):
    """Patient folders keeping 1.png + 1_mask.png each pair with one another by name; they are
    patients, not a folder of images and a folder of masks."""
    flat = write_pair_folder(tmp_path / "flat", n=9, split=False)
    root = tmp_path / "data"
    for k in range(9):
        (root / f"p{k // 3}").mkdir(parents=True, exist_ok=True)
        shutil.copy(flat / "images" / f"case{k}.png", root / f"p{k // 3}" / f"{k % 3}.png")
        shutil.copy(flat / "masks" / f"case{k}.png", root / f"p{k // 3}" / f"{k % 3}_mask.png")
    assert [p.id for p in scan_folder(root)][:4] == ["p0/0", "p0/1", "p0/2", "p1/0"]


def test_images_without_masks_train_unlabeled(tmp_path):
    """Shenzhen's CXR_png/ holds 662 images and mask/ 566 masks, and a user who has drawn a few
    masks keeps them beside all the images: the images without a mask train as unlabeled images,
    never in validation or test, and every masked training image is labeled (planned)."""
    from superdiffusion.plan import plan_for

    root = _renamed(write_pair_folder(tmp_path / "flat", n=12, split=False), tmp_path / "data", "CXR_png", "mask",
                    "CHNCXR_{:04d}_0", "CHNCXR_{:04d}_0_mask")  # fmt: skip
    for k in (3, 7):
        (root / "mask" / f"CHNCXR_{k:04d}_0_mask.png").unlink()
    assert [p.id for p in scan_folder(root) if p.mask is None] == ["CHNCXR_0003_0", "CHNCXR_0007_0"]
    data = build_data(DataConfig(root=str(root), size=[16, 16], labeled_percent=100, val_fraction=0.2), seed=0)
    assert set(data.unlabeled.ids) == {"CHNCXR_0003_0", "CHNCXR_0007_0"}
    assert sorted(data.labeled.ids + data.val.ids + data.test.ids) == [
        f"CHNCXR_{k:04d}_0" for k in range(12) if k not in (3, 7)
    ]
    plan = plan_for(root, cache=False)
    assert plan.settings["data.labeled_percent"] == 100
    assert plan.reasons["data.labeled_percent"].startswith("2 of the 12 images have no mask")
    (root / "split.csv").write_text(
        "id,split\n" + "".join(f"CHNCXR_{k:04d}_0,{'test' if k in (7, 9, 10) else 'train'}\n" for k in range(12))
    )
    with pytest.raises(DataError, match=r"CHNCXR_0007_0.png: a test image without a mask"):
        build_data(DataConfig(root=str(root), size=[16, 16]), seed=0)
    (root / "split.csv").unlink()
    for mask in (root / "mask").iterdir():
        mask.unlink()
    with pytest.raises(DataError, match=r"no image|folder"):
        scan_folder(root)


def test_a_folder_wrapping_the_dataset_is_read_as_the_dataset(tmp_path):
    """Unzipping Kvasir-SEG gives kvasir-seg/Kvasir-SEG/images + masks (often beside a __MACOSX/
    folder, or notes such as its kavsir_bboxes.json): data.root=kvasir-seg reads the one folder
    inside."""
    from superdiffusion.plan import plan_for

    root = tmp_path / "kvasir-seg"
    write_pair_folder(root / "Kvasir-SEG", n=8, split=False)
    (root / "__MACOSX" / "Kvasir-SEG").mkdir(parents=True)
    (root / ".DS_Store").write_bytes(b"\0")
    data = build_data(DataConfig(root=str(root), size=[16, 16], labeled_percent=50), seed=0)
    assert sum(map(len, (data.labeled, data.unlabeled, data.val, data.test))) == 8
    assert plan_for(root, cache=False).fingerprint["images"] == 8
    (root / "kavsir_bboxes.json").write_text("{}")  # notes beside the one folder: still a wrapper
    (root / "README.txt").write_text("Kvasir-SEG")
    assert plan_for(root, cache=False).fingerprint["images"] == 8
    (root / "cover.png").write_bytes((root / "Kvasir-SEG" / "images" / "case0.png").read_bytes())
    with pytest.raises(DataError, match=r"kvasir-seg: no images/ folder"):  # an image beside it: not a wrapper
        plan_for(root, cache=False)
    (root / "cover.png").unlink()
    alone = tmp_path / "unlabeled"  # a folder of images/ alone is a dataset folder, not a wrapper
    shutil.copytree(root / "Kvasir-SEG" / "images", alone / "images")
    extra = build_data(DataConfig(root=str(root), size=[16, 16], labeled_percent=50, unlabeled_root=str(alone)), 0)
    assert len(extra.unlabeled) == len(data.unlabeled) + 8


def test_slices_named_by_their_series_are_split_whole():
    """A flat folder of a volume's slices (``patient001_slice_03``): a slice-by-slice split would
    put one patient's neighbouring slices in training and test, so the names group them."""
    from superdiffusion.data.splits import name_series

    acdc = [f"patient{p:03d}_frame{f:02d}_slice_{s}" for p in range(1, 13) for f in (1, 12) for s in range(3)]
    assert name_series(acdc)["patient007_frame12_slice_2"] == "patient007"  # frames of one heart together
    assert name_series([f"case_{p:05d}_{s:03d}" for p in range(12) for s in range(4)])["case_00003_002"] == "case_00003"
    assert name_series([f"{p}_Left_{s}" for p in range(12) for s in range(4)])["3_Left_2"] == "3_Left"
    unrelated = {
        "isic": [f"ISIC_{i:07d}" for i in range(40)],  # one prefix: a collection, not a patient
        "ph2": [f"IMD{i:03d}" for i in range(40)],
        "cvc": [str(i) for i in range(1, 41)],
        "kvasir": [f"cju{i}x{i * 7}qkwl35piu0993l0dewei{i % 10}" for i in range(40)],  # one image a name
        "shenzhen": [f"CHNCXR_{i:04d}_{i % 2}" for i in range(40)],
        "drive": [f"{i}_training" for i in range(21, 41)],
        "classes": [f"{c}_{i:03d}" for c in ("benign", "malignant", "normal") for i in range(14)],  # 3 classes
    }
    for name, ids in unrelated.items():
        assert name_series(ids) is None, name


def test_a_flat_folder_of_slices_is_split_by_patient(tmp_path):
    root = write_pair_folder(tmp_path / "slices", n=48, split=False)
    for k, folder in [(k, f) for k in range(48) for f in ("images", "masks")]:
        (root / folder / f"case{k}.png").rename(root / folder / f"patient{k // 4:03d}_slice_{k % 4:02d}.png")
    data = build_data(DataConfig(root=str(root), size=[16, 16], labeled_percent=50, val_fraction=0.25), seed=0)
    patients = [{i.split("_")[0] for i in s.ids} for s in (data.labeled, data.unlabeled, data.val, data.test)]
    train, val, test = patients[0] | patients[1], patients[2], patients[3]
    assert not (train & val or train & test or val & test), patients
    assert data.grouped_by == "series"
    assert build_data(DataConfig(root=str(root), size=[16, 16], group_column=None), seed=0).grouped_by is None


def _ssl4mis_acdc(root: Path, patients: int = 12, side: int = 16) -> Path:
    """ACDC as the semi-supervised codebases keep it: ``data/CASE.h5`` volumes and
    ``data/slices/CASE_slice_K.h5``, each an ``image`` (float, normalised) and a ``label``
    (class indices 0-3) in one HDF5 file."""
    import h5py

    (root / "data" / "slices").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for p in range(1, patients + 1):
        for frame in (1, 12):
            label = np.zeros((3, side, side), np.uint8)
            label[:, 3:9, 4:10], label[:, 5:7, 6:8], label[:, 10:13, 2:5] = 1, 2, 3
            image = rng.normal(0, 0.1, label.shape).astype(np.float32) + label
            case = f"patient{p:03d}_frame{frame:02d}"
            with h5py.File(root / "data" / f"{case}.h5", "w") as handle:
                handle["image"], handle["label"] = image, label
            for k in range(3):
                with h5py.File(root / "data" / "slices" / f"{case}_slice_{k}.h5", "w") as handle:
                    handle["image"], handle["label"] = image[k], label[k]
    return root


def test_2d_slices_kept_as_hdf5_image_and_label(tmp_path):
    """A folder of HDF5 files each holding one 2D slice's ``image`` and ``label`` (the 2D half of
    the semi-supervised codebases' ACDC) is a 2D dataset: planned as such, its labels read from
    the same file, its slices grouped by patient; beside it, its folder's volumes read as 3D."""
    from conftest import tiny_config

    from superdiffusion import api
    from superdiffusion.data.volumes import scan_volumes
    from superdiffusion.plan import plan_for

    root = _ssl4mis_acdc(tmp_path / "ACDC")
    slices = root / "data" / "slices"
    plan = plan_for(slices, cache=False)
    assert plan.settings["data.spatial_dims"] == 2 and plan.settings["data.num_classes"] == 4
    assert plan.settings["data.mask_mode"] == "index" and plan.settings["data.group_column"] == "series"
    cfg = DataConfig(root=str(slices), size=[16, 16], num_classes=4, mask_mode="index", normalize="percentile")
    data = build_data(cfg, seed=0)
    assert data.grouped_by == "series" and len(data.test.ids) + len(data.val.ids) + len(data.labeled.ids) > 0
    k = data.test.ids.index(next(i for i in data.test.ids if i.endswith("_slice_1")))
    expected = np.zeros((16, 16), np.int64)
    expected[3:9, 4:10], expected[5:7, 6:8], expected[10:13, 2:5] = 1, 2, 3
    assert np.array_equal(data.test.masks[k].numpy(), expected)
    assert len(scan_volumes(root / "data")) == 24  # the volumes beside slices/, not the slices
    run = tmp_path / "run"
    api.train(
        tiny_config(
            "method=supervised",
            f"data.root={slices}",
            "data.size=[16, 16]",
            "data.num_classes=4",
            "data.mask_mode=index",
        ),
        run,
    )
    written = api.predict(run, slices, tmp_path / "pred")
    assert len(written) == 72 and written[0].name.endswith("_slice_0.nii.gz")
    volume = root / "data" / "patient001_frame01.h5"  # the volumes beside, z first: slice by slice along z
    (out,) = api.predict(run, volume, tmp_path / "pred-volume")
    import nibabel as nib

    predicted = np.asarray(nib.load(str(out)).dataobj)
    assert out.name == "patient001_frame01.nii.gz" and predicted.shape == (3, 16, 16)
    for k in range(3):
        one = np.asarray(nib.load(str(tmp_path / "pred" / f"patient001_frame01_slice_{k}.nii.gz")).dataobj)
        assert np.array_equal(predicted[k], one)


def test_images_and_masks_named_by_a_word_and_their_number_pair_by_it(tmp_path):
    """``images/img_0001.png`` with ``masks/mask_0001.png``, ``image7.jpg`` with ``label7.png``:
    names that differ in their word pair by the number they end in (they were taken for images
    without masks)."""
    flat = write_pair_folder(tmp_path / "flat", n=12, split=False)
    for name, (image, mask) in {"kaggle": ("img_{:04d}", "mask_{:04d}"), "word": ("image{}", "label{}")}.items():
        root = _renamed(flat, tmp_path / name, "images", "masks", image, mask)
        pairs = scan_folder(root)
        numbers = [int(re.search(r"\d+$", p.id)[0]) for p in pairs]
        assert len(pairs) == 12 and [p.mask.name for p in pairs] == [mask.format(k) + ".png" for k in numbers]
    one_missing = _renamed(flat, tmp_path / "missing", "images", "masks", "img_{:04d}", "mask_{:04d}")
    (one_missing / "masks" / "mask_0003.png").unlink()  # numbers pair, one image lacks its mask: unlabeled
    assert [p.id for p in scan_folder(one_missing) if p.mask is None] == ["img_0003"]


def test_one_folder_per_image_with_a_mask_per_object(tmp_path):
    """The 2018 Data Science Bowl keeps each image in a folder of its own,
    ``CASE/images/CASE.png`` beside ``CASE/masks/*.png``, one mask a nucleus: each folder is one
    image whose objects' masks read as their union; folders of whole datasets (one a centre:
    ``data_C1/images/`` + ``data_C1/masks/``) are read the same way, their ids after the folder."""
    rng = np.random.default_rng(0)
    root = tmp_path / "stage1_train"
    union = {}
    for case in [f"{rng.integers(1e12):x}" for _ in range(12)]:
        (root / case / "images").mkdir(parents=True)
        (root / case / "masks").mkdir()
        Image.fromarray((rng.random((20, 24, 4)) * 255).astype(np.uint8)).save(root / case / "images" / f"{case}.png")
        union[case] = np.zeros((20, 24), np.int64)
        for k in range(1 + len(union) % 3):
            nucleus = np.zeros((20, 24), np.uint8)
            nucleus[2 + 6 * k : 6 + 6 * k, 3 + k : 9 + k] = 255
            Image.fromarray(nucleus).save(root / case / "masks" / f"{rng.integers(1e12):x}.png")
            union[case] |= nucleus > 0
    pairs = scan_folder(root)
    assert sorted(p.id for p in pairs) == sorted(union)
    for pair in pairs:
        assert np.array_equal(read_mask(pair.mask, 2, "binary"), union[pair.id])
    from superdiffusion.plan import plan_for

    assert (
        "each of the 12 images sits in a folder of its own" in plan_for(root, cache=False).reasons["data.group_column"]
    )
    centres = tmp_path / "centres"
    for c in (1, 2):
        write_pair_folder(centres / f"data_C{c}", n=4, split=False)
    assert [p.id for p in scan_folder(centres)][:5] == [f"data_C1/case{k}" for k in range(4)] + ["data_C2/case0"]
    first = root / next(iter(union)) / "images"
    shutil.copy(next(first.iterdir()), first / "second.png")
    with pytest.raises(DataError, match=r"mask without an image"):
        scan_folder(root)  # two images in a case folder: its masks name neither


def test_masks_tagged_before_the_image_name_pair_with_it(tmp_path):
    """QaTa-COV19 names each mask after its image with a tag in front (``Images/covid_1.png`` and
    ``Ground-truths/mask_covid_1.png``): read as its mask, as a tag after the name is."""
    flat = write_pair_folder(tmp_path / "flat", n=6, split=False)
    root = _renamed(
        flat, tmp_path / "qata", "Images", "Ground-truths", "sub-S{:05d}_run-1_cr", "mask_sub-S{:05d}_run-1_cr"
    )
    pairs = scan_folder(root)
    assert len(pairs) == 6 and all(p.mask.name == f"mask_{p.id}.png" for p in pairs)


def test_several_masks_of_one_image_are_parts_when_disjoint_and_annotators_when_they_overlap(tmp_path):
    """Montgomery keeps each lung in a folder of its own (``ManualMask/leftMask/`` and
    ``rightMask/``, every image named in each): disjoint masks of one image are parts, read as
    their union, as ``x_mask`` + ``x_mask_1`` are. Two experts' masks of one structure overlap:
    not merged, but named, with the setting that picks one folder."""
    flat = write_pair_folder(tmp_path / "flat", n=12, split=False)
    root = _renamed(
        flat, tmp_path / "montgomery", "CXR_png", "ManualMask/leftMask", "MCUCXR_{:04d}_0", "MCUCXR_{:04d}_0"
    )
    (root / "ManualMask" / "rightMask").mkdir()
    for mask in (root / "ManualMask" / "leftMask").iterdir():
        right = np.zeros_like(np.asarray(Image.open(mask)))
        right[-4:, -5:] = 255  # the other lung: disjoint from the first
        Image.fromarray(right).save(root / "ManualMask" / "rightMask" / mask.name)
    pairs = scan_folder(root)
    assert len(pairs) == 12 and [m.parent.name for m in pairs[0].mask] == ["leftMask", "rightMask"]
    left = read_mask(pairs[0].mask[0], 2, "binary")
    assert read_mask(pairs[0].mask, 2, "binary").sum() == left.sum() + 20
    experts = _renamed(flat, tmp_path / "experts", "images", "masks/expert1", "{}", "{}")
    _renamed(flat, experts, "images", "masks/expert2", "{}", "{}")  # the same masks: two experts agreeing
    with pytest.raises(
        DataError, match=r"0.png: its masks expert1/0.png, expert2/0.png overlap .*\(data.masks=masks/expert1"
    ):
        scan_folder(experts)
    assert scan_folder(experts, masks="masks/expert1")[0].mask == experts / "masks" / "expert1" / "0.png"
    lesions = _renamed(flat, tmp_path / "busi", "images", "masks", "{}", "{}_mask")
    for mask in list((lesions / "masks").iterdir()):
        second = np.zeros_like(np.asarray(Image.open(mask)))
        second[-4:, -5:] = 255
        Image.fromarray(second).save(mask.with_name(mask.stem + "_1.png"))
    assert [m.name for m in scan_folder(lesions)[0].mask] == ["0_mask.png", "0_mask_1.png"]


def test_masks_tagged_beside_their_images_in_one_folder(tmp_path):
    """CHASE_DB1 keeps, in one folder, each image with two experts' vessel masks named after it
    (``Image_01L.jpg``, ``Image_01L_1stHO.png``, ``Image_01L_2ndHO.png``): the tags are found, the
    two experts' masks are not merged, and ``data.masks=_1stHO`` picks one expert's."""
    flat = write_pair_folder(tmp_path / "flat", n=6, split=False)
    root = tmp_path / "chase"
    root.mkdir()
    for k in range(6):
        shutil.copy(flat / "images" / f"case{k}.png", root / f"Image_{k:02d}L.jpg.png")
        for expert in ("1stHO", "2ndHO"):
            shutil.copy(flat / "masks" / f"case{k}.png", root / f"Image_{k:02d}L_{expert}.png")
    for path in root.glob("*.jpg.png"):
        path.rename(path.with_name(path.name.replace(".jpg.png", ".png")))
    with pytest.raises(DataError, match=r"Image_00L.png: its masks Image_00L_1stHO.png, Image_00L_2ndHO.png overlap "
                                        r".*\(data.masks=_1stHO, say\)"):  # fmt: skip
        scan_folder(root)
    pairs = scan_folder(root, masks="_1stHO")
    assert len(pairs) == 6 and all(p.mask.name == f"{p.id}_1stHO.png" for p in pairs)
    for path in root.glob("*_2ndHO.png"):
        path.unlink()
    assert [p.mask.name for p in scan_folder(root)] == [f"Image_{k:02d}L_1stHO.png" for k in range(6)]
    with pytest.raises(DataError, match=r"no mask is tagged '_3rdHO' after its image's name \(the tags: _1stHO\)"):
        scan_folder(root, masks="_3rdHO")
    with pytest.raises(DataError, match=r"data.masks=_1stHO names the tag of masks kept beside .* in masks/"):
        scan_folder(flat, masks="_1stHO")  # not dropped where the masks are in a folder
    copies = tmp_path / "copies"  # images beside flipped copies of themselves: the copies are no masks
    copies.mkdir()
    for k in range(6):
        shutil.copy(flat / "images" / f"case{k}.png", copies / f"x{k}.png")
        shutil.copy(flat / "images" / f"case{k}.png", copies / f"x{k}_flip.png")
    with pytest.raises(DataError, match=r"no image with its mask beside it"):
        scan_folder(copies)


def test_files_derived_from_the_images_are_not_unlabeled_images(tmp_path, caplog):
    """ISIC 2017's image folder holds, beside each ``ISIC_0000000.jpg``, its
    ``ISIC_0000000_superpixels.png``: files named after an image plus a tag, for most of the
    images, are derived from them, not more images; they are left out (logged), not trained as
    unlabeled images."""
    flat = write_pair_folder(tmp_path / "flat", n=6, split=False)
    root = _renamed(flat, tmp_path / "isic", "ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth",
                    "ISIC_{:07d}", "ISIC_{:07d}_segmentation")  # fmt: skip
    rng = np.random.default_rng(0)
    for k in range(6):
        superpixels = (rng.random((24, 20, 3)) * 255).astype(np.uint8)
        Image.fromarray(superpixels).save(root / "ISIC-2017_Training_Data" / f"ISIC_{k:07d}_superpixels.png")
    with caplog.at_level("INFO", logger="superdiffusion"):
        pairs = scan_folder(root)
    assert [p.id for p in pairs] == [f"ISIC_{k:07d}" for k in range(6)] and all(p.mask is not None for p in pairs)
    assert "6 files named after an image plus '_superpixels'" in caplog.text
    (root / "ISIC-2017_Training_Part1_GroundTruth" / "ISIC_0000005_segmentation.png").unlink()
    unlabeled = [p.id for p in scan_folder(root) if p.mask is None]
    assert unlabeled == ["ISIC_0000005"]  # an image without its mask is still an unlabeled image


def test_sixteen_bit_colour_tiff_keeps_all_its_bits(tmp_path):
    """Pillow decodes a 16-bit colour TIFF or PNG (multi-channel microscopy) to its top 8 bits: 12-bit
    data in it (0-4095) would keep 16 grey levels. It is read with every bit, and planned as the
    16-bit image it is."""
    import itk

    from superdiffusion.plan import plan_for

    root = write_pair_folder(tmp_path / "tif16", n=6, split=False)
    rng = np.random.default_rng(0)
    stored = {}
    for k in range(6):
        (root / "images" / f"case{k}.png").unlink()
        stored[k] = (rng.random((24, 20, 3)) * 4095).astype(np.uint16)  # 12-bit data in 16-bit samples
        itk.imwrite(itk.image_from_array(stored[k], is_vector=True), str(root / "images" / f"case{k}.tif"))
    img = read_image(root / "images" / "case0.tif")
    assert img.shape == (3, 24, 20) and np.allclose(img, stored[0].transpose(2, 0, 1) / 65535, atol=1e-7)
    itk.imwrite(itk.image_from_array(stored[1], is_vector=True), str(tmp_path / "png16.png"))  # PNG: the same
    assert np.allclose(read_image(tmp_path / "png16.png"), stored[1].transpose(2, 0, 1) / 65535, atol=1e-7)
    plan = plan_for(root, cache=False)
    assert plan.fingerprint["bit_depth"] == ["16"] and plan.settings["data.normalize"] == "percentile"


def test_images_and_masks_both_tagged_beside_each_other(tmp_path):
    """Cellpose's data keep ``train/000_img.png`` beside ``train/000_masks.png`` (instance labels):
    an image named with a tag of its own pairs with the mask of the same name less its tag."""
    from superdiffusion.plan import plan_for

    root = tmp_path / "cellpose"
    for split, n in (("train", 10), ("test", 3)):
        (root / split).mkdir(parents=True)
        for k in range(n):
            Image.fromarray(np.full((20, 24, 3), 40 + k, np.uint8)).save(root / split / f"{k:03d}_img.png")
            cells = np.zeros((20, 24), np.uint16)
            for cell in range(1 + k % 4):  # instance ids 1..n, n varying, each one blob
                cells[1 + 5 * cell : 4 + 5 * cell, 2 + 4 * cell : 6 + 4 * cell] = cell + 1
            Image.fromarray(cells).save(root / split / f"{k:03d}_masks.png")
            if k < 2:  # what training with Cellpose leaves beside them: derived, not images
                Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(root / split / f"{k:03d}_flows.tif")
    pairs = scan_folder(root)
    assert len(pairs) == 13 and all(p.mask.name == p.image.name.replace("_img", "_masks") for p in pairs)
    assert {p.split for p in pairs} == {"train", "test"}
    assert plan_for(root, cache=False).settings["data.mask_threshold"] == 1  # instances: every cell foreground


def test_annotations_that_are_not_masks_are_named(tmp_path):
    """MoNuSeg ships ``Tissue Images/*.tif`` beside ``Annotations/*.xml`` (polygons): the line says
    that the annotation files name the images but are not masks, instead of asking for images/."""
    root = tmp_path / "monuseg"
    (root / "Tissue Images").mkdir(parents=True)
    (root / "Annotations").mkdir()
    for k in range(4):
        Image.fromarray(np.full((20, 24, 3), 90, np.uint8)).save(root / "Tissue Images" / f"TCGA-{k}.tif")
        (root / "Annotations" / f"TCGA-{k}.xml").write_text("<Annotations/>")
    with pytest.raises(DataError, match=r"Annotations: its 4 .xml files are named as the images of Tissue Images "
                                        r"but are not masks"):  # fmt: skip
        scan_folder(root)


def test_predict_segments_the_images_training_reads_not_their_masks_or_derived_files(tmp_path):
    """Predict on a folder keeps what training keeps: Cellpose's ``000_img.png`` (not its
    ``000_masks.png`` or the ``000_flows.tif`` beside them), CHASE_DB1's ``Image_01L.png`` (not the
    experts' ``Image_01L_1stHO.png``) and ISIC 2017's images (not their ``_superpixels.png``)."""
    from conftest import tiny_config

    from superdiffusion import api

    flat = write_pair_folder(tmp_path / "flat", n=6, split=False)
    api.train(tiny_config("method=supervised", f"data.root={flat}", "data.val_fraction=0.25", "train.epochs=1",
                          "train.steps_per_epoch=1"), tmp_path / "run")  # fmt: skip
    layouts = {
        "cellpose": [("{:03d}_img.png", "images"), ("{:03d}_masks.png", "masks"), ("{:03d}_flows.tif", "images")],
        "chase": [("Image_{:02d}L.png", "images"), ("Image_{:02d}L_1stHO.png", "masks"),
                  ("Image_{:02d}L_2ndHO.png", "masks")],
        "isic": [("ISIC_{:07d}.png", "images"), ("ISIC_{:07d}_superpixels.png", "images")],
    }  # fmt: skip
    for name, files in layouts.items():
        root = tmp_path / name
        root.mkdir()
        for k in range(6):
            for pattern, source in files:
                picture = Image.open(flat / source / f"case{k}.png")
                if pattern.endswith("_superpixels.png"):
                    picture = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                picture.save(root / pattern.format(k))
        written = api.predict(tmp_path / "run", root, tmp_path / f"pred-{name}")
        assert sorted(p.name for p in written) == [files[0][0].format(k) for k in range(6)], name


def test_2d_slices_kept_as_numpy_npz_image_and_label(tmp_path):
    """TransUNet's Synapse keeps each training slice as a NumPy ``.npz`` of an ``image`` (floats
    in [0, 1]) and a ``label`` (``train_npz/case0005_slice000.npz``) and each test volume as HDF5
    (``test_vol_h5/case0001.npy.h5``, z first): the slices are a 2D dataset read like HDF5 slices,
    grouped by case, and a 2D model segments the volumes slice by slice; a pickled object array
    is never loaded (it would run code)."""
    import h5py
    from conftest import tiny_config

    from superdiffusion import api
    from superdiffusion.plan import plan_for

    root = tmp_path / "Synapse"
    (root / "train_npz").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for case in range(12):
        for k in range(3):
            label = np.zeros((16, 16), np.uint8)
            label[3:9, 4:10], label[10:13, 2 : 5 + k] = 1, 8
            image = (rng.random((16, 16)) * 0.3 + 0.5 * (label > 0)).astype(np.float32)
            np.savez(root / "train_npz" / f"case{case:04d}_slice{k:03d}.npz", image=image, label=label)
    plan = plan_for(root / "train_npz", cache=False)
    assert plan.settings["data.spatial_dims"] == 2 and plan.settings["data.num_classes"] == 9
    assert plan.settings["data.group_column"] == "series" and plan.fingerprint["images"] == 36
    pairs = scan_folder(root / "train_npz")
    assert len(pairs) == 36 and all(p.mask == p.image for p in pairs)
    image = read_image(pairs[0].image, 1)
    assert image.shape == (1, 16, 16) and np.allclose(image[0], np.load(pairs[0].image)["image"])
    assert read_mask(pairs[0].mask, 9, "index")[10, 2] == 8
    run = tmp_path / "run"
    api.train(tiny_config("method=supervised", f"data.root={root / 'train_npz'}", "data.size=[16, 16]",
                          "data.num_classes=9", "data.mask_mode=index"), run)  # fmt: skip
    (root / "test_vol_h5").mkdir()
    volume = np.stack([np.load(p.image)["image"] for p in pairs[:3]])
    with h5py.File(root / "test_vol_h5" / "case0001.npy.h5", "w") as handle:
        handle["image"], handle["label"] = volume, np.zeros(volume.shape, np.uint8)
    (out,) = api.predict(run, root / "test_vol_h5" / "case0001.npy.h5", tmp_path / "pred")
    import nibabel as nib

    assert nib.load(str(out)).shape == (3, 16, 16)
    (one,) = api.predict(run, pairs[1].image, tmp_path / "pred-slice")
    assert np.array_equal(np.asarray(nib.load(str(one)).dataobj), np.asarray(nib.load(str(out)).dataobj)[1])
    np.savez(root / "train_npz" / "case0000_slice000.npz", image=np.array([object()]), label=np.zeros(1))
    with pytest.raises(DataError, match=r"case0000_slice000.npz: cannot read"):
        read_image(root / "train_npz" / "case0000_slice000.npz")


def test_a_2d_model_segments_a_tiff_stack_page_by_page(tmp_path):
    """A stack given to a 2D model (an EM test volume, ``test-volume.tif``): each page is
    segmented as the same page saved as its own image would be, and the masks are written back
    as a stack of the same pages."""
    from conftest import tiny_config
    from PIL import ImageSequence

    from superdiffusion import api

    root = write_pair_folder(tmp_path / "data", n=8, split=False)
    api.train(tiny_config("method=supervised", f"data.root={root}", "data.val_fraction=0.25", "train.epochs=1"),
              tmp_path / "run")  # fmt: skip
    pages = [Image.open(root / "images" / f"case{k}.png").convert("L") for k in range(3)]
    (tmp_path / "one").mkdir()
    for k, page in enumerate(pages):
        page.save(tmp_path / "one" / f"page{k}.png")
    pages = [Image.fromarray(np.asarray(page)) for page in pages]  # fresh: a PNG's settings would ride along
    pages[0].save(tmp_path / "test-volume.tif", save_all=True, append_images=pages[1:])
    (written,) = api.predict(tmp_path / "run", tmp_path / "test-volume.tif", tmp_path / "pred")
    singles = api.predict(tmp_path / "run", tmp_path / "one", tmp_path / "pred-one")
    assert written.name == "test-volume.tif"
    with Image.open(written) as out:
        found = [np.asarray(page.copy()) for page in ImageSequence.Iterator(out)]
    assert len(found) == 3 and all(np.array_equal(f, np.asarray(Image.open(s))) for f, s in zip(found, sorted(singles)))
