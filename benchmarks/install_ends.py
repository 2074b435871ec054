"""The dependency ranges of ``pyproject.toml``, tested at both ends: the test suite in a fresh
virtual environment with the lowest version each range admits (uv's ``lowest-direct``
resolution), and in one with the newest (pip's ordinary resolution). Writes the versions that
each end installed and the test outcome:

    python benchmarks/install_ends.py --out benchmarks/results/install-ends.json [--ends low high]

Each end takes a few GB (PyPI's Linux torch wheels are CUDA builds, which run on the CPU too)
and one run of the test suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["torch", "monai", "numpy", "scipy", "pillow", "pyyaml", "pydantic", "nibabel", "h5py", "matplotlib"]
PACKAGES += ["tensorboard", "tqdm", "submitit", "pynrrd", "onnx", "onnxscript", "onnxruntime", "itk-io", "itk-core"]
PACKAGES += ["mkdocs", "mkdocs-material", "mkdocstrings-python"]


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("$", " ".join(command), flush=True)
    return subprocess.run(command, text=True, capture_output=True, **kwargs)


def installed(python: Path) -> dict[str, str]:
    listing = run([str(python), "-m", "pip", "list", "--format", "json"])
    if listing.returncode != 0:  # a uv environment has no pip of its own
        uv = Path(sys.executable).with_name("uv")
        listing = run([str(uv if uv.exists() else "uv"), "pip", "list", "--python", str(python), "--format", "json"])
    versions = {p["name"].lower(): p["version"] for p in json.loads(listing.stdout)}
    return {name: versions.get(name, "-") for name in PACKAGES}


def environment(end: str, where: Path) -> Path:
    """A fresh environment with the package and its ``[dev]`` extra at one end of the ranges."""
    python = where / "bin" / "python"
    if end == "low":
        uv = [sys.executable, "-m", "uv"]
        if run([*uv, "--version"]).returncode != 0:
            raise SystemExit("the low end needs uv: pip install uv")
        step = run([*uv, "venv", "-q", "-p", sys.executable, str(where)])
        install = [*uv, "pip", "install", "--python", str(python), "--resolution", "lowest-direct", "-e", ".[dev]"]
    else:
        step = run([sys.executable, "-m", "venv", str(where)])
        install = [str(python), "-m", "pip", "install", "-q", "--upgrade", "-e", ".[dev]"]
    if step.returncode != 0:
        raise SystemExit(step.stderr)
    step = run(install, cwd=ROOT)
    if step.returncode != 0:
        raise SystemExit(f"{end} end: install failed\n{step.stderr[-3000:]}")
    return python


def commit() -> str:
    """The commit the suite ran at, ``-dirty`` when the working tree had changes."""
    described = run(["git", "describe", "--always", "--dirty"], cwd=ROOT)
    return described.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "install-ends.json")
    parser.add_argument("--ends", nargs="+", choices=["low", "high"], default=["low", "high"])
    parser.add_argument("--venvs", type=Path, default=Path("/tmp/superdiffusion-install-ends"))
    parser.add_argument("--reuse", action="store_true", help="test again in environments this script made before")
    args = parser.parse_args()
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for end in args.ends:
        where = args.venvs / end
        if where.exists() and not args.reuse:
            raise SystemExit(f"{where} exists: remove it, pass --reuse, or pass another --venvs")
        start = time.perf_counter()
        python = where / "bin" / "python" if args.reuse and where.exists() else environment(end, where)
        tests = run([str(python), "-m", "pytest", "-p", "no:cacheprovider"], cwd=ROOT)  # -q is in addopts
        summary = [line for line in tests.stdout.splitlines() if re.search(r"\d+ (passed|failed)", line)]
        failed = [line for line in tests.stdout.splitlines() if line.startswith("FAILED")]
        results[end] = {
            "versions": installed(python),
            "tests": summary[-1] if summary else tests.stdout[-500:],
            "failed": failed,
            "returncode": tests.returncode,
            "minutes": round((time.perf_counter() - start) / 60, 1),
            "python": platform.python_version(),
            "code": commit(),
            "machine": f"{platform.machine()}, {platform.system()}",
        }
        print(end, results[end]["tests"], flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
