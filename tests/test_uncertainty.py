"""Uncertainty measures against values worked out by hand, and their place in results.json."""

import pytest
import torch
from conftest import tiny_config

from superdiffusion import api
from superdiffusion.uncertainty import (
    binary_entropy,
    dice_spearman,
    error_auroc,
    expected_calibration_error,
    uncertainty_report,
)


def test_expected_calibration_error_by_hand():
    p = torch.tensor([0.1, 0.1, 0.9, 0.9])
    y = torch.tensor([0, 1, 1, 1])
    # bin 1 holds the two 0.1s (1 of 2 foreground): gap 0.4; bin 13 the 0.9s (2 of 2): gap 0.1
    assert expected_calibration_error(p, y) == pytest.approx((2 * 0.4 + 2 * 0.1) / 4)
    assert expected_calibration_error(torch.tensor([0.0, 1.0]), torch.tensor([0, 1])) == 0  # certain and right
    assert expected_calibration_error(torch.tensor([0.0, 1.0]), torch.tensor([1, 0])) == 1  # certain and wrong


def test_error_auroc_and_spearman_by_hand():
    errors = torch.tensor([False, False, True, True])
    assert error_auroc(torch.tensor([0.1, 0.2, 0.8, 0.9]), errors) == pytest.approx(1.0)
    assert error_auroc(torch.tensor([0.9, 0.8, 0.2, 0.1]), errors) == pytest.approx(0.0)
    assert error_auroc(torch.tensor([0.5, 0.5, 0.5, 0.5]), errors) == pytest.approx(0.5)
    assert error_auroc(torch.tensor([0.1, 0.2]), torch.tensor([False, False])) != error_auroc(
        torch.tensor([0.1, 0.2]), torch.tensor([False, False])
    )  # nan: no wrong pixel to find
    u = torch.tensor([[0.1, 0.1], [0.2, 0.2], [0.3, 0.5]])  # mean uncertainty 0.1, 0.2, 0.4
    assert dice_spearman(u, [0.9, 0.8, 0.3]) == pytest.approx(-1.0)
    assert binary_entropy(torch.tensor([0.5, 0.0]))[0] == pytest.approx(1.0)


def test_report_gives_every_source_its_measures():
    fg = torch.tensor([[0.9, 0.6, 0.2], [0.1, 0.45, 0.8], [0.75, 0.3, 0.05]])
    target = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 1, 0]])
    report = uncertainty_report(fg, target, 0.5, [0.67, 0.8, 0.67], {"entropy": binary_entropy(fg)})
    # wrong pixels: 0.6 (fp), 0.45 (fn), 0.3 (fn) are the three closest to 0.5: entropy ranks them first
    assert report["sources"]["entropy"]["error_auroc"] == pytest.approx(1.0)


def test_diffusion_runs_record_their_uncertainty_measures(tmp_path):
    cfg = tiny_config("train.epochs=1", "method.pretrain_epochs=0", "method.rounds=1", "eval.samples=2")
    results = api.train(cfg, tmp_path / "run")
    sources = results["uncertainty"]["sources"]
    assert set(sources) == {"entropy", "spread", "teacher_disagreement"}
    assert 0 <= results["uncertainty"]["ece"] <= 1
    for measures in sources.values():
        assert measures["error_auroc"] is None or 0 <= measures["error_auroc"] <= 1
        assert measures["dice_spearman"] is None or -1 <= measures["dice_spearman"] <= 1
    baseline = api.train(tiny_config("method=supervised", "train.epochs=1"), tmp_path / "sup")
    assert set(baseline["uncertainty"]["sources"]) == {"entropy"}


def test_suggest_then_train_on_the_chosen_images(tmp_path, capsys):
    import csv

    from superdiffusion import cli

    run = tmp_path / "run"
    first = api.train(tiny_config("method=supervised", "train.epochs=1"), run)
    assert cli.main(["suggest", str(run), "--count", "3"]) == 0
    with open(run / "suggest-entropy-3.csv", newline="") as handle:
        ranking = list(csv.DictReader(handle))
    assert len(ranking) == first["counts"]["unlabeled"]
    scores = [float(r["score"]) for r in ranking]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    following = (run / "labeled_next.txt").read_text().split()
    assert following[-3:] == [r["id"] for r in ranking[:3]] and len(following) == first["counts"]["labeled"] + 3
    second = api.train(tiny_config("method=supervised", "train.epochs=1", f"data.labeled_ids={run / 'labeled_next.txt'}"),
                       tmp_path / "next")  # fmt: skip
    assert second["counts"]["labeled"] == first["counts"]["labeled"] + 3
    assert cli.main(["suggest", str(run), "--count", "3"]) == 2  # never overwrites
    (tmp_path / "ids.txt").write_text("IMD002\nnot-an-image\n")
    capsys.readouterr()
    assert cli.main(["train", "method=supervised", f"data.labeled_ids={tmp_path / 'ids.txt'}", "--out",
                     str(tmp_path / "bad")]) == 2  # fmt: skip
    assert "are not training images of builtin:ph2_128 (the first: 'not-an-image')" in capsys.readouterr().err


def test_report_tabulates_each_uncertainty_source_over_seeds(tmp_path):
    from superdiffusion.experiments.report import uncertainty_markdown, uncertainty_table

    def run(seed, auroc, rho, ece):
        sources = {
            "entropy": {"error_auroc": auroc, "dice_spearman": rho},
            "spread": {"error_auroc": 0.5, "dice_spearman": 0.0},
        }
        return {"dataset": "d", "labeled_percent": 5, "method": "superdiffusion", "seed": seed,
                "uncertainty": {"ece": ece, "sources": sources}}  # fmt: skip

    table = uncertainty_table([run(0, 0.8, -0.4, 0.10), run(1, 0.6, -0.2, 0.20), {"dataset": "d", "labeled_percent": 5,
                               "method": "cps", "seed": 0}])  # fmt: skip
    assert [(e["source"], e["n_seeds"]) for e in table] == [("entropy", 2), ("spread", 2)]
    entropy = table[0]
    assert (entropy["error_auroc"], entropy["dice_spearman"], entropy["ece"]) == pytest.approx((0.7, -0.3, 0.15))
    assert "| d | 5 % | superdiffusion | entropy | 0.700 | -0.300 | 0.150 | 2 |" in uncertainty_markdown(table)


def test_mc_dropout_is_measured_for_networks_with_dropout(tmp_path):
    from conftest import tiny_config

    from superdiffusion import api

    fast = ["train.epochs=1", "train.steps_per_epoch=2"]
    mt = api.train(tiny_config(*fast, "method=mt"), tmp_path / "mt")  # its student has SSL4MIS's dropout
    source = mt["uncertainty"]["sources"]["mc_dropout"]
    assert 0 <= source["error_auroc"] <= 1 and source["mean"] > 0  # the passes differ
    plain = api.train(tiny_config(*fast, "method=supervised"), tmp_path / "plain")  # no dropout: no such source
    assert "mc_dropout" not in plain["uncertainty"]["sources"]
    with_dropout = api.train(tiny_config(*fast, "method=supervised", "model.dropout=0.3"), tmp_path / "dropout")
    assert with_dropout["uncertainty"]["sources"]["mc_dropout"]["mean"] > 0


def test_suggest_in_a_folder_where_only_some_images_have_masks(tmp_path, capsys):
    """Where the images without a mask are the pool, suggest's top images have no mask to label
    them by id: it says to draw their masks into the folder (the next train labels every masked
    image), instead of writing a data.labeled_ids file that training would refuse."""
    import csv

    from conftest import write_pair_folder

    from superdiffusion import cli

    root = write_pair_folder(tmp_path / "data", n=12, split=False)
    for k in (1, 4, 7, 10):
        (root / "masks" / f"case{k}.png").unlink()
    run = tmp_path / "run"
    api.train(tiny_config("method=supervised", "train.epochs=1", f"data.root={root}", "data.labeled_percent=100",
                          "data.val_fraction=0.2"), run)  # fmt: skip
    capsys.readouterr()
    assert cli.main(["suggest", str(run), "--count", "2"]) == 0
    with open(run / "suggest-entropy-2.csv", newline="") as handle:
        assert {r["id"] for r in csv.DictReader(handle)} == {"case1", "case4", "case7", "case10"}
    out = "".join(capsys.readouterr())  # the log line, on the console's stream
    assert not (run / "labeled_next.txt").exists()
    assert "draw the masks of its top 2 images (" in out and f"into {root / 'masks'}" in out
