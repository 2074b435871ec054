"""``superdiffusion show RUN``: one page to look at a run, in any browser, without a server.

It shows the run's settings, the plan's reasons and any collapse flags, the training curves
(``progress.png``), the scores, and every test case worst first: the image, the prediction and
the target over it and, for diffusion methods, the per-pixel uncertainty (the spread of the
foreground probability over noise draws), each with its Dice and Jaccard (and HD95 for volumes,
drawn at their middle slice). A slider filters the cases by score; a click enlarges an image.
The ``suggest`` ranking is listed when the run folder has one.

The page is ``RUN/report.html``, its images beside it in ``RUN/report-files/`` (or both in a new
folder ``--out``); it needs no server and no network.
"""

from __future__ import annotations

import csv
import html
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .. import safefs
from ..errors import RunFolderError
from ..runfolder import RunFolder

PANEL = 256  # longest side of a drawn panel, in pixels (cases are scaled to it, nearest neighbour)
FILES = "report-files"  # the page's images, beside it
PRED = (230, 60, 60)  # prediction overlay colour
TRUE = (40, 200, 90)  # target overlay colour


def _grey(image: torch.Tensor) -> np.ndarray:
    """A normalised ``(C, H, W)`` image as ``(H, W, 3)`` uint8, its own range stretched to 0..255."""
    x = image.float()
    x = x[:3] if x.shape[0] >= 3 else x[:1].expand(3, *x.shape[1:])
    lo, hi = float(x.min()), float(x.max())
    x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    return (x.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def _overlay(base: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    out = base.astype(np.float32).copy()
    out[mask] = 0.45 * np.array(colour) + 0.55 * out[mask]
    return out.astype(np.uint8)


def _heat(values: np.ndarray, top: float) -> np.ndarray:
    """Uncertainty as black (none) -> orange -> white (``top``)."""
    v = np.clip(values / top, 0, 1) if top > 0 else np.zeros_like(values)
    return (np.stack([np.clip(2 * v, 0, 1), np.clip(2 * v - 0.5, 0, 1), np.clip(2 * v - 1, 0, 1)], -1) * 255).astype(
        np.uint8
    )


def _save(folder: Path, name: str, array: np.ndarray) -> str:
    img = Image.fromarray(array)
    scale = PANEL / max(img.size)
    if scale != 1:
        img = img.resize((max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))), Image.NEAREST)
    safefs.save_image(folder / name, img)
    return name


def _middle(x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """A volume's middle slice along its last axis; 2D arrays as they are."""
    return x[..., x.shape[-1] // 2] if spatial_dims == 3 else x


def _read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _crop(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Undo the zero padding of a stacked split: the first ``size`` of the trailing axes."""
    return x[(..., *(slice(0, s) for s in size))]


def write_page(run_dir: str | Path, out: str | Path | None = None, samples: int = 4, device: str = "auto") -> Path:
    """Write the page of the run in ``run_dir``; returns the path of its ``report.html``."""
    from ..evaluation import foreground_probability, per_case_scores
    from ..inference import Segmenter
    from ..protocol import run_data, split_probabilities

    run = RunFolder(run_dir)
    run.check_idle("show")
    home = Path(out) if out else run.path
    index, target = home / "report.html", home / FILES
    if out:
        safefs.refuse_link(home)
        safefs.require_empty(home, "page folder")
    else:  # inside the run folder: only files the package wrote there are replaced
        written = run.written()
        foreign = [index] if os.path.lexists(index) and (index.is_symlink() or "report.html" not in written) else []
        if os.path.lexists(target) and (target.is_symlink() or not target.is_dir()):
            foreign.append(target)
        elif target.is_dir():
            for p in sorted(target.iterdir()):
                if safefs.stale_temporary(p):  # left by a show that was killed: the package's own
                    p.unlink()
                elif p.is_symlink() or f"{FILES}/{p.name}" not in written:
                    foreign.append(p)
        if foreign:
            raise RunFolderError(
                f"{foreign[0]} was not written by superdiffusion, and show would replace it: move it, or give --out DIR"
            )
    safefs.check_writable(target)
    model = Segmenter.from_run(run_dir, device)
    cfg, method, device, threshold = model.cfg, model.method.eval(), model.device, model.threshold
    data = run_data(run_dir, cfg)
    test, dims = data.test, data.spatial_dims
    binary = data.num_classes == 2
    with torch.inference_mode():
        probs, masks = split_probabilities(method, test, cfg, device)
        spread = None
        if method.stochastic_inference and samples > 1:  # the uncertainty: K noise draws
            cfg.eval.samples, kept = samples, []
            split_probabilities(method, test, cfg, device, keep=kept)
            spread = kept[0] if kept else None
    fg = foreground_probability(probs) if binary else None
    predicted = fg > threshold if binary else probs.argmax(1)
    per_case = run.path / "test_per_case.csv"
    scores = {r["id"]: r for r in _read_rows(per_case)} if per_case.is_file() else {}
    if not scores and binary:  # a run scored before test_per_case.csv existed: score its cases here
        scores = {r["id"]: r for r in per_case_scores(fg, masks, threshold, list(test.ids))}
    target.mkdir(parents=True, exist_ok=True)
    cases = []
    top = float(spread.max()) if spread is not None and spread.numel() else 0.0
    for k, case_id in enumerate(test.ids):
        size = tuple(test.images[k].shape[1:])
        image = _middle(test.images[k], dims)
        truth = _middle(_crop(masks[k], size), dims).numpy() > 0
        pred = _middle(_crop(predicted[k], size), dims).numpy() > 0
        base = _grey(image)
        row = scores.get(case_id, {})
        panels = {
            "image": _save(target, f"{k:04d}-image.png", base),
            "prediction": _save(target, f"{k:04d}-prediction.png", _overlay(base, pred, PRED)),
            "target": _save(target, f"{k:04d}-target.png", _overlay(base, truth, TRUE)),
        }
        if spread is not None:
            values = _middle(_crop(spread[k], size), dims).numpy()
            panels["uncertainty"] = _save(target, f"{k:04d}-uncertainty.png", _heat(values, top))
        cases.append(
            {
                "id": case_id,
                "dice": float(row["dice"]) if row.get("dice") not in (None, "") else None,
                "jaccard": float(row["jaccard"]) if row.get("jaccard") not in (None, "") else None,
                "hd95": float(row["hd95"]) if row.get("hd95") not in (None, "") else None,
                "classes": {k[5:]: float(v) for k, v in row.items() if k.startswith("dice_") and v not in (None, "")},
                "panels": panels,
            }
        )
    cases.sort(key=lambda c: (c["dice"] is None, c["dice"] if c["dice"] is not None else 0.0))
    curves = run.path / "progress.png"
    if curves.is_file():
        safefs.write_bytes(target / "progress.png", curves.read_bytes())
    results = run.read_results() if run.results_path.is_file() else {}
    suggestions = sorted(run.path.glob("suggest-*.csv"))
    page = _html(cfg, results, run.read_plan(), cases, threshold if binary else None, spread is not None, curves.is_file(),
                 [(p.name, _read_rows(p)) for p in suggestions], dims, samples)  # fmt: skip
    if not out:  # inside the run folder: the files are the project's (--force removes them)
        run.claim(*(p for p in target.iterdir() if p.suffix == ".png"), index)
    safefs.write_text(index, page)
    return index


def _fmt(value: Any, scale: float = 100) -> str:
    return "-" if value is None else f"{scale * value:.2f}"


def _settings(cfg) -> list[tuple[str, str]]:
    d, t, m = cfg.data, cfg.train, cfg.method
    return [
        ("method", m.name),
        ("data", f"{d.name} ({d.root})"),
        ("labels", f"{d.labeled_percent:g} %" + (f" (ids from {d.labeled_ids})" if d.labeled_ids else "")),
        ("seed", str(t.seed)),
        ("resolution", f"resized to {d.size}" if d.size else f"native, patches {d.patch_size}"),
        ("normalisation", d.normalize),
        ("length", f"{t.epochs} epochs x {t.steps_per_epoch or 'all'} updates, batch {t.batch_size}, lr {t.lr}"),
        ("protocol", cfg.eval.protocol),
    ]


def _html(cfg, results, plan, cases, threshold, uncertain, curves, suggestions, dims, samples) -> str:
    e = html.escape
    flags = results.get("health", {}).get("flags", [])
    test = results.get("test", {})
    score_rows = "".join(
        f"<tr><td>{e(results.get('scored_at', where) if where == 'resized' else where)}</td><td>{_fmt(v.get('dice_per_image'))}</td><td>{_fmt(v.get('jaccard_per_image'))}</td>"
        f"<td>{_fmt(v.get('dice_pooled'))}</td><td>{_fmt(v.get('jaccard_pooled'))}</td></tr>"
        for where, v in test.items()
        if isinstance(v, dict) and "dice_per_image" in v
    )
    plan_rows = "".join(
        f"<tr><td>{e(k)}</td><td>{e(json.dumps(plan['settings'][k]))}</td><td>{e(plan['reasons'][k])}"
        f"{'' if k in plan.get('applied', []) else ' (the user set it)'}</td></tr>"
        for k in (plan or {}).get("settings", {})
    )
    columns = ["image", "prediction", "target"] + (["uncertainty"] if uncertain else [])
    cards = []
    for c in cases:
        metric = f"Dice {_fmt(c['dice'])} · Jaccard {_fmt(c['jaccard'])}"
        if c["classes"]:  # a multi-class task: its mean over the foreground classes, then each class
            metric = f"mean foreground {metric}"
            metric += "".join(f" · {name} {_fmt(d)}" for name, d in c["classes"].items())
        if c["hd95"] is not None:
            metric += f" · HD95 {c['hd95']:.2f}"
        figures = "".join(
            f'<figure><img src="{FILES}/{e(c["panels"][col])}" alt="{e(c["id"])} {col}" loading="eager">'
            f"<figcaption>{col}</figcaption></figure>"
            for col in columns
            if col in c["panels"]
        )
        score = c["dice"] if c["dice"] is not None else -1
        cards.append(
            f'<section class="case" data-dice="{score:.6f}" data-id="{e(c["id"])}"><h3>{e(c["id"])}'
            f' <span class="metric">{metric}</span></h3><div class="panels">{figures}</div></section>'
        )
    suggest = "".join(
        f"<h3>{e(name)}</h3><ol>" + "".join(f"<li>{e(r.get('id', ''))} ({e(r.get('score', ''))})</li>" for r in rows[:20])
        + "</ol>"
        for name, rows in suggestions
    )  # fmt: skip
    settings = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _settings(cfg))
    flag_text = (
        f'<p class="flag">Collapse check fired: {e(", ".join(flags))} (docs/evaluation.md, "When a run collapses")</p>'
        if flags
        else '<p class="ok">No collapse flag.</p>'
    )
    how = "prediction" + (f" at threshold {threshold:.2f}" if threshold is not None else " (each pixel's likeliest class)")
    how += " (red), target (green)"
    how += f", uncertainty: spread over {samples} noise draws" if uncertain else ""
    how += "; volumes at their middle slice" if dims == 3 else ""
    return PAGE.format(
        title=e(f"{cfg.method.name} on {cfg.data.name}"),
        settings=settings,
        flags=flag_text,
        plan=f"<h2>Plan</h2><table><tr><th>setting</th><th>value</th><th>reason</th></tr>{plan_rows}</table>"
        if plan_rows
        else "",
        curves=f'<h2>Training</h2><img class="curves" src="{FILES}/progress.png" alt="training curves">'
        if curves
        else "",
        scores=score_rows,
        count=len(cases),
        how=e(how),
        cards="".join(cards),
        suggest=f"<h2>Which images to label next</h2>{suggest}" if suggest else "",
    )


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
.case {{ border: 1px solid #ddd; border-radius: 6px; margin: 0.6em 0; padding: 0.4em 0.8em; }}
.case h3 {{ margin: 0.2em 0; font-size: 1em; }} .metric {{ font-weight: normal; color: #555; margin-left: 1em; }}
.panels {{ display: flex; gap: 8px; flex-wrap: wrap; }} figure {{ margin: 0; text-align: center; font-size: 0.8em; }}
.panels img {{ width: 160px; cursor: zoom-in; image-rendering: pixelated; }} .curves {{ max-width: 100%; }}
.flag {{ color: #b00; font-weight: bold; }} .ok {{ color: #070; }} .hidden {{ display: none; }}
#zoom {{ position: fixed; inset: 0; background: rgba(0,0,0,0.85); display: none; align-items: center; justify-content: center; }}
#zoom img {{ max-width: 95vw; max-height: 95vh; image-rendering: pixelated; }}
</style></head><body>
<h1>{title}</h1>
<table>{settings}</table>
{flags}
{plan}
{curves}
<h2>Scores (%)</h2>
<table><tr><th>scored at</th><th>Dice per image</th><th>Jaccard per image</th><th>Dice pooled</th><th>Jaccard pooled</th></tr>{scores}</table>
<h2>Test cases, worst first</h2>
<p>{how}. Show cases with Dice up to <input type="range" id="maxdice" min="0" max="100" value="100" step="1">
<output id="maxdice-value">100</output>: <span id="shown">{count}</span> of <span id="total">{count}</span> shown.</p>
<div id="cases">{cards}</div>
{suggest}
<div id="zoom"><img alt="enlarged"></div>
<script>
const slider = document.getElementById("maxdice"), cases = [...document.querySelectorAll(".case")];
function filter() {{
  const top = Number(slider.value) / 100; let shown = 0;
  for (const c of cases) {{ const keep = Number(c.dataset.dice) <= top + 1e-9; c.classList.toggle("hidden", !keep); shown += keep; }}
  document.getElementById("shown").textContent = shown; document.getElementById("maxdice-value").textContent = slider.value;
}}
slider.addEventListener("input", filter);
const zoom = document.getElementById("zoom");
document.querySelectorAll(".panels img").forEach(img => img.addEventListener("click", () => {{
  zoom.querySelector("img").src = img.src; zoom.style.display = "flex"; }}));
zoom.addEventListener("click", () => {{ zoom.style.display = "none"; }});
window.addEventListener("load", () => {{
  const images = [...document.images].filter(i => i.closest(".panels"));
  document.body.dataset.imagesLoaded = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.imagesTotal = images.length;
}});
</script>
</body></html>
"""
