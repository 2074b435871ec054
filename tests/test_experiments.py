import json
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST
from PIL import Image

from superdiffusion.config import resolve
from superdiffusion.errors import DataError
from superdiffusion.experiments.report import aggregate, collect, markdown, mean_ci, plot_ablation, write_report
from superdiffusion.experiments.sweep import expand, parse_grid_args, run_sweep


def _result(root, method, percent, seed, dice, jaccard, protocol="honest", seconds=None):
    folder = root / "ph2" / method / f"p{percent}-s{seed}"
    folder.mkdir(parents=True)
    scores = {"dice_per_image": dice, "jaccard_per_image": jaccard, "dice_pooled": dice, "jaccard_pooled": jaccard}
    (folder / "results.json").write_text(
        json.dumps(
            {
                "method": method,
                "dataset": "ph2",
                "labeled_percent": percent,
                "seed": seed,
                "protocol": protocol,
                "test": {"resized": scores},
                **({"train_seconds": seconds} if seconds is not None else {}),
            }
        )
    )


def test_mean_and_90_percent_interval_by_hand():
    mean, half = mean_ci([80.0, 90.0, 85.0])
    # sd = 5, t(0.95, 2) = 2.919986
    assert mean == 85.0 and abs(half - 2.919986 * 5 / np.sqrt(3)) < 1e-4
    assert mean_ci([70.0]) == (70.0, 0.0)


def test_report_tables_from_hand_made_results(tmp_path):
    for seed, (d, j) in enumerate([(0.80, 0.70), (0.90, 0.80), (0.85, 0.75)]):
        _result(tmp_path, "cps", 5, seed, d, j, seconds=60.0 * (seed + 1))
    for seed, (d, j) in enumerate([(0.70, 0.60), (0.72, 0.62), (0.74, 0.64)]):
        _result(tmp_path, "supervised", 5, seed, d, j)
    table = aggregate(collect([tmp_path]))
    cps = next(e for e in table if e["method"] == "cps")
    assert abs(cps["dice"] - 85.0) < 1e-9 and abs(cps["jaccard_ci90"] - 2.919986 * 5 / np.sqrt(3)) < 1e-4
    md = markdown(table)
    assert "**85.00 ± 8.43**" in md and "72.00 ± 3.37" in md and "honest" in md
    # mean training time: (1 + 2 + 3) / 3 minutes for cps; unknown for the hand-made supervised runs
    assert "| 3 | 2.0 |" in md and "| 3 | - |" in md
    lines = [line for line in md.splitlines() if line.startswith("|")]
    assert len({line.count("|") for line in lines}) == 1  # header, rule and rows have the same columns
    files = write_report([tmp_path], tmp_path / "report")
    assert "cps" in files["csv"].read_text() and "\\textbf{85.00" in files["tex"].read_text()


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_ablation_plots_are_valid_pngs(tmp_path):
    for r, d in [(0, 0.8), (1, 0.82), (2, 0.85)]:
        for seed in (0, 1):
            folder = tmp_path / "runs" / "ph2" / "superdiffusion" / f"p10-s{seed}-rounds{r}"
            folder.mkdir(parents=True)
            s = {"dice_per_image": d + seed / 100, "jaccard_per_image": d - 0.1}
            (folder / "results.json").write_text(
                json.dumps(
                    {
                        "method": "superdiffusion",
                        "dataset": "ph2",
                        "labeled_percent": 10,
                        "seed": seed,
                        "protocol": "honest",
                        "test": {"resized": s},
                    }
                )
            )
    table = aggregate(collect([tmp_path / "runs"]))
    assert [e["variant"] for e in table] == ["rounds0", "rounds1", "rounds2"]
    plot_ablation(table, tmp_path / "rounds.png")
    assert _png_size(tmp_path / "rounds.png") == (500, 350)


def test_grid_expansion_names_folders_by_settings(tmp_path):
    grid, fixed = parse_grid_args(
        [
            "method=[supervised,cps]",
            "data.labeled_percent=[5,20]",
            "train.seed=[0,1]",
            "data.size=[32, 32]",
            "method.lambda_max=0.2",
        ]
    )
    assert set(grid) == {"method", "data.labeled_percent", "train.seed"} and "data.size=[32, 32]" in fixed
    specs = expand(grid, fixed, tmp_path)
    assert len(specs) == 8
    assert tmp_path / "ph2" / "cps" / "p20-s1" in [s.folder for s in specs]


def test_sweep_runs_skips_finished_and_resumes_interrupted(tmp_path):
    grid, fixed = parse_grid_args(
        ["method=[supervised,cps]", "data.labeled_percent=[10,50]", "train.seed=[0,1]", *FAST]
    )
    specs = expand(grid, fixed, tmp_path)
    counts = run_sweep(specs, jobs=2)
    assert counts == {"total": 8, "skipped": 0, "busy": 0, "finished": 8, "failed": 0}, [
        (s.folder / "console.log").read_text()[-500:] for s in specs if not s.finished
    ]
    stamps = {s.folder: (s.folder / "results.json").stat().st_mtime_ns for s in specs}
    interrupted = specs[3]
    (interrupted.folder / "results.json").unlink()  # as if killed after its last checkpoint
    counts = run_sweep(specs, jobs=1)
    assert counts == {"total": 8, "skipped": 7, "busy": 0, "finished": 1, "failed": 0}
    for s in specs:
        if s is not interrupted:
            assert (s.folder / "results.json").stat().st_mtime_ns == stamps[s.folder]
    assert interrupted.finished
    table = aggregate(collect([tmp_path]))
    assert len(table) == 4 and all(len(e["seeds"]) == 2 for e in table)


def test_submitit_local_executor_runs_a_grid_point(tmp_path):
    pytest.importorskip("submitit")
    specs = expand({"method": ["supervised"]}, FAST, tmp_path)
    counts = run_sweep(specs, executor="submitit-local")
    assert counts["finished"] == 1 and specs[0].finished


def test_qualitative_figure(tmp_path):
    from conftest import tiny_config

    from superdiffusion import api
    from superdiffusion.experiments.figures import qualitative_figure

    api.train(tiny_config("train.epochs=1", "method.pretrain_epochs=0", "method.rounds=1"), tmp_path / "run")
    out = qualitative_figure(tmp_path / "run", tmp_path / "fig.png", count=2, samples=3)
    assert _png_size(out) == (1000, 400)  # 5 panels x 2 rows of 2 inches at 100 dpi


# --- importers of the paper's datasets, on trees shaped like the official downloads ----------
def _bmp(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_import_glas_ph2_hmeps(tmp_path):
    from superdiffusion.config import DataConfig
    from superdiffusion.data import build_data
    from superdiffusion.data.importers import import_dataset

    img = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    inst = np.zeros((20, 30), np.uint8)
    inst[2:8, 2:8], inst[10:15, 10:20] = 1, 2  # two gland instances
    for name in ("train_1", "train_2", "train_3", "testA_1", "testB_1"):
        _bmp(tmp_path / "glas" / f"{name}.bmp", img)
        _bmp(tmp_path / "glas" / f"{name}_anno.bmp", inst)
    assert import_dataset("glas", tmp_path / "glas", tmp_path / "out_glas") == {"test": 2, "train": 3}
    mask = np.asarray(Image.open(tmp_path / "out_glas" / "masks" / "train_1.png"))
    assert set(np.unique(mask)) == {0, 255} and (mask > 0).sum() == 36 + 50
    data = build_data(DataConfig(root=str(tmp_path / "out_glas"), size=[16, 16], labeled_percent=50), 0)
    assert len(data.test) == 2

    for k in range(1, 6):
        case = tmp_path / "PH2Dataset" / "PH2 Dataset images" / f"IMD00{k}"
        _bmp(case / f"IMD00{k}_Dermoscopic_Image" / f"IMD00{k}.bmp", img)
        _bmp(case / f"IMD00{k}_lesion" / f"IMD00{k}_lesion.bmp", (inst > 0).astype(np.uint8) * 255)
    assert import_dataset("ph2", tmp_path / "PH2Dataset", tmp_path / "out_ph2") == {"test": 1, "train": 4}

    for k in range(5):
        _bmp(tmp_path / "meye" / "images" / f"e{k}.png", img[..., 0])
        _bmp(tmp_path / "meye" / "masks" / f"e{k}.png", (inst > 0).astype(np.uint8) * 255)
    assert sum(import_dataset("hmeps", tmp_path / "meye", tmp_path / "out_meye").values()) == 5
    with pytest.raises(DataError, match="not empty"):
        import_dataset("hmeps", tmp_path / "meye", tmp_path / "out_meye")


def test_import_la_nrrd_and_h5(tmp_path):
    import h5py
    import nrrd

    from superdiffusion.data.importers import import_dataset
    from superdiffusion.data.volumes import scan_volumes

    vol = np.random.default_rng(0).random((8, 9, 10)).astype(np.float32)
    lab = (vol > 0.5).astype(np.uint8) * 255
    for k in range(5):
        (tmp_path / "la" / f"case{k}").mkdir(parents=True)
        nrrd.write(str(tmp_path / "la" / f"case{k}" / "lgemri.nrrd"), vol)
        nrrd.write(str(tmp_path / "la" / f"case{k}" / "laendo.nrrd"), lab)
        (tmp_path / "la_h5" / f"case{k}").mkdir(parents=True)
        with h5py.File(tmp_path / "la_h5" / f"case{k}" / "mri_norm2.h5", "w") as f:
            f["image"], f["label"] = vol, lab // 255
    assert import_dataset("la", tmp_path / "la", tmp_path / "out_la") == {"test": 1, "train": 4}
    assert len(scan_volumes(tmp_path / "out_la")) == 5
    assert import_dataset("la", tmp_path / "la_h5", tmp_path / "out_h5") == {"test": 1, "train": 4}
    pairs = scan_volumes(tmp_path / "out_h5")
    assert sorted(p.id for p in pairs) == [f"case{k}" for k in range(5)]
    assert sum(p.split == "test" for p in pairs) == 1


def test_sweep_checks_method_settings_before_running(tmp_path):
    from superdiffusion.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown setting 'round'"):
        expand({"method.round": [1, 2]}, [], tmp_path)
    with pytest.raises(ConfigError, match="recon_space=image"):
        expand({"method.pretrain_image_input": ["noise"]}, ["method.recon_space=noise"], tmp_path)
    assert not any(tmp_path.iterdir())


def test_report_cells_bold_and_latex_follow_the_evidence(tmp_path):
    import re

    for seed, d in enumerate([0.80, 0.90, 0.85]):
        _result(tmp_path, "cps", 5, seed, d, d - 0.1)
    for seed, d in enumerate([0.78, 0.88, 0.83]):  # overlapping intervals with cps
        _result(tmp_path, "supervised", 5, seed, d, d - 0.1)
    _result(tmp_path, "em", 5, 0, 0.70, 0.60)  # one seed: no interval
    table = aggregate(collect([tmp_path]))
    md = markdown(table)
    assert "**" not in md and "intervals overlap" in md  # no winner is claimed
    em_row = next(line for line in md.splitlines() if "| em |" in line)
    assert "| 70.00 |" in em_row and "±" not in em_row
    files = write_report([tmp_path], tmp_path / "report")
    tex = files["tex"].read_text()
    caption = tex[tex.index("\\caption{") :].split("\n")[0]
    assert not re.search(r"(?<!\\)%", caption) and "+-" not in caption
    assert caption.count("{") == caption.count("}")  # the caption closes
    header = files["csv"].read_text().splitlines()[0].split(",")
    assert "seed_ids" in header and "n_seeds" in header and "seeds" not in header
    # separated intervals: the best is bold again
    for seed, d in enumerate([0.95, 0.96, 0.97]):
        _result(tmp_path / "b", "cps", 5, seed, d, d - 0.1)
    for seed, d in enumerate([0.78, 0.80, 0.79]):
        _result(tmp_path / "b", "supervised", 5, seed, d, d - 0.1)
    assert "**96.00 ± 1.69**" in markdown(aggregate(collect([tmp_path / "b"])))


def test_evidence_tables_put_table_1_beside_the_row_it_matches(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import evidence

    row = {"dataset": "ph2-full", "labeled_percent": 5, "method": "cps", "variant": ""}
    assert evidence.table1(row) == "PH2 82.86 / 70.78"
    assert evidence.table1({**row, "dataset": "pupil", "labeled_percent": 20, "method": "superdiffusion"}) == (
        "HMEPS 94.37 / 89.32"
    )
    assert evidence.table1({**row, "method": "supervised"}) == "-"  # Table 1 has no supervised 5 % row
    assert evidence.table1({**row, "variant": "rounds0"}) == "-"  # an ablation is not Table 1's method
    assert evidence.updates({"updates": [1000], "pretrain_updates": [200]}) == "1,000 + 200 pretraining"
    assert evidence.updates({"updates": [1000], "pretrain_updates": [0]}) == "1,000"
    assert evidence.cell((0.284, 4.42), 3, "+") == "+0.28 ± 4.42"


def test_evidence_pairs_a_split_variant_with_the_reference_trained_on_the_same_split(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import evidence

    from superdiffusion.config import resolve

    def record(method, variant, dice):
        scores = {"dice": dice, "jaccard": dice}
        return {"dataset": "pupil", "labeled_percent": 20, "method": method, "variant": variant, "seed": 0} | {
            "honest": scores,
            "paper_threshold": scores,
        }

    records = [
        record("cps", "", 0.90),
        record("superdiffusion", "", 0.70),
        record("cps", "subject-val", 0.86),
        record("superdiffusion", "subject-val", 0.84),
        record("superdiffusion", "rounds0", 0.80),  # not a split variant: against the grid's cps
        record("uamt", "", 0.75),  # the other reference; uamt itself is never paired as a method
    ]
    diffs = {(d["method"], d["reference"]): round(d["honest_dice"], 6) for d in evidence.paired(records)}
    assert diffs == {
        ("superdiffusion", "cps"): -20.0,
        ("superdiffusion (subject-val)", "cps (subject-val)"): -2.0,
        ("superdiffusion (rounds0)", "cps"): -10.0,
        ("superdiffusion", "uamt"): -5.0,
        ("superdiffusion (rounds0)", "uamt"): 5.0,
    }
    specs = evidence.build_specs(Path("/nonexistent"), 96, 1, False)
    splits = {s.folder.name: resolve(s.overrides).data.group_column for s in specs if s.folder.parts[-3] == "pupil"}
    assert splits["p20-s0-subject-val"] == "subject" and splits["p20-s0"] is None
    assert len(specs) == 72 and "p5-s0-paper-settings" not in splits  # the extras are opt-in
    extra = {
        (s.folder.parts[-3], s.folder.parts[-2], s.folder.name) for s in evidence.build_specs(Path("/x"), 96, 1, True)
    }
    assert ("pupil", "superdiffusion", "p5-s0-paper-settings") in extra and ("pupil", "cct", "p5-s0") in extra


def test_any_list_valued_setting_is_a_value_or_an_axis(tmp_path):
    # what a grid axis is comes from the settings' field types, not from a list of key prefixes
    grid, fixed = parse_grid_args(["method=[supervised]", "train.betas=[0.9,0.999]", "model.features=[8, 16]"])
    assert set(grid) == {"method"} and "train.betas=[0.9,0.999]" in fixed and "model.features=[8, 16]" in fixed
    assert resolve(fixed).train.betas == [0.9, 0.999]
    grid, fixed = parse_grid_args(
        [
            "method=[supervised]",
            "train.betas=[[0.9,0.999],[0.9,0.99]]",
            "data.size=[null,[32,32]]",
            "data.patch_size=[16,16]",
        ]
    )
    assert grid == {"method": ["supervised"], "train.betas": [[0.9, 0.999], [0.9, 0.99]], "data.size": [None, [32, 32]]}
    specs = expand(grid, fixed, tmp_path)
    settings = sorted((tuple(resolve(s.overrides).train.betas), resolve(s.overrides).data.size is None) for s in specs)
    assert settings == [((0.9, 0.99), False), ((0.9, 0.99), True), ((0.9, 0.999), False), ((0.9, 0.999), True)]
    assert len({s.folder for s in specs}) == 4 and all(" " not in s.folder.name for s in specs)


def test_decisive_tabulates_the_teachers_zero_label_score_per_seed(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import decisive

    def teacher(seed, dice, auroc, swapped=False, dataset="ph2-full"):
        return {"dataset": dataset, "labeled_percent": 5.0, "method": "superdiffusion", "seed": seed} | {
            "dice": dice,
            "auroc": auroc,
            "swapped": swapped,
        }

    table = decisive.teacher_markdown(
        [teacher(1, 0.60, 0.9), teacher(0, 0.50, 0.8, True), teacher(0, 0.1, 0.7, dataset="pupil")]
    )
    rows = [line for line in table.splitlines() if line.startswith("| ph2") or line.startswith("| pupil")]
    assert rows == [
        "| ph2-full | 5 % | superdiffusion | 0,1 | 50.0*, 60.0 | 55.0 | 0.800, 0.900 |",
        "| pupil | 5 % | superdiffusion | 0 | 10.0 | 10.0 | 0.700 |",
    ]
