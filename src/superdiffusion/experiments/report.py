"""Collect finished runs into the paper's tables: mean and 90 % confidence interval
(Student t over seeds) of Dice and Jaccard per dataset, regime and method, best per column
in bold; written as Markdown, CSV and LaTeX. Plots for the ablations."""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from scipy import stats

from .. import safefs
from ..methods import METHODS
from ..runfolder import read_json_object

METHOD_ORDER = list(METHODS)  # the paper's order


def mean_ci(values: list[float], level: float = 0.90) -> tuple[float, float]:
    """Mean and half-width of the two-sided ``level`` Student-t interval (0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)


def collect(roots: list[Path]) -> list[dict[str, Any]]:
    """Every ``results.json`` under ``roots``, with its run folder's variant name."""
    rows = []
    for root in roots:
        for path in sorted(Path(root).rglob("results.json")):
            result = read_json_object(path)
            variant = path.parent.name.split("-", 2)[2] if path.parent.name.count("-") >= 2 else ""
            labels = result.get("labels", {})
            if labels.get("source") == "ids":  # a chosen subset, not a seed's draw of the percentage
                variant = " ".join(v for v in (variant, f"ids {labels['file']} ({labels['count']} images)") if v)
            result["variant"] = variant
            result["folder"] = str(path.parent)
            rows.append(result)
    return rows


def scoring(protocol: str, per: str) -> str:
    """``auto``: per-image scores for honest rows, pooled ones for rows selected on test
    (the authors report pooled metrics, so those rows compare with Table 1)."""
    if per != "auto":
        return per
    return "per_image" if protocol == "honest" else "pooled"


def aggregate(rows: list[dict[str, Any]], score: str = "resized", per: str = "auto") -> list[dict[str, Any]]:
    """One row per (dataset, regime, method, variant, protocol) with mean and CI in %;
    ``flagged`` counts the runs whose collapse check fired (see ``health`` in results.json)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        key = (r["dataset"], float(r["labeled_percent"]), r["method"], r.get("variant", ""), r["protocol"])
        groups[key].append(r)
    table = []
    for (dataset, percent, method, variant, protocol), runs in groups.items():
        entry = {
            "dataset": dataset,
            "labeled_percent": percent,
            "method": method,
            "variant": variant,
            "protocol": protocol,
            "seeds": sorted(r["seed"] for r in runs),
            "per": scoring(protocol, per),
            "flagged": sum(1 for r in runs if r.get("health", {}).get("flags")),
        }
        for metric in ("dice", "jaccard"):
            values = [100 * r["test"][score][f"{metric}_{entry['per']}"] for r in runs]
            entry[metric], entry[f"{metric}_ci90"] = mean_ci(values)
        seconds = [r.get("train_seconds") for r in runs]
        entry["train_minutes"] = sum(seconds) / len(seconds) / 60 if None not in seconds else None
        table.append(entry)
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    table.sort(
        key=lambda e: (
            e["dataset"],
            -e["labeled_percent"] if e["labeled_percent"] == 100 else e["labeled_percent"],
            order.get(e["method"], 99),
            e["variant"],
        )
    )
    return table


def _name(e: dict[str, Any]) -> str:
    return e["method"] + (f" ({e['variant']})" if e["variant"] else "")


def _marked(e: dict[str, Any]) -> str:
    """The row's name, with a collapse mark when any of its runs was flagged."""
    flagged = e.get("flagged", 0)
    return _name(e) + (f" (flagged: {flagged}/{len(e['seeds'])} runs)" if flagged else "")


def _best(table: list[dict[str, Any]]) -> set[tuple]:
    """(dataset, regime, metric, name) of the best mean in each column of each regime, kept
    only when its 90 % interval clears the runner-up's (a one-seed row has no interval, so it
    never separates); otherwise that column has no bold cell."""
    best = set()
    for metric in ("dice", "jaccard"):
        groups: dict[tuple, list] = defaultdict(list)
        for e in table:
            groups[(e["dataset"], e["labeled_percent"])].append(e)
        for (dataset, percent), entries in groups.items():
            ranked = sorted(entries, key=lambda e: e[metric], reverse=True)
            top = ranked[0]
            if len(ranked) > 1:
                second = ranked[1]
                if len(top["seeds"]) < 2 or len(second["seeds"]) < 2:
                    continue
                if top[metric] - top[f"{metric}_ci90"] <= second[metric] + second[f"{metric}_ci90"]:
                    continue
            best.add((dataset, percent, metric, _name(top)))
    return best


def caption(table: list[dict[str, Any]], score: str, per: str, pm: str = "+-") -> str:
    protocols = sorted({e["protocol"] for e in table})
    text = {
        "honest": "threshold and checkpoint chosen on a validation split carved from the training images",
        "paper": "threshold and checkpoint chosen on the test set (the paper's protocol, optimistic)",
    }
    text["paper-threshold"] = "checkpoint chosen on validation, threshold tuned on test"
    seeds = sorted({len(e["seeds"]) for e in table})
    pers = sorted({e.get("per", per) for e in table})
    return (
        f"Test Dice (DC) and Jaccard (JI) in %, mean {pm} 90 % Student-t interval over {'/'.join(map(str, seeds))} "
        f"seed(s); {' and '.join(p.replace('_', ' ') for p in pers)} scores at the {score} resolution"
        + (" (per image for honest rows, pooled for test-selected rows)" if len(pers) > 1 else "")
        + "; protocol: "
        + "; ".join(f"{p} ({text.get(p, p)})" for p in protocols)
        + ". Best per regime and column in bold only where its interval clears the runner-up's; "
        "where intervals overlap (or a row has one seed) no value is bold. One-seed rows give the mean alone."
    )


def _cells(e: dict[str, Any], best: set[tuple], pm: str, bold: str) -> list[str]:
    """The DC and JI cells of one row: ``mean pm ci``, wrapped in ``bold`` when best."""
    cells = []
    for metric in ("dice", "jaccard"):
        cell = f"{e[metric]:.2f} {pm} {e[metric + '_ci90']:.2f}" if len(e["seeds"]) > 1 else f"{e[metric]:.2f}"
        cells.append(bold.format(cell) if (e["dataset"], e["labeled_percent"], metric, _name(e)) in best else cell)
    return cells


def _minutes(e: dict[str, Any]) -> str:
    return "-" if e.get("train_minutes") is None else f"{e['train_minutes']:.1f}"


def markdown(table: list[dict[str, Any]], score: str = "resized", per: str = "auto") -> str:
    best = _best(table)
    out = io.StringIO()
    out.write(
        f"{caption(table, score, per, '±')}\n\n| dataset | labels | method | DC (%) | JI (%) | seeds | train (min/run) |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    for e in table:
        cells = _cells(e, best, "±", "**{}**")
        out.write(
            f"| {e['dataset']} | {e['labeled_percent']:g} % | {_marked(e)} | {cells[0]} | {cells[1]} | {len(e['seeds'])} "
            f"| {_minutes(e)} |\n"
        )
    return out.getvalue()


def latex(table: list[dict[str, Any]], score: str = "resized", per: str = "auto") -> str:
    best = _best(table)
    lines = [
        "\\begin{table}",
        "\\centering",
        "\\caption{" + _tex(caption(table, score, per, "$\\pm$")) + "}",
        "\\begin{tabular}{lllcc}",
        "\\hline",
        "Dataset & Labeled & Method & DC (\\%) & JI (\\%) \\\\",
        "\\hline",
    ]
    for e in table:
        cells = _cells(e, best, "$\\pm$", "\\textbf{{{}}}")
        name, dataset = _tex(_name(e)), _tex(e["dataset"])
        lines.append(f"{dataset} & {e['labeled_percent']:g}\\% & {name} & {cells[0]} & {cells[1]} \\\\")
    lines += ["\\hline", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    """Escape LaTeX's special characters in running text (math already in $...$ is kept)."""
    parts = text.split("$")
    for i in range(0, len(parts), 2):  # outside math
        for char in ("%", "&", "#", "_", "{", "}"):  # no backslashes occur in the text
            parts[i] = parts[i].replace(char, "\\" + char)
    return "$".join(parts)


def write_csv(table: list[dict[str, Any]], path: Path) -> None:
    fields = [
        "dataset",
        "labeled_percent",
        "method",
        "variant",
        "protocol",
        "dice",
        "dice_ci90",
        "jaccard",
        "jaccard_ci90",
        "seed_ids",
        "n_seeds",
        "per",
        "flagged",
        "train_minutes",
    ]
    with safefs.atomic(path, text=True, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for e in table:
            row = {k: v for k, v in e.items() if k != "seeds"}
            writer.writerow({**row, "seed_ids": " ".join(map(str, e["seeds"])), "n_seeds": len(e["seeds"])})


def uncertainty_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, regime, method, variant, uncertainty source): the mean over seeds
    of the error AUROC, of Spearman's correlation with the image's Dice and of the calibration
    error (ECE) of the foreground probability, from each run's ``uncertainty`` record."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        u = r.get("uncertainty") or {}
        for source, values in (u.get("sources") or {}).items():
            key = (r["dataset"], float(r["labeled_percent"]), r["method"], r.get("variant", ""), source)
            groups[key].append({**values, "ece": u.get("ece"), "seed": r["seed"]})
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    table = []
    for (dataset, percent, method, variant, source), found in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], order.get(kv[0][2], 99), kv[0][3], kv[0][4])
    ):
        entry = {"dataset": dataset, "labeled_percent": percent, "method": method, "variant": variant}
        entry.update(source=source, n_seeds=len(found))
        for metric in ("error_auroc", "dice_spearman", "ece"):
            values = [f[metric] for f in found if f.get(metric) is not None and f[metric] == f[metric]]
            entry[metric] = sum(values) / len(values) if values else None
        table.append(entry)
    return table


def uncertainty_markdown(table: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    out.write(
        "Uncertainty against errors, mean over seeds: error AUROC (wrong vs right pixels; 0.5 is chance), "
        "Spearman's correlation of an image's mean uncertainty with its Dice (negative is useful), ECE of the "
        "foreground probability (15 bins).\n\n| dataset | labels | method | source | error AUROC | Spearman vs Dice "
        "| ECE | seeds |\n|---|---|---|---|---|---|---|---|\n"
    )
    number = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for e in table:
        out.write(
            f"| {e['dataset']} | {e['labeled_percent']:g} % | {_name(e)} | {e['source']} | {number(e['error_auroc'])} "
            f"| {number(e['dice_spearman'])} | {number(e['ece'])} | {e['n_seeds']} |\n"
        )
    return out.getvalue()


def plot_ablation(table: list[dict[str, Any]], path: Path, metric: str = "dice") -> None:
    """Error-bar plot of every variant of the paper's method against the label regime
    (pretraining on/off, Fig. 4) or against R when the variants are rounds (Fig. 5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [e for e in table if e["method"] == "superdiffusion"]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    rounds = [e for e in entries if e["variant"].startswith("rounds")]
    if rounds:
        for percent in sorted({e["labeled_percent"] for e in rounds}):
            pts = sorted(
                (int(e["variant"][6:].split("-")[0]), e[metric], e[f"{metric}_ci90"])
                for e in rounds
                if e["labeled_percent"] == percent
            )
            ax.errorbar(
                [p[0] for p in pts],
                [p[1] for p in pts],
                yerr=[p[2] for p in pts],
                marker="o",
                capsize=3,
                label=f"{percent:g} % labels",
            )
        ax.set_xlabel("rounds of diffusion R")
    else:
        for variant in sorted({e["variant"] for e in entries}):
            pts = sorted(
                (e["labeled_percent"], e[metric], e[f"{metric}_ci90"]) for e in entries if e["variant"] == variant
            )
            label = {"pretrain_epochs0": "no teacher pretraining", "pretrain_epochs-1": "teacher pretraining"}.get(
                variant, variant or "default"
            )
            ax.errorbar(
                [p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3, label=label
            )
        ax.set_xlabel("labeled images (%)")
    ax.set_ylabel(f"test {'Dice' if metric == 'dice' else 'Jaccard'} (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with safefs.atomic(path) as handle:
        fig.savefig(handle, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)


def write_report(
    roots: list[Path], out: Path, score: str = "resized", per: str = "auto", plot: bool = False
) -> dict[str, Path]:
    rows = collect(roots)
    if not rows:
        from ..errors import RunFolderError

        raise RunFolderError(f"no finished runs (results.json) under {', '.join(map(str, roots))}")
    table = aggregate(rows, score, per)
    uncertainty = uncertainty_table(rows)
    names = ["table.md", "table.csv", "table.tex"] + ["uncertainty.md"] * bool(uncertainty) + ["ablation.png"] * plot
    safefs.refuse_link(out)
    # a report folder is the package's to refresh: its own earlier tables are replaced, a user's file never
    safefs.check_replaceable(out, names, hint=" (--out)")
    out.mkdir(parents=True, exist_ok=True)
    safefs.record_written(out, names)
    files = {"md": out / "table.md", "csv": out / "table.csv", "tex": out / "table.tex"}
    safefs.write_text(files["md"], markdown(table, score, per))
    write_csv(table, files["csv"])
    safefs.write_text(files["tex"], latex(table, score, per))
    if uncertainty:
        files["uncertainty"] = out / "uncertainty.md"
        safefs.write_text(files["uncertainty"], uncertainty_markdown(uncertainty))
    if plot:
        files["png"] = out / "ablation.png"
        plot_ablation(table, files["png"])
    return files
