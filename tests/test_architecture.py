"""The structure docs/architecture.md promises: the layers and what may import what, one shape
for a split, one registration of a method, and one owner of a trained model."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "superdiffusion"

ARCHITECTURE = PACKAGE.parents[1] / "docs" / "architecture.md"


def _layers() -> dict[int, list[str]]:
    """docs/architecture.md's numbered list under "Layers": a module imports from its own layer
    or below (the page is the one owner of the rule; this reads it)."""
    text = ARCHITECTURE.read_text().split("## Layers", 1)[1].split("\n## ", 1)[0]
    items = re.findall(r"^(\d+)\. (.*?)(?=^\d+\. |^\s*$)", text, flags=re.M | re.S)
    return {int(n): [name.removesuffix(".py").rstrip("/") for name in re.findall(r"`([\w.]+/?)`", body.split(":")[0])]
            for n, body in items}  # fmt: skip


LAYERS = _layers()
LAYER = {name: level for level, names in LAYERS.items() for name in names}


def _room(module: str) -> str:
    """``superdiffusion.data.folder`` -> ``data``: the unit the layers speak of."""
    return module.split(".")[1] if module.count(".") else ""


def _imports(path: Path, root: Path = PACKAGE) -> set[str]:
    """Every project module ``path`` imports, at the top or inside a function."""
    module = "superdiffusion." + ".".join(path.relative_to(root).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            target = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n.startswith("superdiffusion.")}
    return found


def _modules(root: Path = PACKAGE) -> dict[str, set[str]]:
    return {
        "superdiffusion." + ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): _imports(
            p, root
        )
        for p in root.rglob("*.py")
    }


def _upward(modules: dict[str, set[str]]) -> list[str]:
    found = []
    for module, imports in modules.items():
        here = LAYER.get(_room(module))
        for target in imports:
            there = LAYER.get(_room(target))
            if here is not None and there is not None and there > here:
                found.append(f"{module} -> {target}")
    return found


def test_no_module_imports_from_a_layer_above_its_own():
    assert sorted(LAYERS) == list(range(1, len(LAYERS) + 1)) and all(LAYERS.values()) and len(LAYERS) >= 8
    modules = _modules()
    unknown = sorted({_room(m) for m in modules} - set(LAYER) - {"", "__init__"})
    assert not unknown, f"rooms missing from the layer table: {unknown}"
    assert not _upward(modules), _upward(modules)


def test_the_layer_check_finds_an_upward_import(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "folder.py").write_text("def read():\n    from ..api import train\n")
    (tmp_path / "api.py").write_text("from .data.folder import read\n")
    found = _upward(_modules(tmp_path))
    assert found and {line.split(" -> ")[0] for line in found} == {"superdiffusion.data.folder"}


def test_the_rooms_import_one_another_without_a_cycle():
    graph: dict[str, set[str]] = {}
    for module, imports in _modules().items():
        graph.setdefault(_room(module), set()).update(_room(t) for t in imports if _room(t) != _room(module))
    seen, stack = set(), []

    def visit(room: str) -> None:
        assert room not in stack, " -> ".join(stack[stack.index(room) :] + [room])
        if room in seen:
            return
        stack.append(room)
        for nxt in sorted(graph.get(room, ())):
            visit(nxt)
        stack.pop()
        seen.add(room)

    for room in sorted(graph):
        visit(room)


def test_export_reads_no_method_settings_and_no_api():
    imports = _imports(PACKAGE / "export.py")
    assert not any(t.startswith("superdiffusion.api") for t in imports)
    assert {t for t in imports if t.startswith("superdiffusion.inference")} <= {
        "superdiffusion.inference",
        "superdiffusion.inference.Segmenter",
    }
    source = (PACKAGE / "export.py").read_text()
    assert "params." not in source and "schedule" not in source and "derived_seed" not in source


def test_no_caller_asks_what_type_a_split_holds():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance" and node.args:
                target = ast.unparse(node.args[0])
                if target.endswith((".images", ".masks")) or target in ("images", "masks"):
                    offenders.append(f"{path.name}: isinstance({target}, ...)")
    assert not offenders, offenders


# --- one shape for a split ------------------------------------------------------------------------
def test_a_split_is_a_list_of_cases_with_its_size_as_data():
    from superdiffusion.data import Split

    stacked = Split(torch.arange(2 * 3 * 4 * 5.0).view(2, 3, 4, 5), torch.zeros(2, 4, 5, dtype=torch.long), ["a", "b"])
    assert isinstance(stacked.images, list) and len(stacked.images) == 2 and stacked.size == (4, 5)
    assert stacked.stack().shape == (2, 3, 4, 5) and stacked.stack([1])[0, 0, 0, 0] == 60
    assert stacked.stack_masks(slice(0, 1)).shape == (1, 4, 5)
    own = Split([torch.zeros(1, 4, 4), torch.zeros(1, 6, 5)], [torch.zeros(4, 4), torch.zeros(6, 5)], ["a", "b"])
    assert own.size is None  # cases at their own sizes: patches and sliding windows
    with pytest.raises(RuntimeError):
        own.stack()


def test_a_fixed_size_and_a_native_size_split_are_told_apart_by_size():
    from conftest import tiny_config

    from superdiffusion.data import build_data

    fixed = build_data(tiny_config("data.labeled_percent=10").data, 0)
    assert fixed.labeled.size == (32, 32) and fixed.test.stack().shape[1:] == (3, 32, 32)
    assert all(s.size == (32, 32) for s in (fixed.labeled, fixed.unlabeled, fixed.val, fixed.test))


# --- one registration of a method ----------------------------------------------------------------
def test_the_methods_are_one_list_in_the_paper_s_order():
    from superdiffusion.method_settings import SETTINGS, AnyMethodSettings
    from superdiffusion.methods import METHODS

    order = ["supervised", "em", "mt", "cct", "uamt", "urpc", "cps", "dtc", "superdiffusion"]
    assert list(SETTINGS) == list(METHODS) == order
    assert all(METHODS[name].Settings is SETTINGS[name] for name in order)
    union = AnyMethodSettings.__origin__.__args__
    assert set(union) == set(SETTINGS.values())


def test_register_refuses_a_second_method_of_a_name_and_a_method_without_its_settings():
    from superdiffusion.method_settings import CPSSettings, SupervisedSettings, register
    from superdiffusion.methods.base import Method
    from superdiffusion.methods.base import register as register_method

    with pytest.raises(TypeError, match="two settings classes"):
        register(type("Again", (CPSSettings,), {}))
    with pytest.raises(TypeError, match="names the settings"):
        register_method(type("Wrong", (Method,), {"name": "cps", "Settings": SupervisedSettings}))
    with pytest.raises(TypeError, match="two methods"):
        register_method(type("Twice", (Method,), {"name": "cps", "Settings": CPSSettings}))


# --- one owner of a trained model ----------------------------------------------------------------
def test_the_segmenter_preprocesses_a_file_exactly_as_training_read_it(tmp_path):
    from conftest import tiny_config

    from superdiffusion import api
    from superdiffusion.data import build_data, resolve_root
    from superdiffusion.inference import Segmenter

    for mode in ("minmax", "percentile"):
        cfg = tiny_config("method=supervised", f"data.normalize={mode}", "train.epochs=1", "train.steps_per_epoch=1")
        api.train(cfg, tmp_path / mode)
        model = Segmenter.from_run(tmp_path / mode, "cpu")
        test = build_data(cfg.data, 0).test
        for k in (0, len(test) - 1):
            x, size = model.read(resolve_root(cfg.data.root) / "images" / test.pairs[k].image.name)
            assert torch.equal(x, test.stack([k])), mode
            assert size == test.sizes[k]
        assert model.threshold == api.load_run(tmp_path / mode)[2]["best"]["threshold"]
