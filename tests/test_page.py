"""``superdiffusion show RUN``: the page of a run, read as a file and as a browser renders it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from conftest import FAST

from superdiffusion import cli
from superdiffusion.runfolder import MARKER

CASE = re.compile(r'<section class="case" data-dice="([-0-9.]+)" data-id="([^"]+)"')


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-update run of the paper's method on the built-in PH2 (40 test images)."""
    out = tmp_path_factory.mktemp("page") / "run"
    args = ["train", "method=superdiffusion", *FAST, "method.pretrain_epochs=0", "method.rounds=1", "--out", str(out)]
    assert cli.main(args) == 0
    assert cli.main(["show", str(out), "--samples", "2"]) == 0
    return out


def test_show_lists_every_test_case_worst_first_with_its_panels(run):
    page = (run / "report.html").read_text()
    cases = CASE.findall(page)
    test_ids = json.loads((run / "splits.json").read_text())["test"]
    assert sorted(i for _, i in cases) == sorted(test_ids)
    dice = [float(d) for d, _ in cases]
    assert dice == sorted(dice)  # worst first
    per_case = {r.split(",")[0]: r for r in (run / "test_per_case.csv").read_text().splitlines()[1:]}
    assert set(per_case) == set(test_ids)
    sources = re.findall(r'<img src="(report-files/[^"]+)"', page)
    assert len(sources) == 4 * len(test_ids)  # image, prediction, target, uncertainty
    assert all((run / s).is_file() for s in sources)
    assert "progress.png" in page and (run / "report-files" / "progress.png").is_file()
    written = set(json.loads((run / MARKER).read_text())["written"])
    assert "report.html" in written and all(s in written for s in sources)  # --force may remove them


def test_show_replaces_its_own_page_but_never_a_users_file(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert cli.main(["show", str(copy), "--samples", "2"]) == 0  # its own files: replaced
    mine = copy / "report-files" / "notes.png"
    mine.write_bytes(b"a user's file")
    assert cli.main(["show", str(copy)]) == 2
    assert "notes.png was not written by superdiffusion" in capsys.readouterr().err
    assert mine.read_bytes() == b"a user's file"
    mine.unlink()
    (copy / "report.html").unlink()
    (copy / "report.html").symlink_to(tmp_path / "elsewhere.html")
    assert cli.main(["show", str(copy)]) == 2
    assert not (tmp_path / "elsewhere.html").exists()
    other = tmp_path / "page"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    assert cli.main(["show", str(copy), "--out", str(other)]) == 2  # --out: a new or empty folder only
    assert "not empty" in capsys.readouterr().err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)")
def test_the_page_renders_in_a_browser_worst_case_first_with_every_image_loaded(run, tmp_path):
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
         "--allow-file-access-from-files", "--virtual-time-budget=10000", "--dump-dom", (run / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    loaded = re.search(r'<body[^>]*data-images-loaded="(\d+)"[^>]*data-images-total="(\d+)"', dom)
    assert loaded, "the page's load handler did not run"
    test_ids = json.loads((run / "splits.json").read_text())["test"]
    assert int(loaded.group(2)) == 4 * len(test_ids)
    assert loaded.group(1) == loaded.group(2)  # every image decoded
    shown = re.search(r'<span id="shown">(\d+)</span> of <span id="total">(\d+)</span>', dom)
    assert shown and shown.groups() == (str(len(test_ids)), str(len(test_ids)))
    cases = CASE.findall(dom)
    worst = min(float(d) for d, _ in cases)
    assert float(cases[0][0]) == worst
