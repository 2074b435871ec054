"""``superdiffusion`` console entry point: a thin argparse layer over :mod:`superdiffusion.api`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import SuperDiffusionError

EPILOG = """overrides: dataset=NAME|file.yaml method=NAME|file.yaml profile=cpu|paper section.key=value
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
    for where, scores in results["test"].items():
        if isinstance(scores, dict):
            parts = "  ".join(f"{k}={100 * v:.2f}%" for k, v in scores.items())
            lines.append(f"  test [{where}] {parts}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="superdiffusion",
        description="Semi-supervised biomedical segmentation with diffusion models.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

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

    p = sub.add_parser("evaluate", help="score a run's selected checkpoint on its test split")
    p.add_argument("run", help="run folder")
    p.add_argument("--protocol", choices=["honest", "paper"])
    p.add_argument("--samples", type=int, help="noise draws averaged per image (diffusion methods)")

    p = sub.add_parser("predict", help="segment new images with a trained run")
    p.add_argument("run", help="run folder")
    p.add_argument("inputs", help="an image file or a folder of images")
    p.add_argument("output", help="folder for the PNG masks")
    p.add_argument("--samples", type=int, default=1, help="noise draws; > 1 also writes uncertainty maps")

    sub.add_parser("methods", help="list the available methods")

    args = parser.parse_args(argv)
    try:
        return _run(args)
    except SuperDiffusionError as err:
        print(f"superdiffusion: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("superdiffusion: interrupted; continue with --resume", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from . import api
    from .config import resolve

    if args.command == "methods":
        from .methods import METHODS

        for name, cls in METHODS.items():
            print(f"{name:15s} {cls.description}")
        return 0
    if args.command == "train":
        cfg = resolve(args.overrides, args.config)
        results = api.train(cfg, args.out, resume=args.resume, force=args.force)
        print(_table(results))
        return 0
    if args.command == "evaluate":
        results = api.evaluate(args.run, args.protocol, args.samples)
        print(_table(results))
        return 0
    if args.command == "predict":
        written = api.predict(args.run, args.inputs, args.output, args.samples)
        print(f"wrote {len(written)} files to {Path(args.output)}")
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
