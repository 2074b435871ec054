"""Write the documentation pages that have another owner, so that they cannot drift:
docs/configuration.md's settings reference from the pydantic models and the shipped profiles,
and docs/index.md (the site's home page) from README.md, its links made relative to docs/.
tests/test_docs.py checks that both files are what this script writes.

    python scripts/generate_docs.py            # rewrite both
    python scripts/generate_docs.py --check    # exit 1 if either is out of date
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


def home_page() -> str:
    """README.md as the site's home page: links into docs/ become relative to it, and links to
    files outside docs/ (which the site does not hold) become their paths."""
    text = (ROOT / "README.md").read_text().replace("](docs/", "](")
    return re.sub(r"\[([^\]]+)\]\(((?!https?:|#)[^)]*/[^)]+|[^)/]+\.(?:json|py|csv))\)", r"\1 (`\2`)", text)


def pages() -> dict[Path, str]:
    return {TARGET: reference(), INDEX: home_page()}


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
