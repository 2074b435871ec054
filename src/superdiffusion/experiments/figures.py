"""The qualitative figure (Fig. 3): per chosen test image, a row of sample, teacher
pseudo-label, student prediction, target and (with K > 1 draws) the uncertainty map."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DataError


def qualitative_figure(
    run_dir: str | Path,
    out: str | Path,
    ids: list[str] | None = None,
    count: int = 4,
    samples: int = 8,
    device: str = "auto",
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..api import load_run
    from ..data import build_data
    from ..evaluation import foreground_probability
    from ..protocol import uses_validation
    from ..training import resolve_device

    cfg, method, state = load_run(run_dir)
    if method.spatial_dims != 2:
        raise DataError("the qualitative figure is drawn for 2D datasets")
    data = build_data(cfg.data, cfg.train.seed, validation=uses_validation(cfg))
    test = data.test
    chosen = ids or test.ids[:count]
    missing = [i for i in chosen if i not in test.ids]
    if missing:
        raise DataError(f"image id {missing[0]!r} is not in the test split of {cfg.data.root}")
    index = [test.ids.index(i) for i in chosen]
    images = test.images[index]
    device = resolve_device(device)
    method.to(device).eval()
    threshold = float(state["best"].get("threshold", 0.5))
    stochastic = method.stochastic_inference
    with torch.inference_mode():
        student = method.predict(images.to(device), samples if stochastic else 1)
        net = method.teacher_net()
        teacher = method.predict(images.to(device), 1, net=net) if net is not None else None
    columns = ["sample"] + (["teacher pseudo-label"] if teacher is not None else []) + ["student prediction", "target"]
    columns += ["uncertainty"] if student.spread is not None else []
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
        panels.append((foreground_probability(student.probs[k : k + 1].cpu())[0] > threshold).numpy())
        panels.append(test.masks[index[k]].numpy() > 0)
        if student.spread is not None:
            panels.append(student.spread[k].cpu().numpy())
        for col, panel in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(panel, cmap="gray" if panel.ndim == 2 and columns[col] != "uncertainty" else "magma")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[col], fontsize=8)
        axes[row, 0].set_ylabel(chosen[k], fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
