"""The documentation: the front page stays a front page, generated pages match their owners,
and the site builds with every link resolved."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("generate_docs", ROOT / "scripts" / "generate_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_is_a_front_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_generated_pages_are_what_their_owners_say():
    # the settings reference from the pydantic models, the site's home page from README.md
    for path, text in _generator().pages().items():
        assert path.read_text() == text, f"{path} is out of date: run python scripts/generate_docs.py"


def test_the_settings_reference_lists_every_setting():
    from superdiffusion.config import Config
    from superdiffusion.method_settings import SETTINGS

    page = (ROOT / "docs" / "configuration.md").read_text()
    for section, field in Config.model_fields.items():
        if section != "method":
            assert all(f"`{section}.{name}`" in page for name in field.annotation.model_fields)
    for name, cls in SETTINGS.items():
        assert f"### method={name}" in page
        assert all(f"`method.{key}`" in page for key in cls.model_fields if key != "name")


def test_every_setting_is_described_by_the_comment_beside_its_code():
    generator = _generator()
    rows = [line for line in generator.reference().splitlines() if line.startswith("| `") and line.count(" | ") >= 3]
    bare = [line.split("|")[1].strip() for line in rows if line.split("|")[4].strip() in ("", "what it does")]
    assert rows and not bare, f"settings without a description: {bare}"

    class Probe:  # the description is the comment above a field plus the ones on its lines
        # the first line
        # the second line
        first: int = 1  # inline
        # --- a section rule, not a description ---
        second: int = 2

    assert generator._comments(Probe) == {"first": "the first line the second line inline"}


def test_the_decisive_figures_are_written_from_their_json(tmp_path):
    """README.md and docs/results.md quote the decisive grid; their figures are written from its
    JSON (test_generated_pages_are_what_their_owners_say keeps them so), here on a grid small
    enough to check by hand."""
    generator = _generator()
    run = {"dataset": "ph2-full", "method": "superdiffusion", "variant": "", "labeled_percent": 5, "updates": 1000}
    grid = {
        "planned_runs": 5,  # the reuse check included
        "runs": [{**run, "seed": 0, "pretrain_updates": 200}, {**run, "seed": 1, "pretrain_updates": 200},
                 {**run, "method": "cps", "seed": 0, "reused": "evidence grid"}],
        "paired": [{"dataset": "ph2-full", "labeled_percent": 5, "method": "superdiffusion", "reference": "cps",
                    "seeds": [0, 1], "per_seed_honest": [1.5, -2.0], "honest_dice": [-0.25, 11.05]}],
        "teacher_zero_label": [{"dataset": "ph2-full", "labeled_percent": 5, "method": "superdiffusion", "seed": 0,
                                "dice": 0.547, "auroc": 0.862, "swapped": True}],
        "summed_train_minutes_trained_here": 70.4,
    }  # fmt: skip
    status = generator.decisive_status(grid)
    assert "is running; 2 of its 4 runs have finished" in status
    row = "| PH2 5 %, the new default (seeds 0, 1) | +1.50, \u22122.00 (mean \u22120.25 ± 11.05) | not yet | not yet |"
    assert row in status and "on PH2 it beats CPS in 1 of 2 seeds" in status
    results = generator.decisive_results(grid)
    assert "**2 of its 4 runs have finished** (PH2, the new default at 5 %: seeds 0, 1)" in results
    assert "the new default, PH2: 54.7* / 0.862" in results and "1,000 updates (the method adds 200" in results
    assert "70 train-minutes" in results
    one = {"per_seed_honest": [1.01], "honest_dice": [1.01, 0.0]}  # one seed: no mean, no interval
    assert generator._paired_cell(one) == "+1.01" and generator._seeds([3]) == "seed 3"
    page = "a\n<!-- decisive:status (written by scripts/generate_docs.py) -->\nold\n<!-- /decisive:status -->\nb\n"
    assert generator.fill(page, "status", "new\n", tmp_path) == page.replace("old\n", "new\n")
    with pytest.raises(SystemExit, match="markers of decisive:results are missing"):
        generator.fill(page, "results", "new\n", tmp_path)


def test_no_setting_s_description_runs_on_into_the_next():
    """A comment line under a setting's trailing comment is read as the next setting's
    description: a trailing comment cut off mid-sentence gave its end to the next setting."""
    from pydantic import BaseModel

    from superdiffusion import config, method_settings

    generator = _generator()
    for module in (config, method_settings):
        for cls in vars(module).values():
            if isinstance(cls, type) and issubclass(cls, BaseModel) and cls.__module__ == module.__name__:
                for name, text in generator._comments(cls).items():
                    assert not text.endswith((";", ",", ":")), f"{cls.__name__}.{name}: {text!r} is cut off"


@pytest.mark.skipif(
    shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None, reason="mkdocs is not installed"
)
def test_the_site_builds_strictly(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    done = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "site" / "api" / "index.html").is_file()
