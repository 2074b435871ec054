"""A user's files are never lost and no write follows a link: each case is one row.

Every case starts from a folder holding some of the user's files, runs one command as a user
would, and checks (1) the one line the command printed, (2) that every file the user owned
is still there, byte for byte, and (3) what the project wrote, where it matters.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import FAST, write_pair_folder

from superdiffusion import cli

TINY = ["method=supervised", *FAST, "eval.batch_size=64"]


def _train(out: Path, *extra: str) -> int:
    settings = [e for e in extra if not e.startswith("--")]
    flags = [e for e in extra if e.startswith("--")]
    return cli.main(["train", *TINY, *settings, "--out", str(out), *flags])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    assert _train(run) == 0
    return run


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` (links not followed) and its bytes."""
    files = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if not path.is_symlink():
                files[str(path.relative_to(root))] = path.read_bytes()
    return files


def _one_line(capsys, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    line = err.splitlines()[-1]
    assert line.startswith("superdiffusion: error:"), err
    for word in words:
        assert word in line, line
    return line


# --- 1. training never takes a folder it does not own --------------------------------------
def _not_a_run(folder: Path) -> None:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "epoch_090.ckpt").write_bytes(b"a week of someone's training")
    (folder / "model.pt").write_bytes(b"their model")
    (folder / "results.json").write_text('{"dice": 0.91}')


def _unrelated_config(folder: Path) -> None:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "mine.pt").write_bytes(b"theirs")
    (folder / "tensorboard").mkdir()
    (folder / "tensorboard" / "events.mine").write_bytes(b"their curves")
    (folder / "config.yaml").write_text("learning_rate: 0.1\nmodel: resnet\n")


@pytest.mark.parametrize(
    "make, flags",
    [
        (_not_a_run, []),
        (_not_a_run, ["--force"]),
        (_not_a_run, ["--resume"]),
        (_unrelated_config, ["--force"]),
        (_unrelated_config, []),
    ],
    ids=["foreign-files", "foreign-files-force", "foreign-files-resume", "unrelated-config-force", "unrelated-config"],
)
def test_training_refuses_a_folder_of_someone_elses_files(tmp_path, capsys, make, flags):
    folder = tmp_path / "theirs"
    make(folder)
    before = _snapshot(folder)
    assert _train(folder, *flags) != 0
    _one_line(capsys, str(folder))
    assert _snapshot(folder) == before
    assert sorted(os.listdir(folder)) == sorted({Path(k).parts[0] for k in before})  # not even a .lock


def test_force_replaces_only_what_the_project_wrote(tmp_path, trained):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "notes.txt").write_text("my notes on this run")
    (run / "checkpoints").mkdir(exist_ok=True)
    (run / "checkpoints" / "mine.ckpt").write_bytes(b"mine")
    (run / "tensorboard" / "mine.txt").write_text("mine")
    assert cli.main(["evaluate", str(run), "--protocol", "paper"]) == 0
    stale = run / "evaluation-paper-threshold-k1.json"
    assert stale.exists()
    mine = {k: v for k, v in _snapshot(run).items() if "mine" in k or k == "notes.txt"}
    assert _train(run, "train.seed=1", "--force") == 0
    after = _snapshot(run)
    assert all(after[k] == v for k, v in mine.items())  # the user's files, untouched
    assert not stale.exists()  # the replaced run's scores went with it
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["seed"] == 1


def test_a_fresh_or_empty_folder_is_taken_and_marked(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _train(empty) == 0
    marker = yaml.safe_load((empty / ".superdiffusion-run.json").read_text())
    assert {"config.yaml", "results.json", "model.pt", "train.log", "history.csv"} <= set(marker["written"])


def test_a_run_folder_of_an_earlier_version_is_adopted_for_resume(tmp_path, trained):
    import shutil

    run = tmp_path / "old"
    shutil.copytree(trained, run)
    (run / ".superdiffusion-run.json").unlink()  # as written before the marker existed
    assert _train(run, "--force") == 0  # config.yaml and model.pt read back as the project's


def test_a_refused_resume_writes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "train.epochs=2", "train.keep_state=true") == 0
    before = _snapshot(run)
    assert _train(run, "train.epochs=1", "train.keep_state=true", "--resume") != 0
    _one_line(capsys, "cannot be shortened")
    after = _snapshot(run)
    assert after["config.yaml"] == before["config.yaml"]
    assert (
        _train(run, "train.epochs=2", "train.keep_state=true", "--resume") == 0
    )  # the folder still describes its model


# --- 2. no write follows a link -----------------------------------------------------------
@pytest.mark.parametrize("name", [".lock", "train.log", "config.yaml"])
def test_training_never_writes_through_a_link_in_its_folder(tmp_path, capsys, name):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / name).symlink_to(outside)
    assert _train(run) != 0
    _one_line(capsys)
    assert outside.read_text() == "precious"


def test_a_link_in_a_marked_run_folder_is_refused_not_followed(tmp_path, capsys):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".superdiffusion-run.json").write_text('{"format": 1, "written": []}')
    (run / "train.log").symlink_to(outside)
    assert _train(run) != 0
    _one_line(capsys, "symbolic link")
    assert outside.read_text() == "precious"


# --- predict and export --------------------------------------------------------------------
def _images(folder: Path, names: list[str]) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (20, 24), (40 * i, 90, 160)).save(folder / name)
    return folder


def test_predict_never_overwrites_its_inputs_even_with_force(tmp_path, capsys, trained):
    inputs = _images(tmp_path / "imgs", ["a.png", "b.png"])
    before = _snapshot(inputs)
    assert cli.main(["predict", str(trained), str(inputs), str(inputs), "--force"]) != 0
    _one_line(capsys, "input", "a.png")
    assert _snapshot(inputs) == before


def test_predict_refuses_output_names_two_inputs_would_share(tmp_path, capsys, trained):
    inputs = _images(tmp_path / "imgs", ["case1.png", "case1.PNG", "case1.jpg", "case1.tif", "case2.png"])
    out = tmp_path / "out"
    assert cli.main(["predict", str(trained), str(inputs), str(out)]) != 0
    line = _one_line(capsys, "case1.png", "case1.jpg")
    assert "more than one input" in line
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("target_exists", [False, True])
def test_predict_never_writes_through_a_link(tmp_path, capsys, trained, target_exists):
    inputs = _images(tmp_path / "imgs", ["a.png"])
    out = tmp_path / "out"
    out.mkdir()
    outside = tmp_path / "outside.png"
    if target_exists:
        outside.write_bytes(b"precious")
    (out / "a.png").symlink_to(outside)
    flags = ["--force"] if target_exists else []
    assert cli.main(["predict", str(trained), str(inputs), str(out), *flags]) != 0
    _one_line(capsys, "symbolic link")
    assert (outside.read_bytes() == b"precious") if target_exists else not outside.exists()


def test_export_never_writes_through_a_dangling_link(tmp_path, capsys, trained):
    outside = tmp_path / "elsewhere" / "model.pt"
    (tmp_path / "model.pt").symlink_to(outside)
    assert cli.main(["export", str(trained), str(tmp_path / "model.pt")]) != 0
    _one_line(capsys, "symbolic link")
    assert not outside.exists()


@pytest.mark.parametrize("theirs", ["split.csv", "masks/thin000.png", "PROVENANCE.md"])
def test_make_dataset_never_writes_into_a_folder_that_holds_files(tmp_path, capsys, theirs):
    dest = tmp_path / "mine"
    (dest / theirs).parent.mkdir(parents=True, exist_ok=True)
    (dest / theirs).write_bytes(b"the user's own file")
    before = _snapshot(dest)
    assert cli.main(["make-dataset", "thin", str(dest), "--count", "4", "--size", "32"]) != 0
    _one_line(capsys, str(dest), "not empty")
    assert _snapshot(dest) == before


def test_a_pair_folder_trains_then_predicts_beside_itself(tmp_path):
    """The ordinary path still works: predict into a new folder next to the data."""
    data = write_pair_folder(tmp_path / "data")
    run = tmp_path / "run"
    assert cli.main(["train", *TINY, f"data.root={data}", "--out", str(run)]) == 0
    assert cli.main(["predict", str(run), str(data / "images"), str(tmp_path / "masks")]) == 0
    assert len(list((tmp_path / "masks").glob("*.png"))) == 6


# --- reads stay inside the data, and bad settings get one line -------------------------------
def _binary_ids(tmp: Path) -> list[str]:
    path = tmp / "ids.bin"
    path.write_bytes(bytes(range(256)) * 4)
    return [f"data.labeled_ids={path}"]


def _long_ids(tmp: Path) -> list[str]:
    path = tmp / "ids.txt"
    path.write_text("x" * 500 + "\nsecond-line-secret\n")
    return [f"data.labeled_ids={path}"]


def _msd_outside(tmp: Path) -> list[str]:
    import json

    from PIL import Image

    data = write_pair_folder(tmp / "msd")
    secret = tmp / "secret.png"
    Image.new("L", (20, 24)).save(secret)
    entries = [{"image": f"./images/case{i}.png", "label": f"./masks/case{i}.png"} for i in range(5)]
    entries.append({"image": "../secret.png", "label": "./masks/case5.png"})
    content = {"name": "x", "modality": {"0": "rgb"}, "labels": {"0": "background", "1": "fg"}, "training": entries}
    (data / "dataset.json").write_text(json.dumps(content))
    return [f"data.root={data}"]


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda tmp: ["data.name=../../x"], ["data.name", "path separators"]),
        (lambda tmp: ["data.name=/etc"], ["data.name"]),
        (lambda tmp: ["train.seed=99999999999999999999"], ["train.seed"]),
        (_binary_ids, ["ids.bin", "not a text file"]),
        (_long_ids, ["ids.txt", "x" * 40 + "..."]),
        (_msd_outside, ["dataset.json", "../secret.png", "outside the dataset folder"]),
    ],
    ids=["name-parent", "name-absolute", "huge-seed", "binary-ids", "long-id", "msd-outside"],
)
def test_bad_settings_and_reads_outside_the_data_get_one_line(tmp_path, capsys, make, words):
    settings = make(tmp_path)
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, *settings, "--out", str(out)]) != 0
    line = _one_line(capsys, *words)
    assert "second-line-secret" not in line and len(line) < 400


# --- scores that do not lie ----------------------------------------------------------------
def test_declared_classes_no_mask_holds_do_not_inflate_the_headline():
    import torch

    from superdiffusion.evaluation import multiclass_scores, per_class_scores

    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, 2:6, 2:6] = 1  # only class 1 is real; classes 2 and 3 are declared but absent
    probs = torch.zeros(2, 4, 8, 8)
    probs[:, 0] = 1  # everything predicted background: class 1 scores 0
    assert multiclass_scores(probs, labels)["dice_per_image"] == 0  # not (0 + 1 + 1) / 3
    table = per_class_scores(probs, labels, ["bg", "a", "b", "c"])
    assert table["a"] == {"dice_per_image": 0.0, "jaccard_per_image": 0.0, "present": True}
    assert table["b"]["present"] is False and table["b"]["dice_per_image"] is None


def _masks_empty(data: Path, which) -> None:
    from PIL import Image

    for i in which:
        Image.new("L", (20, 24)).save(data / "masks" / f"case{i}.png")


def test_training_refuses_labels_without_foreground(tmp_path, capsys):
    data = write_pair_folder(tmp_path / "data")
    _masks_empty(data, range(6))
    assert cli.main(["train", *TINY, f"data.root={data}", "--out", str(tmp_path / "run")]) != 0
    _one_line(capsys, "foreground")


def test_a_test_split_without_foreground_is_flagged(tmp_path, capsys):
    import json

    data = write_pair_folder(tmp_path / "data")
    _masks_empty(data, [4, 5])  # the two test images
    run = tmp_path / "run"
    assert cli.main(["train", *TINY, f"data.root={data}", "--out", str(run)]) == 0
    assert "no test mask holds any foreground" in capsys.readouterr().out
    assert json.loads((run / "results.json").read_text())["warnings"]


def test_non_finite_pixels_are_an_error_naming_the_file(tmp_path, capsys, trained):
    import numpy as np
    from PIL import Image

    data = write_pair_folder(tmp_path / "data")
    bad = np.full((20, 24), np.nan, dtype=np.float32)
    (data / "images" / "case1.png").unlink()
    Image.fromarray(bad).save(data / "images" / "case1.tif")
    assert cli.main(["train", *TINY, f"data.root={data}", "--out", str(tmp_path / "run")]) != 0
    _one_line(capsys, "case1.tif", "not finite")
    # predict too
    (tmp_path / "new").mkdir()
    Image.fromarray(bad).save(tmp_path / "new" / "scan.tif")
    assert cli.main(["predict", str(trained), str(tmp_path / "new"), str(tmp_path / "out")]) != 0
    _one_line(capsys, "scan.tif", "not finite")


# --- the splits of a run do not move ---------------------------------------------------------
def test_a_runs_splits_stay_when_the_folder_gains_or_changes_images(tmp_path, capsys):
    import json
    import shutil

    data = write_pair_folder(tmp_path / "data", n=12, split=False)  # the test split is carved, not listed
    run = tmp_path / "run"
    assert cli.main(["train", *TINY, "train.keep_state=true", f"data.root={data}", "--out", str(run)]) == 0
    splits = json.loads((run / "splits.json").read_text())
    for i in range(12, 20):  # the folder gains images after training
        for sub in ("images", "masks"):
            shutil.copy(data / sub / f"case{i % 12}.png", data / sub / f"case{i}.png")
    assert cli.main(["evaluate", str(run), "--out", str(tmp_path / "e.json")]) == 0
    per_case = (tmp_path / "e-per-case.csv").read_text().splitlines()[1:]
    assert sorted(line.split(",")[0] for line in per_case) == sorted(splits["test"])
    assert cli.main(["train", *TINY, "train.epochs=2", "train.keep_state=true", f"data.root={data}",
                     "--out", str(run), "--resume"]) == 0  # fmt: skip
    assert json.loads((run / "splits.json").read_text()) == splits
    assert json.loads((run / "results.json").read_text())["counts"]["test"] == len(splits["test"])
    # a recorded file changed: one line, no score
    from PIL import Image

    Image.new("RGB", (20, 24), (255, 0, 0)).save(data / "images" / f"{splits['test'][0]}.png")
    assert cli.main(["evaluate", str(run), "--out", str(tmp_path / "f.json")]) != 0
    _one_line(capsys, "changed since it was trained")
    (data / "images" / f"{splits['test'][0]}.png").unlink()
    (data / "masks" / f"{splits['test'][0]}.png").unlink()
    assert cli.main(["evaluate", str(run), "--out", str(tmp_path / "g.json")]) != 0
    _one_line(capsys, "gone")


# --- one line, never a traceback -----------------------------------------------------------------
def _bomb(tmp: Path) -> list[str]:
    from PIL import Image

    data = write_pair_folder(tmp / "data")
    Image.new("L", (9400, 9400)).save(data / "images" / "case0.png")  # a few KB on disk, 88 megapixels
    return ["train", *TINY, f"data.root={data}", "--out", str(tmp / "run")]


def _binary_split(tmp: Path) -> list[str]:
    data = write_pair_folder(tmp / "data")
    (data / "split.csv").write_bytes(bytes(range(256)) * 8)
    return ["train", *TINY, f"data.root={data}", "--out", str(tmp / "run")]


def _sweep(tmp: Path, *flags: str) -> list[str]:
    return ["sweep", "method=[supervised]", *TINY[1:], "--root", str(tmp / "sweep"), "--executor", "submitit-local",
            *flags]  # fmt: skip


def _read_only(tmp: Path) -> list[str]:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    locked = tmp / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    return ["train", *TINY, "--out", str(locked / "run")]


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda tmp, run: ["evaluate", str(run), "--samples", "-1"], ["--samples"]),
        (lambda tmp, run: ["make-dataset", "thin", str(tmp / "d"), "--size", "0"], ["--size"]),
        (lambda tmp, run: ["figure", str(run), "--count", "0"], ["--count"]),
        (lambda tmp, run: ["predict", str(run), str(tmp), str(tmp / "o"), "--device", "tpu"], ["device", "tpu"]),
        (lambda tmp, run: ["train", *TINY, "--out", str(run / "model.pt")], ["is a file"]),
        (lambda tmp, run: _bomb(tmp), ["case0.png", "megapixels"]),
        (lambda tmp, run: _binary_split(tmp), ["split.csv"]),
        (lambda tmp, run: _read_only(tmp), ["locked"]),
        (lambda tmp, run: _sweep(tmp, "--slurm", "timeout_min=[1"), ["--slurm", "timeout_min=[1"]),
        (lambda tmp, run: _sweep(tmp, "--slurm", "partition"), ["--slurm", "partition", "KEY=VALUE"]),
        (lambda tmp, run: _sweep(tmp, "--slurm", "no_such_key=3"), ["--slurm", "no_such_key"]),
    ],
    ids=[
        "samples-negative",
        "size-zero",
        "count-zero",
        "device-tpu",
        "out-is-a-file",
        "bomb",
        "binary-split",
        "read-only",
        "slurm-bad-yaml",
        "slurm-no-value",
        "slurm-unknown-key",
    ],
)
def test_bad_commands_get_one_line(tmp_path, capsys, trained, make, words):
    args = make(tmp_path, trained)
    try:
        code = cli.main(args)
    except SystemExit as exit:  # a usage error: argparse exits, with our one line
        code = exit.code
    assert code != 0
    _one_line(capsys, *words)


# --- the channel rule does not depend on which image comes first ------------------------------
@pytest.mark.parametrize("odd_mode", ["RGBA", "P", "L"], ids=["first-rgba", "first-palette", "first-grey"])
def test_the_channel_count_does_not_depend_on_the_first_image(tmp_path, caplog, odd_mode):
    import logging

    from PIL import Image

    from superdiffusion.config import resolve
    from superdiffusion.data import build_data

    data = write_pair_folder(tmp_path / "data")
    others = "L" if odd_mode != "L" else "RGB"
    for path in sorted((data / "images").glob("*.png")):
        img = Image.open(path).convert("RGB")
        img.convert(odd_mode if path.stem == "case0" else others).save(path)
    cfg = resolve([f"data.root={data}", "data.size=[32, 32]"])
    with caplog.at_level(logging.INFO, logger="superdiffusion"):
        built = build_data(cfg.data, seed=0)
    assert built.channels == 3  # one colour image makes a colour dataset, wherever it sorts
    assert built.labeled.images[0].shape[0] == built.test.images[0].shape[0] == 3
    grey = "case0.png" if odd_mode == "L" else "case1.png"
    assert any(grey in r.getMessage() and "grey" in r.getMessage() for r in caplog.records)


# --- volumes whose geometry is missing or does not match ----------------------------------------
def _volumes(tmp: Path, n: int = 6):
    from test_volumes import write_volumes

    return write_volumes(tmp / "vol", n=n, shape=(16, 16, 12))


def _train3d(root: Path, out: Path) -> int:
    return cli.main(["train", "method=supervised", *FAST[1:], "data.spatial_dims=3", f"data.root={root}",
                     "data.patch_size=[8, 8, 8]", "data.labeled_percent=50", "--out", str(out)])  # fmt: skip


def test_a_label_that_does_not_lie_on_its_image_is_refused(tmp_path, capsys):
    import nibabel as nib

    root = _volumes(tmp_path)
    label = nib.load(str(root / "labels" / "v2.nii.gz"))
    shifted = label.affine.copy()
    shifted[:3, 3] += [12.0, 0, 0]  # 12 mm off: the same shape, another place
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj), shifted), str(root / "labels" / "v2.nii.gz"))
    assert _train3d(root, tmp_path / "run") != 0
    _one_line(capsys, "v2.nii.gz", "affine")


def test_a_volume_without_voxel_spacing_is_named_in_a_warning(tmp_path, capsys):
    import nibabel as nib

    root = _volumes(tmp_path)
    for sub in ("images", "labels"):  # as some converters write them: no qform, no sform, pixdim 0
        path = root / sub / "v1.nii.gz"
        vol = nib.load(str(path))
        nib.save(nib.Nifti1Image(np.asarray(vol.dataobj), None), str(path.with_suffix("").with_suffix(".nii")))
        path.unlink()
        raw = bytearray(path.with_suffix("").with_suffix(".nii").read_bytes())
        raw[80:92] = np.zeros(3, "<f4").tobytes()  # pixdim[1:4] (nibabel would set them to 1 on save)
        path.with_suffix("").with_suffix(".nii").write_bytes(bytes(raw))
    from superdiffusion.data.volumes import read_volume

    assert read_volume(root / "images" / "v1.nii").spacing_missing
    assert not read_volume(root / "images" / "v0.nii.gz").spacing_missing
    assert _train3d(root, tmp_path / "run") == 0
    out = capsys.readouterr()
    assert "v1.nii" in out.out + out.err and "no voxel spacing" in out.out + out.err


# --- a diverged training says what it knows ----------------------------------------------------
def test_a_divergence_names_the_image_that_holds_non_finite_values_and_no_missing_checkpoint(tmp_path):
    import torch

    from superdiffusion.data.dataset import SegmentationData, Split
    from superdiffusion.errors import TrainingDiverged
    from superdiffusion.training import check_finite

    def split(ids, bad=None):
        images = torch.zeros(len(ids), 1, 4, 4)
        if bad is not None:
            images[bad, 0, 1, 1] = float("inf")
        return Split(images, torch.zeros(len(ids), 4, 4, dtype=torch.long), ids)

    data = SegmentationData(
        labeled=split(["a", "b"]), unlabeled=split(["c", "scan7"], bad=1), val=split([]), test=split([]),
        channels=1, num_classes=2, spatial_dims=2, stats={"mean": [0.0], "std": [1.0]},
    )  # fmt: skip
    nan = {"sup": torch.tensor(float("nan"))}
    with pytest.raises(TrainingDiverged) as raised:
        check_finite(nan["sup"], nan, "step 3", tmp_path / "checkpoints" / "last.pt", data)
    message = str(raised.value)
    assert "scan7" in message and "last.pt" not in message and "no checkpoint" in message
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"x")
    data.unlabeled.images[1] = torch.zeros(1, 4, 4)
    with pytest.raises(TrainingDiverged) as raised:
        check_finite(nan["sup"], nan, "step 3", tmp_path / "checkpoints" / "last.pt", data)
    assert "last.pt" in str(raised.value) and "scan7" not in str(raised.value)


# --- a run trained on a list of labeled ids is not a percentage run ------------------------------
def test_a_labeled_ids_run_records_its_source_and_report_keeps_it_apart(tmp_path):
    import json

    from superdiffusion.experiments.report import aggregate, collect

    data = write_pair_folder(tmp_path / "data", n=10)
    runs = tmp_path / "runs"
    common = ["train", *TINY, f"data.root={data}", "data.labeled_percent=20", "data.val_fraction=0.2"]
    assert cli.main([*common, "--out", str(runs / "pair" / "supervised" / "p20-s0")]) == 0
    splits = json.loads((runs / "pair" / "supervised" / "p20-s0" / "splits.json").read_text())
    ids = tmp_path / "mine.txt"
    ids.write_text("\n".join(sorted(splits["labeled"] + splits["unlabeled"])[:2]) + "\n")
    assert cli.main([*common, f"data.labeled_ids={ids}", "--out", str(runs / "pair" / "supervised" / "p20-s1")]) == 0
    result = json.loads((runs / "pair" / "supervised" / "p20-s1" / "results.json").read_text())
    assert result["labels"]["source"] == "ids" and result["labels"]["count"] == 2
    assert result["labels"]["file"] == "mine.txt"
    plain = json.loads((runs / "pair" / "supervised" / "p20-s0" / "results.json").read_text())
    assert plain["labels"]["source"] == "percent"
    rows = aggregate(collect([runs]))
    assert len(rows) == 2 and all(len(r["seeds"]) == 1 for r in rows)  # not one row of two "seeds"
    assert any("mine.txt" in r["variant"] for r in rows)


# --- a scoring error never costs the training ----------------------------------------------------
def test_a_scoring_error_keeps_the_finished_training_and_resume_scores_it(tmp_path, capsys, monkeypatch):
    import json

    from superdiffusion import api

    def broken(*args, **kwargs):
        raise RuntimeError("bincount only supports 1-d non-negative integral inputs")

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(api, "evaluate_method", broken)
        assert _train(run) != 0
    line = _one_line(capsys, "scoring", "bincount", "--resume")
    assert "checkpoints" in line
    assert (run / "checkpoints" / "best.pt").exists() and not (run / "results.json").exists()
    assert _train(run, "--resume") == 0  # scored now, without training again
    result = json.loads((run / "results.json").read_text())
    assert result["updates"]["train"] == 1 and "test" in result


@pytest.mark.parametrize("command", ["evaluate", "suggest"])
def test_evaluate_and_suggest_check_their_output_before_computing(tmp_path, capsys, monkeypatch, trained, command):
    from superdiffusion import api

    def never(*args, **kwargs):
        raise AssertionError("computed before checking where the result goes")

    monkeypatch.setattr(api, "build_data", never)
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    extra = ["--count", "2"] if command == "suggest" else []
    assert cli.main([command, str(trained), *extra, "--out", str(blocker / "out" / "x.json")]) != 0
    _one_line(capsys, "cannot write here", "a-file")
    assert blocker.read_text() == "mine"
