"""``superdiffusion`` console entry point: a thin argparse layer over :mod:`superdiffusion.api`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .errors import SuperDiffusionError

EPILOG = """overrides: dataset=NAME|file.yaml method=NAME|file.yaml profile=cpu|quick|paper section.key=value
examples:
  superdiffusion train                                  # the paper's method on the built-in PH2 copy
  superdiffusion train method=cps data.labeled_percent=5 train.seed=1
  superdiffusion train dataset=pupil profile=paper --out runs/pupil-sd
  superdiffusion predict runs/ph2/superdiffusion/p10-s0 my_images/ predictions/ --samples 8"""


def _table(results: dict) -> str:
    lines = [
        f"{results['method']} on {results['dataset']} ({results['labeled_percent']:g} % labels, "
        f"seed {results['seed']}, protocol {results['protocol']}, threshold "
        f"{results['selection']['threshold']:.2f} from {results['selection']['split']} epoch "
        f"{results['selection']['epoch']})"
    ]
    at = {"resized": f"at {results.get('scored_at', 'the training size')}", "original": "at each image's own size"}
    for where, scores in results["test"].items():
        if isinstance(scores, dict):
            parts = "  ".join(
                f"{k}={100 * v:.2f}%" if k.startswith(("dice", "jaccard")) else f"{k}={v:.2f}"
                for k, v in scores.items()
            )
            lines.append(f"  test [{at.get(where, where)}] {parts}")
    for name, scores in results.get("test_per_class", {}).items():
        if scores.get("present", True):
            lines.append(f"  test [{name}] dice={100 * scores['dice_per_image']:.2f}%")
        else:
            lines.append(f"  test [{name}] absent from every test mask: not scored")
    for warning in results.get("warnings", []):
        lines.append(f"  WARNING: {warning}")
    unc = results.get("uncertainty")
    if unc:
        auroc = "  ".join(
            f"{name}={m['error_auroc']:.3f}" for name, m in unc["sources"].items() if m["error_auroc"] is not None
        )
        lines.append(f"  calibration ECE={unc['ece']:.4f}; error AUROC of the uncertainty: {auroc}")
    flags = results.get("health", {}).get("flags")
    if flags:
        lines.append(
            f"  WARNING: collapse check fired: {', '.join(flags)} (docs/evaluation.md: 'When a run collapses')"
        )
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (with where to read more)."""

    def error(self, message: str):
        self.exit(2, f"superdiffusion: error: {message} (see: {self.prog} --help)\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="superdiffusion",
        description="Semi-supervised biomedical segmentation with diffusion models.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser(
        "train",
        help="train a method, then evaluate it on the test split",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", help="dataset=, method=, profile= and section.key=value")
    p.add_argument("--config", help="YAML file with sections data/model/method/train/eval")
    p.add_argument("--out", help="run folder (default runs/DATASET/METHOD/pPERCENT-sSEED)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--force", action="store_true", help="replace the run already in --out")

    p = sub.add_parser(
        "plan",
        help="fingerprint a data folder and print the data settings train would plan from it",
        description="Reads the folder's image headers and a sample of its images and masks, prints the "
        "planned data settings with their reasons, and writes them as a --config file. train applies the "
        "same plan to a data.root folder unless told otherwise (data.plan=false).",
    )
    p.add_argument("data", help="dataset folder (images/ + masks/ or labels/, or volumes)")
    p.add_argument("--out", help="the plan as a --config YAML (default: print only)")
    p.add_argument("--batch-size", type=_positive, default=8, help="train.batch_size the patch budget is for")
    p.add_argument(
        "--masks",
        help="the folder of masks inside the dataset folder (data.masks), when two could be; "
        "or the tag after an image's name of the masks kept beside it (_1stHO)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing --out file")

    p = sub.add_parser("show", help="write a page to look at a run: curves, scores, every test case worst first")
    p.add_argument("run", help="run folder")
    p.add_argument("--out", help="a new folder for the page (default: RUN/report.html, its images in RUN/report-files)")
    p.add_argument("--samples", type=_positive, default=4, help="noise draws for the uncertainty (diffusion methods)")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda[:N]")

    p = sub.add_parser("evaluate", help="score a run's selected checkpoint on its test split")
    p.add_argument("run", help="run folder")
    p.add_argument("--protocol", choices=["honest", "paper"])
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda[:N]")
    p.add_argument("--samples", type=_positive, help="noise draws averaged per image (diffusion methods)")
    p.add_argument("--out", help="JSON file for the scores (default: RUN/evaluation-PROTOCOL-kSAMPLES.json)")

    p = sub.add_parser("predict", help="segment new images with a trained run")
    p.add_argument("run", help="run folder")
    p.add_argument("inputs", help="an image file or a folder of images")
    p.add_argument("output", help="folder for the PNG masks")
    p.add_argument("--samples", type=_positive, default=1, help="noise draws; > 1 also writes uncertainty maps")
    p.add_argument("--force", action="store_true", help="overwrite masks already in the output folder")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda[:N]")
    p.add_argument(
        "--save-probabilities",
        action="store_true",
        help="also write the foreground probability (16-bit PNG, 65535 = 1; NIfTI float for volumes)",
    )

    p = sub.add_parser("suggest", help="rank unlabeled images by how much a label would help (active learning)")
    p.add_argument("run", help="run folder")
    p.add_argument("--count", type=_positive, required=True, help="how many images to add to the labeled set")
    p.add_argument("--by", default="entropy", choices=["entropy", "spread", "teacher_disagreement"])
    p.add_argument("--inputs", help="rank the images of this folder instead of the run's unlabeled ones")
    p.add_argument("--out", help="ranking CSV (default: RUN/suggest-BY-COUNT.csv)")
    p.add_argument("--samples", type=_positive, default=8, help="noise draws for --by spread")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda[:N]")

    p = sub.add_parser("export", help="write a 2D run's model as one file: TorchScript or ONNX, preprocessing inside")
    p.add_argument("run", help="run folder")
    p.add_argument(
        "out", help="model file to write (e.g. model.pt or model.onnx); its metadata goes beside it as OUT.json"
    )
    p.add_argument("--format", default=None, choices=["torchscript", "onnx"], help="default: from OUT's suffix")
    p.add_argument("--force", action="store_true", help="replace an existing file")

    sub.add_parser("methods", help="list the available methods")

    p = sub.add_parser(
        "sweep",
        help="run a grid of trainings (finished runs are skipped, interrupted ones resume)",
        epilog="grid axes are key=[a,b,...], e.g. method=[cps,superdiffusion] "
        "data.labeled_percent=[5,20] train.seed=[0,1,2]; other key=value are fixed",
    )
    p.add_argument("overrides", nargs="*", help="grid axes key=[...] and fixed key=value settings")
    p.add_argument("--grid", help="YAML with 'grid: {key: [values]}' and optional 'fixed: {key: value}'")
    p.add_argument("--preset", help="table1, ablation-pretrain or ablation-rounds")
    p.add_argument("--root", default="runs/sweep", help="folder of the runs (default runs/sweep)")
    p.add_argument("--jobs", type=int, default=1, help="parallel local processes")
    p.add_argument("--executor", default="local", choices=["local", "slurm", "submitit-local"])
    p.add_argument(
        "--slurm",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="submitit parameters, e.g. slurm_partition=gpu timeout_min=600 gpus_per_node=1",
    )
    p.add_argument("--dry-run", action="store_true", help="list the runs and their state, run nothing")

    p = sub.add_parser("import-dataset", help="convert an official download of glas, ph2, hmeps or la")
    p.add_argument("kind", choices=["glas", "ph2", "hmeps", "la"])
    p.add_argument("source", help="the downloaded folder")
    p.add_argument("dest", help="a new folder for the converted dataset")
    p.add_argument("--seed", type=int, default=0, help="seed of the split where no official one exists")

    p = sub.add_parser("make-dataset", help="write a synthetic known-answer dataset (thin vessel-like structures)")
    p.add_argument("kind", choices=["thin"])
    p.add_argument("dest", help="a new folder (images/, masks/, split.csv)")
    p.add_argument("--count", type=_positive, default=48, help="images in all (default 48)")
    p.add_argument("--size", type=_positive, default=256, help="side in pixels (default 256)")
    p.add_argument("--test-count", type=_positive, help="images in the test split (default: half)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--contrast", type=float, default=1.0, help="vessel contrast, below 1 fainter (default 1)")
    p.add_argument("--noise", type=float, default=0.02, help="noise standard deviation, intensities in [0, 1]")

    p = sub.add_parser("figure", help="qualitative figure: sample / teacher / student / target / uncertainty")
    p.add_argument("run", help="run folder")
    p.add_argument("--out", default="figure.png")
    p.add_argument("--force", action="store_true", help="replace --out if it exists (the one file you name)")
    p.add_argument("--ids", nargs="*", help="test image ids (default: the first --count)")
    p.add_argument("--count", type=_positive, default=4)
    p.add_argument("--samples", type=_positive, default=8, help="noise draws for the uncertainty column")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda[:N]")

    p = sub.add_parser("report", help="tables (Markdown, CSV, LaTeX) and plots of finished runs")
    p.add_argument("roots", nargs="+", help="folders searched for results.json")
    p.add_argument("--out", default="reports", help="output folder (default reports)")
    p.add_argument("--resolution", default="resized", choices=["resized", "original"])
    p.add_argument(
        "--scores",
        default="auto",
        choices=["auto", "per_image", "pooled"],
        help="auto (default): per image for honest rows, pooled for test-selected (paper) rows",
    )
    p.add_argument("--pooled", action="store_true", help="same as --scores pooled")
    p.add_argument("--plot", action="store_true", help="also plot the ablation (error bars) as PNG")

    args = parser.parse_args(argv)
    handler = _console_log()
    try:
        return _run(args)
    except SuperDiffusionError as err:
        print(f"superdiffusion: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a read-only folder, a full disk, a name too long: the system's reason, in one line
        where = f"{err.filename}: " if err.filename else ""
        print(f"superdiffusion: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except MemoryError:  # its message is empty: say what happened
        print(
            f"superdiffusion: error: {args.command} ran out of memory; use a machine with more, or smaller or fewer "
            "images (a smaller train.batch_size or data.patch_size for training)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("superdiffusion: interrupted; continue with --resume", file=sys.stderr)
        return 130
    finally:
        logging.getLogger("superdiffusion").removeHandler(handler)


class _TqdmHandler(logging.Handler):
    """Log lines printed above any progress bar (tqdm.write), to stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def _console_log() -> logging.Handler:
    handler = _TqdmHandler()
    package = logging.getLogger("superdiffusion")
    package.addHandler(handler)
    package.setLevel(logging.INFO)  # the command line shows the package's progress lines
    return handler


def _run(args: argparse.Namespace) -> int:
    from . import api
    from .config import resolve, resume_config

    if args.command == "methods":
        from .methods import METHODS

        for name, cls in METHODS.items():
            print(f"{name:15s} {cls.description}")
        return 0
    if args.command == "plan":
        from . import safefs
        from .plan import plan_for

        plan = plan_for(args.data, args.batch_size, masks=args.masks)
        for line in plan.lines():
            print(line)
        if args.out:
            out = Path(args.out)
            if out.exists() and not args.force:
                raise SuperDiffusionError(f"{out} already exists; add --force to replace it")
            given = f"  root: {json.dumps(str(Path(args.data)))}\n" + (
                f"  masks: {json.dumps(args.masks)}\n" if args.masks else ""
            )
            text = plan.yaml().replace("data:\n", f"data:\n{given}", 1)
            safefs.write_text(out, text)
            print(f"wrote {out} (use it with: superdiffusion train --config {out})")
        return 0
    if args.command == "train":
        from .plan import Planner, RecordedPlan
        from .runfolder import RunFolder

        planner = Planner()
        cfg = resolve(args.overrides, args.config, planner)
        out = Path(args.out) if args.out else api.default_run_dir(cfg)
        if args.resume and (out / "config.yaml").exists():  # the run's own settings, plus the command's
            planner = RecordedPlan(RunFolder(out).read_plan())  # nothing is planned again: the run's plan holds
            cfg = resume_config(api.saved_config(out), args.overrides, args.config, planner)
        results = api.train(cfg, out, resume=args.resume, force=args.force, plan=planner.record())
        if results:  # ranks other than 0 of a torchrun job print nothing
            print(_table(results))
        return 0
    if args.command == "show":
        from .experiments.page import write_page

        index = write_page(args.run, args.out, args.samples, args.device)
        print(f"wrote {index} (open it in a browser)")
        return 0
    if args.command == "evaluate":
        results = api.evaluate(args.run, args.protocol, args.samples, args.device, args.out)
        print(_table(results))
        print(f"wrote {results['written_to']}")
        return 0
    if args.command == "predict":
        written = api.predict(
            args.run, args.inputs, args.output, args.samples, args.force, args.device, args.save_probabilities
        )
        print(f"wrote {len(written)} file{'' if len(written) == 1 else 's'} to {Path(args.output)}")
        return 0
    if args.command == "export":
        from .export import export

        fmt = args.format or ("onnx" if args.out.endswith(".onnx") else "torchscript")
        path = export(args.run, args.out, fmt, args.force)
        size = path.stat().st_size / 2**20
        print(f"wrote {path} ({fmt}, {size:.1f} MB) and {path.with_name(path.name + '.json')}")
        return 0
    if args.command == "suggest":
        ranking, following = api.suggest(
            args.run, args.count, args.by, args.inputs, args.out, args.samples, args.device
        )
        print(f"wrote the ranking to {ranking}")
        if following is not None:
            print(
                f"wrote {following}: the run's labeled ids plus the top {args.count}; train with data.labeled_ids={following}"
            )
        return 0
    if args.command == "sweep":
        from .experiments.sweep import expand, load_grid, run_sweep, slurm_parameters

        grid, fixed = load_grid(args.grid, args.preset, args.overrides)
        specs = expand(grid, fixed, Path(args.root))
        slurm = slurm_parameters(args.slurm)
        if args.dry_run:
            for s in specs:
                state = "finished" if s.finished else "started" if s.started else "new"
                print(f"{state:9s} {s.folder}  {' '.join(s.overrides)}")
            return 0
        counts = run_sweep(specs, args.jobs, args.executor, slurm)
        print(
            f"{counts['total']} runs: {counts['skipped']} already finished, {counts['busy']} being trained by "
            f"another process, {counts['finished']} finished now, {counts['failed']} failed (see console.log and "
            "train.log in their folders)"
        )
        return 1 if counts["failed"] else 0
    if args.command == "import-dataset":
        from .data.importers import import_dataset

        counts = import_dataset(args.kind, args.source, args.dest, args.seed)
        print(f"{args.kind}: " + ", ".join(f"{n} {split}" for split, n in sorted(counts.items())) + f" -> {args.dest}")
        return 0
    if args.command == "make-dataset":
        from .data.synthetic import write_thin_structures

        counts = write_thin_structures(
            args.dest, args.count, args.size, args.seed, args.test_count, contrast=args.contrast, noise=args.noise
        )
        print(f"{args.kind}: {counts['train']} train, {counts['test']} test -> {args.dest}")
        return 0
    if args.command == "figure":
        from .experiments.figures import qualitative_figure

        print(f"wrote {qualitative_figure(args.run, args.out, args.ids, args.count, args.samples, args.device, args.force)}")
        return 0
    if args.command == "report":
        from .experiments.report import write_report

        files = write_report(
            [Path(r) for r in args.roots],
            Path(args.out),
            args.resolution,
            "pooled" if args.pooled else args.scores,
            args.plot,
        )
        print(files["md"].read_text())
        print("wrote " + ", ".join(str(f) for f in files.values()))
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
