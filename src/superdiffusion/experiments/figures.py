"""The qualitative figure (Fig. 3): per chosen test image, a row of sample, teacher
pseudo-label, student prediction, target and (with K > 1 draws) the uncertainty map. Each
row is labelled with the student's Dice on that image; each column title gives the
threshold it was drawn with; every uncertainty panel shares one scale and a colour bar."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .. import safefs
from ..errors import DataError, RunFolderError


def qualitative_figure(
    run_dir: str | Path,
    out: str | Path,
    ids: list[str] | None = None,
    count: int = 4,
    samples: int = 8,
    device: str = "auto",
    force: bool = False,
) -> Path:
    """A figure of test cases (sample, teacher, student, target, uncertainty) written to ``out``;
    an existing ``out`` is replaced only with ``force`` (the one file the user named)."""
    if os.path.lexists(out) and not force:
        raise RunFolderError(f"{out} already exists; choose another --out, or pass --force to replace it")
    safefs.refuse_link(Path(out))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..evaluation import foreground_probability, per_case_scores
    from ..inference import Segmenter
    from ..protocol import run_data

    model = Segmenter.from_run(run_dir, device)
    model.require_fixed_size("the qualitative figure")
    method, threshold = model.method, model.threshold
    data = run_data(run_dir, model.cfg)
    test = data.test
    chosen = ids or test.ids[:count]
    missing = [i for i in chosen if i not in test.ids]
    if missing:
        raise DataError(f"image id {missing[0]!r} is not in the test split of {model.cfg.data.root}")
    index = [test.ids.index(i) for i in chosen]
    images = test.stack(index)
    with torch.inference_mode():
        student = model.probabilities(images, samples if method.stochastic_inference else 1)
        net = method.teacher_net()
        teacher = model.probabilities(images, 1, net=net) if net is not None else None
    columns = ["sample"] + (["teacher pseudo-label\n(argmax)"] if teacher is not None else [])
    columns += [f"student prediction\n(threshold {threshold:.2f})", "target"]
    columns += ["uncertainty\n(std over draws)"] if student.spread is not None else []
    spread_max = float(student.spread.max()) if student.spread is not None else 0.0
    spread_max = spread_max if spread_max > 0 else 1e-6  # one scale for every row
    fig, axes = plt.subplots(
        len(index), len(columns), figsize=(2 * len(columns), 2 * len(index)), dpi=100, squeeze=False
    )
    mean = torch.tensor(data.stats["mean"]).view(-1, 1, 1)
    std = torch.tensor(data.stats["std"]).view(-1, 1, 1)
    for row, k in enumerate(range(len(index))):
        img = (images[k] * std + mean).clamp(0, 1)
        panels = [img.permute(1, 2, 0).squeeze(-1).numpy()]
        if teacher is not None:
            panels.append((foreground_probability(teacher.probs[k : k + 1].cpu())[0] > 0.5).numpy())
        fg = foreground_probability(student.probs[k : k + 1].cpu())
        panels.append((fg[0] > threshold).numpy())
        panels.append(test.masks[index[k]].numpy() > 0)
        dice = per_case_scores(fg, test.masks[index[k]][None], threshold, [chosen[k]])[0]["dice"]
        if student.spread is not None:
            panels.append(student.spread[k].cpu().numpy())
        for col, panel in enumerate(panels):
            ax = axes[row, col]
            if columns[col].startswith("uncertainty"):
                shown = ax.imshow(panel, cmap="magma", vmin=0, vmax=spread_max)
                fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
            else:
                ax.imshow(panel, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[col], fontsize=8)
        shown = chosen[k].replace("$", r"\$")  # an id is text, never mathtext
        axes[row, 0].set_ylabel(f"{shown}\nDice {100 * dice:.1f}", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with safefs.atomic(out) as handle:
        fig.savefig(handle, format=out.suffix.lstrip(".") or "png")
    plt.close(fig)
    return out
