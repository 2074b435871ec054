"""The plan: known-answer folders give the settings a careful user would choose, and train
applies the plan to what the user did not give."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, write_pair_folder
from PIL import Image

from superdiffusion import cli
from superdiffusion.config import resolve
from superdiffusion.data import build_data
from superdiffusion.plan import VOXELS_PER_PATCH, Planner, local_width, plan_for


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPERDIFFUSION_CACHE", str(tmp_path / "cache"))


def _blobs(root: Path, n: int = 6, size=(560, 768), mode="L", dtype=np.uint8, low=0, high=255, mask_ext="png"):
    """Lesion-like discs (a fifth of the short side across) on textured backgrounds."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: size[0], : size[1]]
    for i in range(n):
        cy, cx, r = size[0] // 2 + 20 * i, size[1] // 2 - 15 * i, size[0] // 5 + 5 * i
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        image = rng.uniform(low, low + 0.4 * (high - low), size)
        image[mask] = rng.uniform(low + 0.6 * (high - low), high, int(mask.sum()))
        Image.fromarray(image.astype(dtype), mode=None).convert(mode).save(root / "images" / f"case{i}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"case{i}.{mask_ext}", quality=60)
    return root


def test_local_width_is_known_for_lines_and_discs():
    line = np.zeros((40, 40), bool)
    line[20, 5:35] = True
    assert np.all(local_width(line) == 1)
    band = np.zeros((40, 40), bool)
    band[18:21, 5:35] = True
    assert np.median(local_width(band)) == 3
    yy, xx = np.mgrid[:100, :100]
    disc = (yy - 50) ** 2 + (xx - 50) ** 2 <= 20**2
    assert np.percentile(local_width(disc), 5) == pytest.approx(39, abs=1)  # the rim too: one disc covers it


def test_thin_structures_at_512_train_at_native_resolution_on_patches(tmp_path):
    assert cli.main(["make-dataset", "thin", str(tmp_path / "thin"), "--count", "6", "--size", "512"]) == 0
    plan = plan_for(tmp_path / "thin")
    assert plan.settings["data.size"] is None
    assert plan.settings["data.patch_size"] == [256, 256]
    assert plan.fingerprint["thinnest_width_px"] <= 3
    assert "native resolution" in plan.reasons["data.size"]


def test_blob_lesions_at_768x560_are_resized_to_128(tmp_path):
    plan = plan_for(_blobs(tmp_path / "blobs"))
    assert plan.settings["data.size"] == [128, 128] and "data.patch_size" not in plan.settings
    assert plan.settings["data.normalize"] == "minmax" and plan.settings["data.mask_mode"] == "binary"
    assert plan.fingerprint["size_median"] == [560, 768]


def test_the_plan_says_how_many_masks_a_run_uses_when_every_image_has_one(tmp_path):
    lines = plan_for(_blobs(tmp_path / "all", n=30, size=(96, 96))).lines()
    assert lines[-1].startswith("# note: every image has a mask") and "at most 3 of these 30" in lines[-1]
    assert "data.labeled_percent=100 uses every mask" in lines[-1]


def test_small_images_keep_about_their_own_size(tmp_path):
    """96 px images train at 96x96 (was: upsampled to 128x128 "as the paper does")."""
    plan = plan_for(_blobs(tmp_path / "small", size=(96, 96)))
    assert plan.settings["data.size"] == [96, 96] and "never upsampled" in plan.reasons["data.size"]


def test_16_bit_images_using_a_small_part_of_their_range_get_percentile_clipping(tmp_path):
    root = _blobs(tmp_path / "b16", size=(200, 240), mode="I;16", dtype=np.uint16, low=1000, high=3000)
    assert Image.open(root / "images" / "case0.png").mode.startswith("I")
    plan = plan_for(root)
    assert plan.settings["data.normalize"] == "percentile"
    assert plan.fingerprint["bit_depth"] == ["16"] and "65535" in plan.reasons["data.normalize"]


def test_jpeg_masks_get_the_threshold_mode(tmp_path):
    plan = plan_for(_blobs(tmp_path / "jpeg", size=(200, 240), mask_ext="jpg"))
    assert plan.settings["data.mask_mode"] == "threshold" and plan.fingerprint["mask_kind"] == "lossy"


def test_index_masks_get_their_classes(tmp_path):
    root = write_pair_folder(tmp_path / "classes")
    for path in (root / "masks").glob("*.png"):
        mask = (np.asarray(Image.open(path)) > 0).astype(np.uint8)
        mask[:3, :3] = 2
        Image.fromarray(mask).save(path)
    plan = plan_for(root)
    assert plan.settings["data.mask_mode"] == "index" and plan.settings["data.num_classes"] == 3


def test_a_volume_folder_gets_a_3d_patch_within_the_budget(tmp_path):
    from test_volumes import write_volumes

    root = write_volumes(tmp_path / "vols", n=4, shape=(180, 200, 120), spacing=(0.8, 0.8, 2.5))
    plan = plan_for(root)
    patch = plan.settings["data.patch_size"]
    assert plan.settings["data.spatial_dims"] == 3 and len(patch) == 3
    assert np.prod(patch) <= VOXELS_PER_PATCH and all(p % 16 == 0 for p in patch)
    assert patch[2] < 120  # the coarse 2.5 mm axis spans most millimetres: it shrinks first
    small = plan_for(write_volumes(tmp_path / "small", n=3, shape=(35, 49, 35)))
    assert small.settings["data.patch_size"] == [32, 48, 32]  # what the Hippocampus preset uses
    thin = plan_for(write_volumes(tmp_path / "thin", n=3, shape=(40, 40, 24), spacing=(1.0, 1.0, 2.0)))
    assert thin.settings["data.patch_size"] == [32, 32, 16]  # was [32, 32, 32]: z padded while x and y were cut
    assert "within the median volume" in thin.reasons["data.patch_size"]


def test_subject_columns_become_the_group_column(tmp_path):
    root = write_pair_folder(tmp_path / "subjects", n=8)
    rows = ["id,split,patient"] + [f"case{i},{'test' if i >= 6 else 'train'},p{i // 2}" for i in range(8)]
    (root / "split.csv").write_text("\n".join(rows) + "\n")
    assert plan_for(root).settings["data.group_column"] == "patient"


def test_train_applies_the_plan_to_what_the_user_did_not_give(tmp_path):
    root = _blobs(tmp_path / "lesions", n=6, size=(200, 240), mode="I;16", dtype=np.uint16, low=1000, high=3000)
    planner = Planner()
    cfg = resolve([f"data.root={root}", "data.mask_mode=threshold"], planner=planner)
    assert cfg.data.normalize == "percentile" and cfg.data.name == "lesions"  # planned
    assert cfg.data.mask_mode == "threshold"  # given: it wins
    record = planner.record()
    assert "data.mask_mode" in record["kept_by_user"] and "data.normalize" in record["applied"]
    # a given resolution leaves both size and patches to the user
    cfg = resolve([f"data.root={root}", "data.size=null", "data.patch_size=[64, 64]"], planner=Planner())
    assert cfg.data.size is None and cfg.data.patch_size == [64, 64]
    # off, and never for presets or the built-in data
    assert resolve([f"data.root={root}", "data.plan=false"], planner=Planner()).data.normalize == "minmax"
    never = Planner()
    resolve([], planner=never)
    resolve(["dataset=pupil", f"data.root={root}"], planner=never)
    assert never.record() is None


def test_a_planned_run_logs_each_value_with_its_reason_and_records_the_plan(tmp_path, capsys):
    root = write_pair_folder(tmp_path / "mydata")
    run = tmp_path / "run"
    tiny = ["method=supervised", *FAST, "eval.batch_size=64"]
    assert cli.main(["train", *tiny, f"data.root={root}", "--out", str(run)]) == 0
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "plan: data.normalize=minmax  # the images use" in out
    assert "plan: data.size=[32, 32]" in out and "(yours kept)" in out  # FAST gives data.size
    result = json.loads((run / "results.json").read_text())
    assert result["plan"]["settings"]["data.name"] == "mydata" and "data.size" in result["plan"]["kept_by_user"]
    assert (run / "plan.json").exists() and "plan: data.name=mydata" in (run / "train.log").read_text()


def test_plan_writes_a_config_that_train_accepts(tmp_path, capsys):
    root = write_pair_folder(tmp_path / "mydata")
    out = tmp_path / "plan.yaml"
    assert cli.main(["plan", str(root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "data.size=[32, 32]  # the images are at most 24 px" in printed
    cfg = resolve(["data.plan=false"], out)  # the file alone gives every planned setting
    assert cfg.data.root == str(root) and cfg.data.name == "mydata" and cfg.data.size == [32, 32]
    assert cli.main(["plan", str(root), "--out", str(out)]) != 0  # never replaced without --force


def test_a_16_bit_png_decoded_as_32_bit_is_planned_as_16_bit(tmp_path, monkeypatch):
    # Pillow before 10.1 decodes a 16-bit PNG as mode "I" (int32): the reader scales it by 65535,
    # and the planner must read the same range (it read 2^31 and called 2,000 levels "under 25 %")
    from superdiffusion import plan as planning
    from superdiffusion.data.folder import read_image

    root = _blobs(tmp_path / "b16", size=(200, 240), mode="I;16", dtype=np.uint16, low=1000, high=3000)
    decoded = planning._raw

    def as_old_pillow(path):
        arr, mode = decoded(path)
        return (arr.astype(np.int32), "I") if mode.startswith("I") else (arr, mode)

    monkeypatch.setattr(planning, "_raw", as_old_pillow)
    plan = plan_for(root)
    assert plan.fingerprint["type_range"] == 65535.0 and "65535" in plan.reasons["data.normalize"]
    image = read_image(root / "images" / "case0.png", 1)
    raw = np.asarray(Image.open(root / "images" / "case0.png")).astype(np.float64)
    assert np.allclose(image[0], raw / 65535, atol=1e-6)  # the reader's range is the same


def _drawn_masks(root: Path, save_mask, mask_dir: str = "masks", n: int = 6) -> dict[str, np.ndarray]:
    """128x128 images with a bright disc each, and their masks written by ``save_mask(mask,
    path_without_suffix)``: the masks as drawn, by id."""
    (root / "images").mkdir(parents=True)
    (root / mask_dir).mkdir()
    yy, xx = np.mgrid[:128, :128]
    rng = np.random.default_rng(0)
    truth = {}
    for i in range(n):
        mask = (yy - 50 - 4 * i) ** 2 + (xx - 60 + 3 * i) ** 2 <= (18 + 2 * i) ** 2
        image = rng.uniform(0, 90, (128, 128, 3))
        image[mask] += 140
        Image.fromarray(image.astype(np.uint8)).save(root / "images" / f"case{i}.png")
        save_mask(mask, root / mask_dir / f"case{i}")
        truth[f"case{i}"] = mask
    return truth


def _red(mask: np.ndarray) -> Image.Image:
    rgb = np.zeros((*mask.shape, 3), np.uint8)
    rgb[mask] = (255, 0, 0)  # a red annotation on black, as drawn in an image editor
    return Image.fromarray(rgb)


MASK_FORMATS = {
    "red-png": lambda m, p: _red(m).save(p.with_suffix(".png")),
    "red-jpeg": lambda m, p: _red(m).save(p.with_suffix(".jpg"), quality=70),
    "gif": lambda m, p: Image.fromarray(m.astype(np.uint8) * 255).save(p.with_suffix(".gif")),
    "labels-folder": lambda m, p: Image.fromarray(m.astype(np.uint8) * 255).save(p.with_suffix(".png")),
}


@pytest.mark.parametrize("fmt", sorted(MASK_FORMATS))
def test_a_users_masks_are_planned_and_read_as_drawn(tmp_path, fmt):
    """Red masks (PNG and JPEG), GIF masks (DRIVE's) and a labels/ folder: the plan picks a mask
    mode that reads every mask as drawn, and the loaded masks are the drawn ones."""
    root = tmp_path / fmt
    truth = _drawn_masks(root, MASK_FORMATS[fmt], "labels" if fmt == "labels-folder" else "masks")
    plan = plan_for(root, cache=False)
    assert plan.fingerprint["foreground_fraction"]["1"] == pytest.approx(
        np.mean([m.mean() for m in truth.values()]), rel=0.05
    )
    settings = [f"{k}={json.dumps(v) if isinstance(v, list) or v is None else v}" for k, v in plan.settings.items()]
    data = build_data(resolve([f"data.root={root}", "data.plan=false", *settings]).data, seed=0)
    read = 0
    for split in (data.labeled, data.val, data.test):
        for case, mask in zip(split.ids, split.masks or []):
            agree = np.mean(mask.numpy() == truth[case])
            assert agree > 0.99, f"{case}: {agree:.3f} of the pixels read as drawn"
            read += 1
    assert read > 0


def _one_planned_update(root: Path):
    """The planned settings of ``root`` for one supervised update on 32x32 images, all labeled."""
    from superdiffusion.plan import Planner

    return resolve(
        [f"data.root={root}", "data.size=[32, 32]", "model.features=[8, 16]", "method=supervised",
         "train.epochs=1", "train.steps_per_epoch=1", "data.labeled_percent=100"],
        planner=Planner(cache=False),
    )  # fmt: skip


def test_grey_coded_class_masks_are_planned_as_classes_and_predicted_in_their_greys(tmp_path):
    """Masks that draw three classes as the visible greys 0, 128 and 255 (as many exports do):
    the plan reads them as classes 0-2 (thresholding would drop class 1 into the background),
    training loads the classes as drawn, and predict writes the same greys back."""
    from superdiffusion import api

    root = tmp_path / "greys"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:48, :48]
    rng = np.random.default_rng(0)
    truth = {}
    for i in range(8):
        classes = np.zeros((48, 48), np.uint8)
        classes[(yy - 24) ** 2 + (xx - 22 - i % 3) ** 2 <= 15**2] = 1  # a disc of class 1
        classes[(yy - 24) ** 2 + (xx - 22 - i % 3) ** 2 <= 6**2] = 2  # its core, class 2
        image = rng.uniform(0, 40, (48, 48)) + 100 * classes
        Image.fromarray(image.astype(np.uint8)).save(root / "images" / f"case{i}.png")
        Image.fromarray(np.array([0, 128, 255], np.uint8)[classes]).save(root / "masks" / f"case{i}.png")
        truth[f"case{i}"] = classes
    plan = plan_for(root, cache=False)
    assert plan.settings["data.mask_mode"] == "index" and plan.settings["data.num_classes"] == 3
    assert plan.settings["data.mask_values"] == [0, 128, 255]
    cfg = _one_planned_update(root)
    data = build_data(cfg.data, seed=0)
    for split in (data.labeled, data.test):
        for case, mask in zip(split.ids, split.masks):
            assert set(np.unique(mask.numpy())) == {0, 1, 2}
            for c in (1, 2):  # each class's share of the image, as drawn (the masks are resized to 32x32)
                assert np.mean(mask.numpy() == c) == pytest.approx(np.mean(truth[case] == c), abs=0.03)
    api.train(cfg, tmp_path / "run")
    written = api.predict(tmp_path / "run", root / "images" / "case0.png", tmp_path / "pred")
    assert set(np.unique(np.asarray(Image.open(written[0])))) <= {0, 128, 255}


def test_a_binary_masks_resampled_edges_are_not_classes():
    """Upsampling a 0/255 square gives a few grey values along its edges: they are a line of
    pixels each, not areas, so the plan keeps the mask binary (thresholded), not 4 classes."""
    from superdiffusion.plan import _grey_levels

    square = np.zeros((24, 24), np.uint8)
    square[6:18, 6:18] = 255
    masks = [np.asarray(Image.fromarray(square).resize((48, 48), Image.BILINEAR))]
    found = np.unique(masks[0]).astype(float)
    assert 5 <= len(found) <= 16  # few enough values to be classes
    assert not _grey_levels(found, masks)
    classes = np.zeros((48, 48), np.uint8)
    classes[8:40, 8:40], classes[18:30, 18:30] = 128, 255
    assert _grey_levels(np.array([0.0, 128.0, 255.0]), [classes])


def test_a_setting_the_user_gives_is_used_or_refused_never_dropped(tmp_path, caplog):
    """data.mask_threshold means thresholded masks, data.patch_size means patches at native
    resolution: the plan follows them; beside a setting that makes them unused, they stop."""
    from superdiffusion.errors import ConfigError
    from superdiffusion.plan import Planner

    root = write_pair_folder(tmp_path / "data")
    cfg = resolve([f"data.root={root}", "data.mask_threshold=100"], planner=Planner(cache=False))
    assert cfg.data.mask_mode == "threshold" and cfg.data.mask_threshold == 100
    cfg = resolve([f"data.root={root}", "data.patch_size=[16, 16]"], planner=Planner(cache=False))
    assert cfg.data.size is None and cfg.data.patch_size == [16, 16]
    with pytest.raises(ConfigError, match="data.mask_threshold applies to data.mask_mode=threshold"):
        resolve([f"data.root={root}", "data.mask_threshold=100", "data.mask_mode=binary"], planner=Planner(cache=False))
    with caplog.at_level("WARNING", logger="superdiffusion"):  # said, not refused: a sweep over data.size may mean it
        resolve([f"data.root={root}", "data.patch_size=[16, 16]", "data.size=[32, 32]"], planner=Planner(cache=False))
    assert "data.patch_size=[16, 16] is not used" in caplog.text
    with pytest.raises(ConfigError, match="data.mask_threshold applies to data.mask_mode=threshold"):
        resolve([f"data.root={root}", "data.mask_threshold=100", "data.plan=false"])


def test_classes_drawn_in_colours_are_planned_as_classes_and_predicted_in_their_colours(tmp_path):
    """Masks that paint each class a colour on black (red and green, as annotation tools
    export them) are classes 0-2, not one thresholded foreground; predict paints them back."""
    from superdiffusion import api

    root = tmp_path / "painted"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:48, :48]
    rng = np.random.default_rng(0)
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 200, 0]], np.uint8)
    truth = {}
    for i in range(8):
        classes = np.zeros((48, 48), np.uint8)
        classes[(yy - 24) ** 2 + (xx - 22 - i % 3) ** 2 <= 15**2] = 1
        classes[(yy - 24) ** 2 + (xx - 22 - i % 3) ** 2 <= 6**2] = 2
        Image.fromarray((rng.uniform(0, 40, (48, 48)) + 100 * classes).astype(np.uint8)).save(
            root / "images" / f"c{i}.png"
        )
        Image.fromarray(palette[classes]).save(root / "masks" / f"c{i}.png")
        truth[f"c{i}"] = classes
    plan = plan_for(root, cache=False)
    assert plan.settings["data.mask_mode"] == "index" and plan.settings["data.num_classes"] == 3
    assert plan.settings["data.mask_values"] == ["#000000", "#00c800", "#ff0000"]
    cfg = _one_planned_update(root)
    data = build_data(cfg.data, seed=0)
    for case, mask in zip(data.test.ids, data.test.masks):
        assert np.mean(mask.numpy() == 2) == pytest.approx(np.mean(truth[case] == 1), abs=0.03)  # red: class 2
        assert np.mean(mask.numpy() == 1) == pytest.approx(np.mean(truth[case] == 2), abs=0.03)  # green: class 1
    api.train(cfg, tmp_path / "run")
    written = api.predict(tmp_path / "run", root / "images" / "c0.png", tmp_path / "pred")
    out = np.asarray(Image.open(written[0]).convert("RGB")).reshape(-1, 3)
    assert {tuple(c) for c in np.unique(out, axis=0)} <= {(0, 0, 0), (255, 0, 0), (0, 200, 0)}


def _instance_folder(root, count=12, size=(60, 80), n_max=14):
    """GlaS-like masks: each gland (a blob) labelled 1..n in its own image, n varying."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        mask = np.zeros(size, np.uint16 if n_max > 255 else np.uint8)
        for g in range(1, 2 + i * (n_max - 1) // (count - 1)):  # 1 to n_max glands, on a grid of 8 px
            y, x = 2 + 8 * ((g - 1) // (size[1] // 8)), 2 + 8 * ((g - 1) % (size[1] // 8))
            mask[y : y + 5, x : x + 5] = g
        image = (rng.uniform(0, 40, size) + 120 * (mask > 0)).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"train_{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"train_{i}.png")
    return root


def test_instance_masks_are_planned_as_one_foreground_class(tmp_path):
    """GlaS labels each gland 1..n in its own image: n classes would be meaningless, and reading
    them as lossy would drop every gland below half the range into the background. The plan
    reads them as foreground (value > 0); masks of classes, each class a blob in every image,
    stay classes."""
    root = _instance_folder(tmp_path / "glas")
    plan = plan_for(root, cache=False)
    assert plan.settings["data.mask_mode"] == "threshold" and plan.settings["data.mask_threshold"] == 1
    assert plan.settings["data.num_classes"] == 2 and "instances" in plan.reasons["data.mask_mode"]
    cfg = _one_planned_update(root)
    data = build_data(cfg.data, seed=0)
    for mask, case in zip(data.test.masks, data.test.ids):
        stored = np.asarray(Image.open(root / "masks" / f"{case}.png").resize(mask.shape[::-1], Image.NEAREST))
        assert np.array_equal(mask.numpy(), stored > 0)  # every gland foreground, whatever its number
    nuclei = _instance_folder(tmp_path / "nuclei", size=(160, 160), n_max=120)  # up to 120 values: not "few classes"
    plan = plan_for(nuclei, cache=False)
    assert plan.settings["data.mask_mode"] == "threshold" and plan.settings["data.mask_threshold"] == 1
    organs = tmp_path / "organs"  # three organs, each one blob in every image: classes
    (organs / "images").mkdir(parents=True)
    (organs / "masks").mkdir()
    for i in range(12):
        mask = np.zeros((60, 80), np.uint8)
        mask[5:20, 5 + i % 3 : 25], mask[25:40, 30:50], mask[45:55, 60:75] = 1, 2, 3
        Image.fromarray((mask * 60).astype(np.uint8)).save(organs / "images" / f"c{i}.png")
        Image.fromarray(mask).save(organs / "masks" / f"c{i}.png")
    plan = plan_for(organs, cache=False)
    assert plan.settings["data.mask_mode"] == "index" and plan.settings["data.num_classes"] == 4


def test_a_fingerprint_cached_by_an_older_reader_is_read_again(tmp_path, monkeypatch):
    """A folder planned before the reader learned instance masks keeps no stale plan: the cache
    entry of the older format is computed again."""
    from superdiffusion import plan as planning

    monkeypatch.setenv(planning.CACHE_ENV, str(tmp_path / "cache"))
    root = _instance_folder(tmp_path / "glas")
    first = planning.fingerprint(root)
    assert first["mask_kind"] == "instances"
    (entry,) = (tmp_path / "cache" / "fingerprints").iterdir()
    stale = json.loads(entry.read_text())
    stale["fingerprint"]["mask_kind"] = "index"  # what the reader of format 5 found
    entry.write_text(json.dumps(stale | {"format": 5}))
    assert planning.fingerprint(root)["mask_kind"] == "instances"


def test_series_in_the_image_names_become_the_group_column(tmp_path):
    root = write_pair_folder(tmp_path / "slices", n=40, split=False)
    for folder in ("images", "masks"):
        for i in range(40):
            (root / folder / f"case{i}.png").rename(root / folder / f"pat{i // 4:02d}-{i % 4:03d}.png")
    plan = plan_for(root, cache=False)
    assert plan.settings["data.group_column"] == "series"
    assert (
        "10 series" in plan.reasons["data.group_column"] and "pat00-000 -> pat00" in plan.reasons["data.group_column"]
    )
