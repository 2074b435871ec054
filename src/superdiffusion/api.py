"""Typed entry points: train, evaluate and predict. The command line is a thin layer on top."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from . import safefs
from .config import Config, from_dict
from .data import build_data, with_dataset_json
from .data.folder import IMAGE_EXTENSIONS
from .errors import ConfigError, DataError, RunFolderError, ScoringError
from .inference import predict_image_file, predict_volume_file
from .methods import Method, build_method
from .protocol import evaluate_method, uses_validation
from .runfolder import RunFolder, write_json, write_rows
from .training import Trainer, resolve_device


def default_run_dir(cfg: Config) -> Path:
    percent = f"{cfg.data.labeled_percent:g}"
    return Path("runs") / cfg.data.name / cfg.method.name / f"p{percent}-s{cfg.train.seed}"


def train(
    cfg: Config,
    run_dir: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    plan: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir``, then evaluate the selected checkpoint on test. ``plan``:
    the record of the data settings planned for it (:mod:`.plan`), kept in ``results.json``.

    Returns the results written to ``run_dir/results.json``.
    """
    folder = RunFolder(run_dir if run_dir else default_run_dir(cfg))
    cfg.data = with_dataset_json(cfg.data)  # an nnU-Net or MSD folder gives its classes and dimensionality
    rank, world = distributed_setup(cfg)
    if rank == 0:
        folder.lock()  # one writer at a time: a second sweep or a requeued job stops here
    try:
        recorded = None
        if resume and folder.started:
            folder.check_resume(folder.read_config(), cfg)  # before the data loads; prepare checks the checkpoint
            recorded = folder.read_splits()  # a resumed run keeps its splits, whatever the folder gained since
        data = build_data(cfg.data, cfg.train.seed, validation=uses_validation(cfg), recorded=recorded)
        trainer = Trainer(cfg, data, folder.path, rank, world)
        start = time.perf_counter()
        best = trainer.fit(resume=resume, force=force, plan=plan)
        if world > 1:
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
            if rank != 0:
                return {}
        best = dict(best, path=str(folder.checkpoint_path("best")))
        try:
            results = evaluate_method(trainer.method, data, cfg, best, trainer.device)
        except Exception as err:  # noqa: BLE001 - whatever fails in scoring, the training is kept
            reason = str(err).splitlines()[0][:200] if str(err) else ""
            raise ScoringError(
                f"{folder.path}: training finished, but scoring its test split failed ({type(err).__name__}: "
                f"{reason}); the trained checkpoints are kept in {folder.path / 'checkpoints'}: fix the cause, "
                f"then `superdiffusion train --out {folder.path} --resume` scores the run without training it again"
            ) from None
        results["health"] = trainer.health
        results["train_seconds"] = round(trainer.progress.elapsed, 2)
        results["updates"] = trainer.progress.updates()
        results.update(trainer.progress.phase_records)  # "pretrain": the pretrained teacher's zero-label scores
        plan = plan or folder.read_plan()  # a resumed run: the plan it was trained with
        if plan:
            results["plan"] = plan
        results["wall_seconds_this_process"] = round(time.perf_counter() - start, 2)
        folder.write_model(model_record(trainer.method, cfg, trainer.data.info(), trainer.progress.best))
        rows = results.pop("per_case", None)
        if rows:
            folder.write_rows(folder.per_case_path, rows)
        folder.write_results(results)
        folder.finish_checkpoints(cfg.train.keep_state)
        return results
    finally:
        folder.unlock()


def saved_config(run_dir: str | Path) -> Config:
    """The settings a run folder was trained with (its ``config.yaml``)."""
    return RunFolder(run_dir).read_config()


def distributed_setup(cfg: Config) -> tuple[int, int]:
    """Join the process group when started by ``torchrun`` (gloo on CPU, NCCL on GPU)."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    rank = int(os.environ["RANK"])
    cuda = cfg.train.device != "cpu" and torch.cuda.is_available()
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        cfg.train.device = f"cuda:{local}"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return rank, world


def model_record(method: Method, cfg: Config, data_info: dict[str, Any], best: dict[str, Any]) -> dict[str, Any]:
    """The contents of ``model.pt``: what prediction needs, without the training state."""
    teacher = method.teacher_net()
    return {
        "method": method.name,
        "config": cfg.to_dict(),
        "data": data_info,
        "best": dict(best),
        "segmenter": method.segmenter().state_dict(),
        "teacher": teacher.state_dict() if teacher is not None else None,
    }


def load_run(run_dir: str | Path, which: str = "best.pt") -> tuple[Config, Method, dict[str, Any]]:
    """Rebuild the method of a run folder: from ``model.pt`` once the run has finished, else
    from its checkpoint ``which`` (a run in progress). Networks that ``model.pt`` does not
    hold keep their initial weights; prediction does not use them."""
    folder = RunFolder(run_dir)
    if folder.model_path.exists():
        state = folder.load_model()
    elif folder.has_checkpoint(which):
        state = folder.load_checkpoint(which)
    else:
        raise RunFolderError(f"{run_dir}: no model.pt and no checkpoint {which} (has this run finished an epoch?)")
    cfg = from_dict(state["config"])
    d = state["data"]
    method = build_method(cfg, d["channels"], d["num_classes"], d["spatial_dims"])
    if "segmenter" in state:
        method.segmenter().load_state_dict(state["segmenter"])
        if state.get("teacher") is not None:
            method.teacher_net().load_state_dict(state["teacher"])
    else:
        method.load_state_dict(state["model"])
    return cfg, method, state


def evaluate(
    run_dir: str | Path,
    protocol: str | None = None,
    samples: int | None = None,
    device: str = "auto",
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Re-score a finished run's selected checkpoint on its test split (the data are split
    as the run was trained; see :func:`evaluate_method` for ``protocol``). ``device``:
    auto, cpu or cuda[:N], whatever device the run was trained on. The scores go to ``out``
    (a JSON file that must not exist yet) or, by default, to
    ``RUN/evaluation-PROTOCOL-kSAMPLES.json``; the returned dict names it in ``written_to``."""
    if out is not None and Path(out).exists():
        raise RunFolderError(f"{out} already exists; choose another --out")
    safefs.check_writable(Path(out).parent if out else run_dir)  # before the scoring, not after
    cfg, method, state = load_run(run_dir)
    if samples:
        cfg.eval.samples = samples
    data = build_data(cfg.data, cfg.train.seed, uses_validation(cfg), RunFolder(run_dir).read_splits())
    device = resolve_device(device)
    results = evaluate_method(method.to(device), data, cfg, dict(state["best"]), device, protocol)
    target = Path(out) if out else Path(run_dir) / f"evaluation-{results['protocol']}-k{cfg.eval.samples}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    rows = results.pop("per_case", None)
    per_case = target.with_name(target.name.removesuffix(".json") + "-per-case.csv")
    claim_in_run(run_dir, target, per_case if rows else None)
    if rows:
        write_rows(per_case, rows)
    write_json(target, results)
    return {**results, "written_to": str(target)}


def claim_in_run(run_dir: str | Path, *paths: Path | None) -> None:
    """Record the files written into a run folder as the package's (so that ``--force`` may
    remove them); files written elsewhere are the user's."""
    folder = RunFolder(run_dir)
    inside = [p for p in paths if p is not None and p.resolve().parent == folder.path.resolve()]
    if inside:
        folder.claim(*(folder.path / p.name for p in inside))


def _inputs(path: Path) -> list[Path]:
    from .data.volumes import is_volume

    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS or is_volume(p))
    if not files:
        raise DataError(f"{path}: no image or volume files")
    return files


def predict(
    run_dir: str | Path,
    inputs: str | Path,
    output: str | Path,
    samples: int = 1,
    force: bool = False,
    device: str = "auto",
    probabilities: bool = False,
) -> list[Path]:
    """Segment every image or volume of ``inputs`` (a file or a folder).

    2D: a PNG mask per image at the input's size (0/255 for binary tasks, class indices
    otherwise). 3D: a NIfTI label volume with the input's affine, by sliding windows.
    With ``samples`` > 1, an uncertainty map beside each (standard deviation of the
    foreground probability over draws; PNG scaled x 510, NIfTI as float).
    """
    cfg, method, state = load_run(run_dir)
    device = resolve_device(device)  # not the training device: a run trained on a GPU predicts anywhere
    method.to(device)
    threshold = float(state["best"].get("threshold", 0.5))
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    files = _inputs(Path(inputs))
    if method.spatial_dims == 3:
        from .data.volumes import group_channels

        files = group_channels(files, state["data"]["channels"])
    check_outputs(files, output, method.spatial_dims, samples, probabilities, force)
    written: list[Path] = []
    predict_file = predict_volume_file if method.spatial_dims == 3 else predict_image_file
    for path in files:
        written += predict_file(method, cfg, state["data"], path, output, samples, threshold, device, probabilities)
    return written


def check_outputs(files: list, output: Path, spatial_dims: int, samples: int, probabilities: bool, force: bool):
    """Before anything is written: refuse outputs that would overwrite an input (even with
    ``force``), that two inputs would both write (``case1.png`` and ``case1.jpg``), or that
    exist already (without ``force``)."""
    from .data.volumes import case_stem
    from .inference import output_names

    inputs = [Path(p) for group in files for p in (group if isinstance(group, list | tuple) else [group])]
    resolved_inputs = {p.resolve() for p in inputs}
    by_name: dict[str, list[str]] = {}  # lower-cased: clashes on case-insensitive file systems too
    names: list[str] = []
    for group in files:
        first = Path(group[0] if isinstance(group, list | tuple) else group)
        stem = case_stem(group) if spatial_dims == 3 else first.stem
        for name in output_names(stem, spatial_dims, samples, probabilities):
            by_name.setdefault(name.lower(), []).append(first.name)
            names.append(name)
    clashes = {name: sources for name, sources in by_name.items() if len(sources) > 1}
    if clashes:
        shown = "; ".join(f"{name} from {', '.join(src)}" for name, src in sorted(clashes.items())[:5])
        raise DataError(
            f"{len(clashes)} output names would be written by more than one input ({shown}): rename the inputs"
        )
    for name in names:
        target = output / name
        safefs.refuse_link(target)
        if target.resolve() in resolved_inputs:
            raise RunFolderError(
                f"{target} is one of the input files; predict never overwrites its inputs, even with --force: "
                "choose another output folder"
            )
        if os.path.lexists(target) and not force:
            raise RunFolderError(f"{target} already exists; choose another output folder or pass --force")


SUGGEST_SOURCES = ("entropy", "spread", "teacher_disagreement")


def suggest(
    run_dir: str | Path,
    count: int,
    by: str = "entropy",
    inputs: str | Path | None = None,
    out: str | Path | None = None,
    samples: int = 8,
    device: str = "auto",
) -> tuple[Path, Path | None]:
    """Rank images by how much a label would help: the mean over the image of an uncertainty
    source (``entropy`` of the foreground probability, any method; ``spread`` over
    ``samples`` noise draws; ``teacher_disagreement``, the paper's method). The pool is the
    run's unlabeled training images, or the 2D images of ``inputs``. Writes the ranking as a
    CSV (rank, id, score) and, for the run's own pool, ``labeled_next.txt``: the run's labeled
    ids plus the top ``count``, ready for ``data.labeled_ids``. Returns both paths."""
    from .data import normalize, normalize_each
    from .data.folder import read_image, resize_image
    from .evaluation import foreground_probability
    from .inference import predict_tensor
    from .protocol import teacher_probability
    from .uncertainty import binary_entropy

    if by not in SUGGEST_SOURCES:
        raise ConfigError(f"--by must be one of {', '.join(SUGGEST_SOURCES)}, got {by!r}")
    if count < 1:
        raise ConfigError(f"--count must be at least 1, got {count}")
    cfg, method, state = load_run(run_dir)
    if method.num_classes != 2 or method.spatial_dims != 2:
        raise ConfigError("suggest ranks 2D images of binary tasks")
    if cfg.data.size is None:
        raise ConfigError("suggest ranks images of runs trained at a fixed data.size, not on native-resolution patches")
    if by == "spread" and (not method.stochastic_inference or samples < 2):
        raise ConfigError("--by spread needs a diffusion method and --samples of at least 2")
    if by == "teacher_disagreement" and method.teacher_net() is None:
        raise ConfigError(f"--by teacher_disagreement needs a method with a teacher; {method.name} has none")
    out = Path(out) if out else Path(run_dir) / f"suggest-{by}-{count}.csv"
    following = out.with_name("labeled_next.txt") if inputs is None else None
    safefs.check_writable(out.parent)  # before the ranking, not after
    for path in (out, following):
        if path is not None and path.exists():
            raise RunFolderError(f"{path} already exists; choose another --out")
    device = resolve_device(device)
    method.to(device)
    if inputs is None:
        data = build_data(cfg.data, cfg.train.seed, uses_validation(cfg), RunFolder(run_dir).read_splits())
        pool, ids, labeled = data.unlabeled, list(data.unlabeled.ids), list(data.labeled.ids)
        if not ids:
            raise DataError(f"{run_dir}: the run has no unlabeled training images to rank")
        images = pool.images
    else:
        files = [p for p in _inputs(Path(inputs)) if p.suffix.lower() in IMAGE_EXTENSIONS]
        stats, size = state["data"]["stats"], tuple(cfg.data.size)
        raw = torch.stack([resize_image(read_image(p, state["data"]["channels"]), size) for p in files])
        images = normalize(normalize_each(raw, cfg.data.normalize), stats)
        ids, labeled = [p.stem for p in files], None
    draws = samples if by == "spread" else 1
    pred = predict_tensor(
        method, images, device, cfg.eval.batch_size, draws, seed=cfg.train.seed, step=cfg.eval.inference_t
    )
    fg = foreground_probability(pred.probs)
    if by == "entropy":
        maps = binary_entropy(fg)
    elif by == "spread":
        maps = pred.spread
    else:
        from .data import Split

        maps = (teacher_probability(method, method.teacher_net(), Split(images, None, ids), cfg, device) - fg).abs()
    scores = maps.flatten(1).double().mean(1).tolist()
    ranked = sorted(zip(ids, scores), key=lambda item: -item[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    claim_in_run(run_dir, out, following)
    write_rows(out, [{"rank": k + 1, "id": i, "score": s, "source": by} for k, (i, s) in enumerate(ranked)])
    if following is not None:
        chosen = [i for i, _ in ranked[:count]]
        safefs.write_text(following, "\n".join(labeled + chosen) + "\n")
    return out, following
