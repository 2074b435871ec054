"""Build the small PH2 copy embedded in the package (``superdiffusion/builtin/ph2_128``).

Reads the converted PH2 folder (``images/``, ``masks/``, ``split.csv``, ``PROVENANCE.md``)
and writes every image resized to 128x128 (images bicubic, masks nearest, masks kept as
0/255) with the same file names, split and provenance. Run from the repository root:

    python scripts/make_default_dataset.py ../shared/data/PH2
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image

DEST = Path(__file__).resolve().parents[1] / "src" / "superdiffusion" / "builtin" / "ph2_128"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="PH2 folder with images/, masks/, split.csv")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--dest", type=Path, default=DEST)
    args = parser.parse_args()

    for sub in ("images", "masks"):
        (args.dest / sub).mkdir(parents=True, exist_ok=True)
    images = sorted((args.source / "images").glob("*.png"))
    if not images:
        raise SystemExit(f"no PNG images under {args.source / 'images'}")
    size = (args.size, args.size)
    for path in images:
        img = Image.open(path).convert("RGB").resize(size, Image.Resampling.BICUBIC)
        img.save(args.dest / "images" / path.name, optimize=True)
        mask = Image.open(args.source / "masks" / path.name).convert("L")
        mask = mask.point(lambda v: 255 if v > 127 else 0).resize(size, Image.Resampling.NEAREST)
        mask.save(args.dest / "masks" / path.name, optimize=True)
    shutil.copy(args.source / "split.csv", args.dest / "split.csv")
    provenance = (args.source / "PROVENANCE.md").read_text()
    note = (
        f"\n## This copy\n- Made by `scripts/make_default_dataset.py`: every image and mask of the "
        f"folder above resized to {args.size}x{args.size} (images bicubic, masks nearest "
        "neighbour, 0/255). Same file names and the same `split.csv`.\n"
    )
    (args.dest / "PROVENANCE.md").write_text(provenance + note)
    print(f"wrote {len(images)} pairs to {args.dest}")


if __name__ == "__main__":
    main()
