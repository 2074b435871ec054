"""Write the documentation that has another owner, so that it cannot drift:
docs/configuration.md's settings reference from the pydantic models and the shipped profiles;
the decisive comparison's figures in README.md and docs/results.md (between their
``<!-- decisive:NAME -->`` markers) from benchmarks/results/decisive.json; and docs/index.md
(the site's home page) from README.md, its links made relative to docs/. tests/test_docs.py
checks that every file is what this script writes.

    python scripts/generate_docs.py            # rewrite them
    python scripts/generate_docs.py --check    # exit 1 if one is out of date
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import json
import re
import sys
import textwrap
import tokenize
import typing
from functools import cache
from importlib import resources
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from superdiffusion.config import Config, load_yaml
from superdiffusion.method_settings import SETTINGS

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "docs" / "configuration.md"
INDEX = ROOT / "docs" / "index.md"
README = ROOT / "README.md"
RESULTS = ROOT / "docs" / "results.md"
DECISIVE = ROOT / "benchmarks" / "results" / "decisive.json"
DECISIVE_COMMAND = (
    "python benchmarks/decisive.py --root runs/decisive --out benchmarks/results/decisive.json --threads 1"
)
DATASET_NAMES = {"ph2-full": "PH2", "pupil": "InP-Pupil"}
METHOD_NAMES = {"superdiffusion": "the new default", "cps": "CPS", "uamt": "UAMT", "supervised": "supervised"}
INTRO = """# Configuration

Settings are `section.key=value` overrides on the command line (or a `--config` YAML file with
the same sections), on top of, in order: each class's defaults, a **profile** (`profile=cpu`,
the default; `quick`; `paper`), a **dataset** preset (`dataset=ph2`, ...), a **method**
(`method=cps`, or a YAML file of method settings), the **plan** of a `data.root` folder, the
`--config` file and the command line. Later layers win, key by key. `train` logs where lambda
came from (`lambda: max 0.1 (profile cpu), ...`), and in Python `cfg.origin("method.lambda_max")`
names the layer of any setting.

The reference below is generated from the settings classes by `python scripts/generate_docs.py`.
"""


def _type(annotation) -> str:
    text = str(annotation) if typing.get_origin(annotation) else getattr(annotation, "__name__", str(annotation))
    text = text.replace("typing.", "").replace("NoneType", "None")
    text = re.sub(r"Annotated\[(\w+), Gt\(gt=0\)\]", r"\1 > 0", text)
    text = re.sub(r"Annotated\[(\w+), Ge\(ge=0\)\]", r"\1 >= 0", text)
    text = re.sub(r"Annotated\[str, StringConstraints\([^)]*\)\]", "'#rrggbb'", text)  # the colours' pattern
    return text.replace("|", "\\|")  # a table cell


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "-"
    return f"`{json.dumps(value)}`"


@cache
def _comments(cls: type) -> dict[str, str]:
    """The comments that describe each field a class declares in its own body: the comment lines
    just above the field and those on its own lines (section rules ``# --- ... ---`` excepted).
    They are the settings' descriptions, kept beside the code they describe."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    notes: dict[int, str] = {}
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if not re.fullmatch(r"-+.*-+", text) and not text.startswith(("fmt:", "noqa", "type:")):
                notes[tok.start[0]] = text
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.add(tok.start[0])
    body = ast.parse(source).body[0].body
    out = {}
    for node in body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        above, line = [], node.lineno - 1
        while line in notes and line not in code_lines:
            above.insert(0, notes[line])
            line -= 1
        inline = [notes[k] for k in range(node.lineno, node.end_lineno + 1) if k in notes]
        text = " ".join(above + inline)
        if text:
            out[node.target.id] = text
    return out


def _description(model: type[BaseModel], name: str) -> str:
    for cls in model.__mro__:  # a subclass that only changes a default keeps its base's description
        if name in _comments(cls):
            return _comments(cls)[name].replace("|", "\\|")
    return ""


def _table(model: type[BaseModel], prefix: str, skip: tuple[str, ...] = ()) -> list[str]:
    rows = ["| setting | type | default | what it does |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if name not in skip:
            text = _description(model, name)
            rows.append(f"| `{prefix}.{name}` | `{_type(field.annotation)}` | {_default(field)} | {text} |")
    return rows


def _flat(values: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out += _flat(value, name) if isinstance(value, dict) else [(name, value)]
    return out


def reference() -> str:
    out = [INTRO]
    for section, field in Config.model_fields.items():
        if section == "method":
            continue
        out += [f"## {section}", "", *_table(field.annotation, section), ""]
    out += [
        "## method",
        "",
        "`method.name` picks the method; each has its own settings (`superdiffusion methods` lists them).",
        "",
    ]
    for name, cls in SETTINGS.items():
        out += [f"### method={name}", "", *_table(cls, "method", skip=("name",)), ""]
    out += ["## What each profile and dataset preset sets", "",
            "The defaults above are the classes'; a profile or preset sets these on top (`methods.NAME`: for that method only; `extends: P`: on top of profile P).", ""]  # fmt: skip
    for kind in ("profiles", "datasets"):
        for path in sorted((Path(resources.files("superdiffusion")) / "configs" / kind).glob("*.yaml")):
            rows = [f"| `{k}` | `{json.dumps(v)}` |" for k, v in _flat(load_yaml(path))]
            out += [f"### {kind[:-1]}={path.stem}", "", "| setting | value |", "|---|---|", *rows, ""]
    return "\n".join(out).rstrip() + "\n"


def _points(values: list[float]) -> str:
    """Dice points with their sign, the minus sign typeset: ``+1.97, −5.52``."""
    return ", ".join(f"{v:+.2f}".replace("-", "\u2212") for v in values)


def _seeds(seeds: list[int]) -> str:
    """``seeds 0-4`` for consecutive seeds, ``seeds 0, 2, 5`` otherwise, ``seed 3`` for one."""
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    consecutive = len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1))
    return "seeds " + (f"{seeds[0]}-{seeds[-1]}" if consecutive else ", ".join(map(str, seeds)))


def _paired_cell(row: dict | None) -> str:
    if row is None:
        return "not yet"
    mean, half = row["honest_dice"]
    if len(row["per_seed_honest"]) == 1:  # one seed: no mean, no interval
        return _points(row["per_seed_honest"])
    return f"{_points(row['per_seed_honest'])} (mean {_points([mean])} ± {half:.2f})"


def _compared(grid: dict) -> list[tuple[str, str, list[int], dict]]:
    """(dataset, method, seeds, {reference: paired row}) at 5 % labels, for the new default and
    the variants the grid adds beside it (the evidence grid's previous default left out)."""
    out: dict[tuple[str, str], dict] = {}
    for row in grid["paired"]:
        if row["labeled_percent"] == 5 and "previous-default" not in row["method"]:
            out.setdefault((row["dataset"], row["method"]), {})[row["reference"]] = row
    order = sorted(out, key=lambda k: (list(DATASET_NAMES).index(k[0]) if k[0] in DATASET_NAMES else 9, k))
    return [(d, m, max((r["seeds"] for r in out[d, m].values()), key=len), out[d, m]) for d, m in order]


def _method_label(method: str) -> str:
    """``superdiffusion (paper-literal)`` -> ``the method, paper-literal``; the default is the new default."""
    name, _, variant = method.partition(" (")
    return f"the method, {variant.rstrip(')')}" if variant else METHOD_NAMES.get(name, name)


def _paired_rows(grid: dict) -> list[str]:
    """One table row per dataset and method: its paired honest differences to CPS, supervised, UAMT."""
    rows = []
    for dataset, method, seeds, paired in _compared(grid):
        cells = " | ".join(_paired_cell(paired.get(ref)) for ref in ("cps", "supervised", "uamt"))
        name = f"{DATASET_NAMES.get(dataset, dataset)} 5 %, {_method_label(method)} ({_seeds(seeds)})"
        rows.append(f"| {name} | {cells} |")
    return rows


def decisive_status(grid: dict) -> str:
    """The README's lines on the decisive comparison: how far it is, and its paired table."""
    done, planned = sum(not r.get("reused") for r in grid["runs"]), grid["planned_runs"] - 1
    state = "has finished" if done == planned else f"is running; {done} of its {planned} runs have finished"
    lines = [
        f"- The decisive grid (5 % labels, 6 seeds, with the paper-literal row, the ablations and 20 % labels) {state}",
        f"  (`{DECISIVE_COMMAND}`).",
        "  Paired honest test Dice, each row's method minus each reference, per seed:",
        "",
        "  | dataset, method | minus CPS | minus supervised | minus UAMT |",
        "  |---|---|---|---|",
        *("  " + row for row in _paired_rows(grid)),
    ]
    wins = []
    for dataset, method, _, rows in _compared(grid):
        if method == "superdiffusion":
            counts = [
                f"{METHOD_NAMES[ref]} in {sum(v > 0 for v in rows[ref]['per_seed_honest'])} of {len(rows[ref]['seeds'])}"
                for ref in ("cps", "supervised") if ref in rows
            ]  # fmt: skip
            wins.append(f"on {DATASET_NAMES.get(dataset, dataset)} it beats " + " and ".join(counts) + " seeds")
    lines += ["", f"  The new default: {'; '.join(wins)}."]
    return "\n".join(lines) + "\n"


def decisive_results(grid: dict) -> str:
    """docs/results.md's paragraph on the decisive comparison: which runs have finished, the
    paired table, the teacher's zero-label score and the grid's cost."""
    done = [r for r in grid["runs"] if not r.get("reused")]
    finished: dict[tuple[str, str], list[int]] = {}
    for r in sorted(done, key=lambda r: (r["dataset"] != "ph2-full", r["labeled_percent"], r["variant"], r["seed"])):
        name = r["method"] + (f" ({r['variant']})" if r["variant"] else "")
        name = f"{_method_label(name)} at {r['labeled_percent']:g} %"
        finished.setdefault((DATASET_NAMES.get(r["dataset"], r["dataset"]), name), []).append(r["seed"])
    which = "; ".join(f"{d}, {name}: {_seeds(seeds)}" for (d, name), seeds in finished.items())
    lines = [
        f"**{len(done)} of its {grid['planned_runs'] - 1} runs have finished** ({which}). Paired differences of",
        "honest test Dice per image, in points (mean ± 90 % interval over the seeds), each row's method",
        "minus each reference on the same split and labeled subset (`benchmarks/results/decisive.md` has",
        "every table, the paper-threshold scores included):",
        "",
        "| dataset, method | minus CPS (per seed) | minus supervised | minus UAMT (the evidence grid's seeds) |",
        "|---|---|---|---|",
        *_paired_rows(grid),
    ]
    teachers: dict[tuple[str, str], list[str]] = {}
    for t in sorted(grid["teacher_zero_label"], key=lambda t: (t["method"], t["dataset"], t["seed"])):
        if t["labeled_percent"] == 5:
            mark = "*" if t.get("swapped") else ""
            teachers.setdefault((t["method"], DATASET_NAMES.get(t["dataset"], t["dataset"])), []).append(
                f"{100 * t['dice']:.1f}{mark} / {t['auroc']:.3f}"
            )
    ablations = [
        r for r in grid["paired"] if r["method"] == "superdiffusion" and r["reference"].startswith("superdiffusion (")
    ]
    if ablations:
        lines += [
            "",
            "What pretraining and the rounds add: the new default minus each of its ablations on the same split",
            "and labeled subset, honest test Dice per seed: "
            + "; ".join(
                f"{DATASET_NAMES.get(r['dataset'], r['dataset'])} {r['labeled_percent']:g} %, minus "
                f"{_method_label(r['reference'])}: {_paired_cell(r)}"
                for r in ablations
            )  # fmt: skip
            + ".",
        ]
    updates = sorted({r["updates"] for r in done})
    pretrain = sorted({r["pretrain_updates"] for r in done if r.get("pretrain_updates")})
    lines += [
        "",
        "The teacher's zero-label Dice / AUROC after pretraining (labeled training images, before any",
        "label is used; * channels swapped), per seed: "
        + "; ".join(f"{_method_label(m)}, {d}: {', '.join(v)}" for (m, d), v in teachers.items())
        + ".",
        f"Every run trains {' or '.join(f'{u:,}' for u in updates)} updates"
        + (f" (the method adds {' or '.join(f'{p:,}' for p in pretrain)} pretraining updates)" if pretrain else "")
        + f"; the grid's own runs have taken {grid['summed_train_minutes_trained_here']:,.0f} train-minutes of one",
        "thread (`summed_train_minutes_trained_here`), beside other work.",
    ]
    return "\n".join(lines) + "\n"


def fill(text: str, name: str, block: str, path: Path) -> str:
    """``text`` with what stands between ``<!-- decisive:NAME -->`` and ``<!-- /decisive:NAME -->``
    replaced by ``block``."""
    begin, end = f"<!-- decisive:{name} (written by scripts/generate_docs.py) -->\n", f"<!-- /decisive:{name} -->"
    head, found, rest = text.partition(begin)
    if not found or end not in rest:
        raise SystemExit(f"{path}: the markers of decisive:{name} are missing")
    return head + begin + block + rest[rest.index(end) :]


def decisive_pages() -> dict[Path, str]:
    grid = json.loads(DECISIVE.read_text())
    return {
        README: fill(README.read_text(), "status", decisive_status(grid), README),
        RESULTS: fill(RESULTS.read_text(), "results", decisive_results(grid), RESULTS),
    }


def home_page(readme: str) -> str:
    """README.md as the site's home page: links into docs/ become relative to it, and links to
    files outside docs/ (which the site does not hold) become their paths."""
    text = readme.replace("](docs/", "](")
    return re.sub(r"\[([^\]]+)\]\(((?!https?:|#)[^)]*/[^)]+|[^)/]+\.(?:json|py|csv))\)", r"\1 (`\2`)", text)


def pages() -> dict[Path, str]:
    filled = decisive_pages()
    return {TARGET: reference(), **filled, INDEX: home_page(filled[README])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    stale = [path for path, text in pages().items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path} is out of date: run python scripts/generate_docs.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in pages().items():
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
