"""The red team's cases (issue 41), one row each: a hostile or careless input, the command a
user runs on it, and what must hold. Each row failed before its fix.

Every row starts from files the user owns, runs one command through the command line, and
checks the one line it printed and that every file of the user's is still there, byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, write_pair_folder
from PIL import Image

from superdiffusion import cli

TINY = ["method=supervised", *FAST, "eval.batch_size=64"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("red") / "run"
    assert cli.main(["train", *TINY, "--out", str(run)]) == 0
    return run


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()
    }


def _refused(capsys, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    line = err.splitlines()[-1]
    assert line.startswith("superdiffusion: error:"), err
    for word in words:
        assert word in line, line
    return line


# --- data loss -----------------------------------------------------------------------------------
def test_a_tampered_run_marker_never_sends_force_outside_the_run(tmp_path, trained):
    """The run folder's marker lists "../outside/precious.txt": ``train --force`` removes only
    files inside the run folder (was: deleted the user's file outside it)."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("a user's notes")
    (outside / "abs.txt").write_text("another")
    marker = run / ".superdiffusion-run.json"
    content = json.loads(marker.read_text())
    content["written"] += ["../outside/precious.txt", str(outside / "abs.txt")]
    marker.write_text(json.dumps(content))
    assert cli.main(["train", *TINY, "--out", str(run), "--force"]) == 0
    assert _files(outside) == {"precious.txt": b"a user's notes", "abs.txt": b"another"}


def test_report_never_replaces_a_users_table_nor_writes_through_a_link(tmp_path, capsys, trained):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "table.md").write_text("my table")
    assert cli.main(["report", str(trained), "--out", str(out)]) != 0
    _refused(capsys, "table.md", "not written by superdiffusion")
    assert _files(out) == {"table.md": b"my table"}
    fresh = tmp_path / "fresh"
    assert cli.main(["report", str(trained), "--out", str(fresh)]) == 0
    assert cli.main(["report", str(trained), "--out", str(fresh)]) == 0  # its own tables: refreshed
    (tmp_path / "elsewhere.csv").write_text("theirs")
    (fresh / "table.csv").unlink()
    os.symlink(tmp_path / "elsewhere.csv", fresh / "table.csv")
    assert cli.main(["report", str(trained), "--out", str(fresh)]) != 0
    _refused(capsys, "table.csv", "link")
    assert (tmp_path / "elsewhere.csv").read_text() == "theirs"


def test_figure_replaces_an_existing_file_only_with_force(tmp_path, capsys, trained):
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"my figure")
    assert cli.main(["figure", str(trained), "--out", str(mine), "--samples", "1", "--count", "1"]) != 0
    _refused(capsys, "mine.png", "already exists", "--force")
    assert mine.read_bytes() == b"my figure"
    assert cli.main(["figure", str(trained), "--out", str(mine), "--samples", "1", "--count", "1", "--force"]) == 0
    assert mine.read_bytes().startswith(b"\x89PNG")  # the one file the user named, replaced as asked


def test_evaluate_never_replaces_a_users_scores(tmp_path, capsys, trained):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "evaluation-honest-k1.json").write_text('{"mine": 1}')  # the user's, not listed by the marker
    assert cli.main(["evaluate", str(run)]) != 0
    _refused(capsys, "evaluation-honest-k1.json", "not written by superdiffusion")
    assert (run / "evaluation-honest-k1.json").read_text() == '{"mine": 1}'
    elsewhere = tmp_path / "scores"
    elsewhere.mkdir()
    (elsewhere / "s-per-case.csv").write_text("my cases")
    assert cli.main(["evaluate", str(trained), "--out", str(elsewhere / "s.json")]) != 0
    _refused(capsys, "s-per-case.csv")
    assert _files(elsewhere) == {"s-per-case.csv": b"my cases"}


def test_predict_force_never_replaces_the_ground_truth_masks(tmp_path, capsys, trained):
    """``predict RUN ds/images ds/masks --force``: the masks are the user's, not earlier
    predictions, and stay (was: replaced); --force replaces predict's own earlier outputs."""
    data = write_pair_folder(tmp_path / "ds", n=4)
    before = _files(data / "masks")
    assert cli.main(["predict", str(trained), str(data / "images"), str(data / "masks"), "--force"]) != 0
    _refused(capsys, "masks", "not written by superdiffusion")
    assert _files(data / "masks") == before
    out = tmp_path / "pred"
    assert cli.main(["predict", str(trained), str(data / "images"), str(out)]) == 0
    assert cli.main(["predict", str(trained), str(data / "images"), str(out)]) != 0  # no --force: refused
    assert cli.main(["predict", str(trained), str(data / "images"), str(out), "--force"]) == 0


# --- security ------------------------------------------------------------------------------------
def test_a_run_folder_that_is_a_link_is_refused_before_anything_is_written(tmp_path, capsys):
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(target, tmp_path / "run")
    assert cli.main(["train", *TINY, "--out", str(tmp_path / "run")]) != 0
    _refused(capsys, "symbolic link")
    assert list(target.iterdir()) == []


def _png(path: Path, value: int = 0) -> None:
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def test_a_linked_predict_output_folder_is_refused(tmp_path, capsys, trained):
    data = write_pair_folder(tmp_path / "ds", n=2)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, tmp_path / "pred")
    assert cli.main(["predict", str(trained), str(data / "images"), str(tmp_path / "pred")]) != 0
    _refused(capsys, "pred", "symbolic link")
    assert list(elsewhere.iterdir()) == []


def _link_an_image_outside(root: Path, outside: Path) -> None:
    outside.mkdir()
    image = sorted((root / "images").iterdir())[0]
    shutil.move(image, outside / image.name)
    os.symlink(outside / image.name, image)


def _link_the_masks_outside(root: Path, outside: Path) -> None:
    shutil.move(root / "masks", outside)
    os.symlink(outside, root / "masks")


def _nnunet_image_outside(root: Path, outside: Path) -> None:
    (root / "imagesTr").mkdir()
    (root / "labelsTr").mkdir()
    for k, (image, mask) in enumerate(zip(sorted((root / "images").iterdir()), sorted((root / "masks").iterdir()))):
        shutil.move(image, root / "imagesTr" / f"case{k}_0000.png")
        mask_values = np.asarray(Image.open(mask)) > 0
        Image.fromarray(mask_values.astype(np.uint8)).save(root / "labelsTr" / f"case{k}.png")
    shutil.rmtree(root / "images")
    shutil.rmtree(root / "masks")
    (root / "split.csv").unlink()
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "grey"}, "labels": {"background": 0, "lesion": 1}, "file_ending": ".png"})
    )
    outside.mkdir()
    shutil.move(root / "imagesTr" / "case0_0000.png", outside / "case0_0000.png")
    os.symlink(outside / "case0_0000.png", root / "imagesTr" / "case0_0000.png")


@pytest.mark.parametrize("command", ["train", "plan"])
@pytest.mark.parametrize("make", [_link_an_image_outside, _link_the_masks_outside, _nnunet_image_outside])
def test_links_that_leave_the_data_folder_are_refused(tmp_path, capsys, make, command):
    """A file (or the masks/ folder) inside the data root that is a link to a file outside it
    is refused, naming it, by plan and train (was: read from outside)."""
    root = write_pair_folder(tmp_path / "ds", n=6)
    make(root, tmp_path / "outside")
    argv = ["plan", str(root)] if command == "plan" else ["train", *TINY, f"data.root={root}", "--out", str(tmp_path / "r")]
    assert cli.main(argv) != 0
    _refused(capsys, "leads outside the data folder")


def test_plan_masks_outside_the_data_folder_is_refused(tmp_path, capsys):
    root = write_pair_folder(tmp_path / "ds", n=6)
    assert cli.main(["plan", str(root), "--masks", "../../outside/m"]) != 0
    _refused(capsys, "--masks", "inside")


@pytest.mark.parametrize("kind", ["external link", "external storage", "virtual dataset"])
def test_hdf5_that_reads_other_files_is_refused(tmp_path, capsys, kind):
    import h5py

    outside = tmp_path / "outside.h5"
    with h5py.File(outside, "w") as handle:
        handle["image"] = np.ones((16, 16, 8), np.float32)
    np.ones((16, 16, 8), np.float32).tofile(tmp_path / "raw.bin")
    root = tmp_path / "ds"
    for k in range(4):
        (root / f"case{k}").mkdir(parents=True)
        with h5py.File(root / f"case{k}" / "mri_norm2.h5", "w") as handle:
            label = np.zeros((16, 16, 8), np.uint8)
            label[4:10, 4:10, 2:6] = 1
            handle["label"] = label
            if k:
                handle["image"] = np.random.default_rng(k).normal(size=(16, 16, 8)).astype(np.float32) + label
            elif kind == "external link":
                handle["image"] = h5py.ExternalLink(str(outside), "image")
            elif kind == "external storage":
                handle.create_dataset("image", (16, 16, 8), "f4", external=[(str(tmp_path / "raw.bin"), 0, 16 * 16 * 8 * 4)])
            else:
                layout = h5py.VirtualLayout((16, 16, 8), "f4")
                layout[...] = h5py.VirtualSource(str(outside), "image", (16, 16, 8))
                handle.create_virtual_dataset("image", layout)
    assert cli.main(["plan", str(root)]) != 0
    _refused(capsys, "mri_norm2.h5", "other file" if kind == "external link" else kind)


# --- silent wrong results --------------------------------------------------------------------------
def _stray_patch(root: Path) -> None:
    mask = sorted((root / "masks").iterdir())[2]
    values = np.asarray(Image.open(mask)).copy()
    values[:3, :3] = 7  # a slip of the brush in one mask
    Image.fromarray(values).save(mask)


def _one_mask_saved_as_0_1(root: Path) -> None:
    mask = sorted((root / "masks").iterdir())[2]
    Image.fromarray((np.asarray(Image.open(mask)) > 0).astype(np.uint8)).save(mask)


@pytest.mark.parametrize("make, said", [(_stray_patch, "holds the value 7 on 9 pixels"), (_one_mask_saved_as_0_1, "0/1 in 1")])
def test_an_odd_mask_never_becomes_a_class(tmp_path, make, said):
    """A stray patch of value 7 in one mask, or one mask saved 0/1 among 0/255 masks: the plan
    reads one foreground class, naming the file (was: a third class, the headline Dice the mean
    of the real class and an empty one)."""
    from superdiffusion.plan import plan_for

    root = write_pair_folder(tmp_path / "ds", n=8, size=(64, 64))
    make(root)
    plan = plan_for(root, cache=False)
    assert plan.settings["data.num_classes"] == 2 and plan.settings["data.mask_mode"] == "binary"
    assert said in " ".join(plan.lines()) and "case2.png" in " ".join(plan.lines())


def test_split_csv_naming_an_image_twice_is_refused(tmp_path, capsys):
    root = write_pair_folder(tmp_path / "ds", n=6)
    rows = (root / "split.csv").read_text().splitlines()
    first = rows[1].split(",")[0]
    (root / "split.csv").write_text("\n".join([*rows, f"{first}.png,test"]) + "\n")  # its id, then its file name
    assert cli.main(["train", *TINY, f"data.root={root}", "--out", str(tmp_path / "run")]) != 0
    _refused(capsys, "split.csv", "has a row already")


def test_a_test_image_identical_to_a_training_image_is_flagged(tmp_path, caplog):
    """Byte-identical images under two names, one in training and one in test: the log and
    results.json say their scores are not held out (was: silent, though every file is hashed)."""
    root = write_pair_folder(tmp_path / "ds", n=6)
    rows = [r.split(",") for r in (root / "split.csv").read_text().splitlines()[1:]]
    trained = next(i for i, s in rows if s == "train")
    held = next(i for i, s in rows if s == "test")
    shutil.copy(root / "images" / f"{trained}.png", root / "images" / f"{held}.png")
    assert cli.main(["train", *TINY, f"data.root={root}", "data.labeled_percent=100", "--out", str(tmp_path / "run")]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert any("byte-identical" in w and f"{held} = {trained}" in w for w in results["warnings"])
    assert "byte-identical" in (tmp_path / "run" / "train.log").read_text()


@pytest.mark.parametrize("command", ["evaluate", "show", "suggest"])
def test_a_run_being_trained_is_not_scored(tmp_path, capsys, trained, command):
    """evaluate (show, suggest) while another process trains the folder (a --force retrain)
    would score a half-trained checkpoint: refused while the lock is held (was: scored)."""
    import fcntl

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    with open(run / ".lock", "r+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process training it now
        argv = [command, str(run)] + {"show": ["--samples", "1"], "suggest": ["--count", "1"]}.get(command, [])
        assert cli.main(argv) != 0
        _refused(capsys, "being trained by another process")
    assert cli.main(["evaluate", str(run)]) == 0  # once it is released


# --- memory: a file's declared size is checked before anything is allocated ------------------------
def _nifti_header_bomb(path: Path) -> None:
    """A 1 KB NIfTI whose header declares 4000^3 float32 voxels (256 GB)."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape((4000, 4000, 4000))
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    path.write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 512)


@pytest.mark.parametrize("command", ["plan", "train", "predict"])
def test_a_nifti_header_declaring_4000_cubed_voxels_is_refused_unread(tmp_path, capsys, trained, command):
    import nibabel as nib
    from test_volumes import write_volumes

    root = write_volumes(tmp_path / "vols", n=4, shape=(16, 16, 12))
    _nifti_header_bomb(root / "images" / "v1.nii.gz".replace(".gz", ""))
    (root / "images" / "v1.nii.gz").unlink()
    shutil.copy(root / "labels" / "v1.nii.gz", root / "labels" / "v1.nii")
    (root / "labels" / "v1.nii.gz").unlink()
    assert nib.load(str(root / "images" / "v1.nii")).shape == (4000, 4000, 4000)
    if command == "plan":
        argv = ["plan", str(root)]
    elif command == "train":
        argv = ["train", "method=supervised", *FAST[1:], "data.spatial_dims=3", "data.patch_size=[16,16,16]",
                "data.plan=false", f"data.root={root}", "--out", str(tmp_path / "run")]  # fmt: skip
    else:
        argv = ["predict", str(trained), str(root / "images" / "v1.nii"), str(tmp_path / "pred")]
    assert cli.main(argv) != 0
    _refused(capsys, "v1.nii", "4000x4000x4000")


def test_an_npz_bomb_and_oversized_hdf5_slices_are_refused_unread(tmp_path, monkeypatch):
    import h5py

    from superdiffusion.data import volumes
    from superdiffusion.errors import DataError

    bomb = tmp_path / "bomb.npz"
    np.savez_compressed(bomb, image=np.zeros((64, 512, 512), np.float32))  # 64 MB in, a few KB on disk
    assert bomb.stat().st_size < 1_000_000
    monkeypatch.setattr(volumes, "available_memory", lambda: 32_000_000)  # a machine with 32 MB free
    with pytest.raises(DataError, match="bomb.npz: its header declares 64x512x512 values"):
        volumes.read_volume(bomb)
    monkeypatch.undo()
    big = tmp_path / "slice.h5"
    with h5py.File(big, "w") as handle:  # a 2D slice of 64 megapixels, compressed to little
        handle.create_dataset("image", (8000, 8000), np.uint8, compression="gzip", chunks=(1000, 1000))
    with pytest.raises(DataError, match="slice.h5: 8000x8000 is above the limit of 50 megapixels"):
        volumes.read_plane(big)


def test_running_out_of_memory_is_one_line(tmp_path, capsys, monkeypatch):
    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr("superdiffusion.plan.plan_for", exhausted)
    assert cli.main(["plan", str(tmp_path)]) != 0
    _refused(capsys, "plan ran out of memory")


# --- tracebacks become one line --------------------------------------------------------------------
def _model_without_config(run: Path) -> list[str]:
    import torch

    state = torch.load(run / "model.pt", weights_only=False)
    del state["config"]
    torch.save(state, run / "model.pt")
    return ["model.pt", "not a model superdiffusion saved"]


def _model_of_another_program(run: Path) -> list[str]:
    import torch

    torch.save({"state_dict": {}, "epoch": 3}, run / "model.pt")
    return ["model.pt", "not a superdiffusion checkpoint"]


def _bad_results(run: Path) -> list[str]:
    (run / "results.json").write_text("{bad")
    return ["results.json", "unreadable"]


def _bad_splits(run: Path) -> list[str]:
    (run / "splits.json").write_text("[1, 2")
    return ["splits.json", "unreadable"]


@pytest.mark.parametrize(
    "damage, commands",
    [
        (_model_without_config, ["predict", "evaluate", "export"]),
        (_model_of_another_program, ["predict", "evaluate", "export"]),
        (_bad_results, ["show", "report"]),
        (_bad_splits, ["evaluate", "show"]),
    ],
)
def test_a_damaged_run_folder_is_one_line(tmp_path, capsys, trained, damage, commands):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    words = damage(run)
    images = write_pair_folder(tmp_path / "ds", n=2) / "images"
    for command in commands:
        argv = {
            "predict": ["predict", str(run), str(images), str(tmp_path / f"pred-{command}")],
            "evaluate": ["evaluate", str(run)],
            "export": ["export", str(run), str(tmp_path / "model.pt")],
            "show": ["show", str(run), "--samples", "1", "--out", str(tmp_path / "page")],
            "report": ["report", str(run), "--out", str(tmp_path / "report")],
        }[command]
        assert cli.main(argv) != 0, command
        _refused(capsys, *words)


def test_a_binary_config_and_a_file_name_that_is_not_text_are_one_line(tmp_path, capsys):
    (tmp_path / "config.yaml").write_bytes(bytes(range(256)))
    assert cli.main(["train", "--config", str(tmp_path / "config.yaml")]) != 0
    _refused(capsys, "config.yaml", "not a text file")
    root = write_pair_folder(tmp_path / "ds", n=6, split=False)
    for folder in ("images", "masks"):
        first = sorted((root / folder).iterdir())[0]
        os.rename(os.fsencode(first), os.fsencode(first.parent) + b"/caf\xe9.png")
    for argv in (["plan", str(root)], ["train", *TINY, f"data.root={root}", "--out", str(tmp_path / "run")]):
        assert cli.main(argv) != 0
        _refused(capsys, "not UTF-8 text")


def test_an_id_with_dollar_signs_is_drawn_as_text(tmp_path, capsys):
    """matplotlib reads $...$ as mathtext: a test id holding two $ stopped figure with a traceback."""
    root = write_pair_folder(tmp_path / "ds", n=6)
    rows = (root / "split.csv").read_text().splitlines()
    held = next(r.split(",")[0] for r in rows[1:] if r.endswith("test"))
    for folder in ("images", "masks"):
        (root / folder / f"{held}.png").rename(root / folder / "case$_$1.png")
    (root / "split.csv").write_text("\n".join(r.replace(f"{held},", "case$_$1,") for r in rows) + "\n")
    assert cli.main(["train", *TINY, f"data.root={root}", "--out", str(tmp_path / "run")]) == 0
    out = tmp_path / "f.png"
    assert cli.main(["figure", str(tmp_path / "run"), "--out", str(out), "--samples", "1", "--ids", "case$_$1"]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")


def test_show_goes_on_after_a_show_that_was_killed(tmp_path, trained):
    """A show killed with -9 leaves its temporary file (.NAME.tmp-PID) in report-files/: the
    next show removes it and writes the page (was: refused for good, 'not written by
    superdiffusion'); a live process's temporary file, or a user's file, still stops it."""
    import subprocess
    import sys

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert cli.main(["show", str(run), "--samples", "1"]) == 0
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = run / "report-files" / f".0000-image.png.tmp-{gone.stdout.strip()}"
    left.write_bytes(b"half a png")
    assert cli.main(["show", str(run), "--samples", "1"]) == 0
    assert not left.exists()
    (run / "report-files" / "notes.txt").write_text("mine")
    assert cli.main(["show", str(run), "--samples", "1"]) != 0


def test_an_unreadable_volume_is_named_not_a_healthy_one(tmp_path, capsys):
    """One corrupt volume among healthy ones: train stops with the plan's line naming it (was:
    the plan fell back to 2D, and the error then blamed a healthy volume)."""
    from test_volumes import write_volumes

    root = write_volumes(tmp_path / "vols", n=4, shape=(16, 16, 12))
    (root / "images" / "v3.nii.gz").write_bytes(b"not a volume at all")  # the first, v0, says: volumes
    argv = ["train", "method=supervised", *FAST[1:], f"data.root={root}", "--out", str(tmp_path / "run")]
    assert cli.main(argv) != 0
    line = _refused(capsys, "v3.nii.gz")
    assert "v0" not in line
