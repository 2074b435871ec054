"""Typed entry points: train, evaluate and predict. The command line is a thin layer on top."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from functools import cache
from pathlib import Path
from typing import Any

import torch

from . import safefs
from .config import Config
from .data import Split, build_data, with_dataset_json
from .data.folder import case_id, image_stem, is_image_file
from .errors import ConfigError, DataError, RunFolderError, ScoringError
from .inference import Segmenter, load_run
from .methods import Method
from .protocol import evaluate_method, intensity_prior_agreement, run_data, uses_validation
from .runfolder import RunFolder, write_json, write_rows
from .training import Trainer, leak_warning

LOG = logging.getLogger("superdiffusion")

__all__ = ["Segmenter", "evaluate", "load_run", "predict", "saved_config", "suggest", "train"]


@cache
def code_version() -> dict[str, Any]:
    """The code a run was trained with: the package version and, when the package is a git
    checkout, its commit, the hash of the package's own files at it (``tree``: equal for two
    commits that changed only docs or benchmarks) and whether they were modified since (a
    comparison holds only between runs of one code state)."""
    from . import __version__

    here = Path(__file__).resolve().parent
    record: dict[str, Any] = {"version": __version__, "commit": None, "tree": None, "modified": None}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            status = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no", "--", str(here)],
                cwd=here, capture_output=True, text=True, timeout=10,
            )  # fmt: skip
            # the package's own files at that commit: runs of commits that changed only docs share it
            tree = subprocess.run(["git", "rev-parse", "HEAD:./"], cwd=here, capture_output=True, text=True, timeout=10)
            record.update(commit=commit.stdout.strip(), modified=bool(status.stdout.strip()))
            record["tree"] = tree.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):  # no git: the version alone
        pass
    return record


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
    code_version()  # read now, as the code is loaded (cached: a sweep's later commits are not this run's)
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
        if trainer.leaks:  # held-out cases that are training images: said beside the scores
            results.setdefault("warnings", []).append(leak_warning(trainer.leaks))
        results["code"] = code_version()
        results["train_seconds"] = round(trainer.progress.elapsed, 2)
        results["updates"] = trainer.progress.updates()
        results.update(trainer.progress.phase_records)  # "pretrain": the pretrained teacher's zero-label scores
        if data.num_classes == 2:  # its control: Otsu's threshold on the same labeled images, learning nothing
            results["intensity_prior"] = results.get("prior") or intensity_prior_agreement(data.labeled)
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
    RunFolder(run_dir).check_idle("evaluate")
    model = Segmenter.from_run(run_dir, device)
    cfg = model.cfg
    if samples:
        cfg.eval.samples = samples

    def target_for(label: str) -> Path:
        return Path(out) if out else Path(run_dir) / f"evaluation-{label}-k{cfg.eval.samples}.json"

    check_evaluation_outputs(run_dir, target_for(protocol or cfg.eval.protocol))  # before the scoring
    results = evaluate_method(model.method, run_data(run_dir, cfg), cfg, model.best, model.device, protocol)
    target = target_for(results["protocol"])
    check_evaluation_outputs(run_dir, target)  # the label the scoring gave (paper-threshold, say)
    target.parent.mkdir(parents=True, exist_ok=True)
    rows = results.pop("per_case", None)
    per_case = per_case_file(target)
    claim_in_run(run_dir, target, per_case if rows else None)
    if rows:
        write_rows(per_case, rows)
    write_json(target, results)
    return {**results, "written_to": str(target)}


def per_case_file(target: Path) -> Path:
    return target.with_name(target.name.removesuffix(".json") + "-per-case.csv")


def check_evaluation_outputs(run_dir: str | Path, target: Path) -> None:
    """One line if ``evaluate`` would replace a file it did not write: in the run folder, one
    the run folder does not list as the package's; elsewhere (``--out``), any file."""
    folder = RunFolder(run_dir)
    ours = folder.written() if target.resolve().parent == folder.path.resolve() else set()
    for path in (target, per_case_file(target)):
        safefs.refuse_link(path)
        if os.path.lexists(path) and path.name not in ours:
            raise RunFolderError(
                f"{path} exists and was not written by superdiffusion; evaluate never replaces it: move it, or "
                "give --out a new file"
            )


def claim_in_run(run_dir: str | Path, *paths: Path | None) -> None:
    """Record the files written into a run folder as the package's (so that ``--force`` may
    remove them); files written elsewhere are the user's."""
    folder = RunFolder(run_dir)
    inside = [p for p in paths if p is not None and p.resolve().parent == folder.path.resolve()]
    if inside:
        folder.claim(*(folder.path / p.name for p in inside))


def predict(
    run_dir: str | Path,
    inputs: str | Path,
    output: str | Path,
    samples: int = 1,
    force: bool = False,
    device: str = "auto",
    probabilities: bool = False,
) -> list[Path]:
    """Segment every image or volume of ``inputs`` (a file or a folder) with the run's model
    (see :meth:`Segmenter.predict_file` for the files). ``device``: auto, cpu or cuda[:N],
    whatever device the run was trained on."""
    return Segmenter.from_run(run_dir, device).predict(inputs, output, samples, force, probabilities)


SUGGEST_SOURCES = ("entropy", "spread", "teacher_disagreement")


def _mask_place(cfg: Config) -> str:
    """Where a new mask of the run's data folder goes: its folder of masks, or beside its image."""
    from .data.dataset import resolve_root
    from .data.folder import dataset_folders

    try:
        folder = dataset_folders(resolve_root(cfg.data.root), cfg.data.masks)[1]
    except (DataError, OSError):
        folder = None
    return str(folder) if folder is not None else "the folder, beside each image (NAME_mask.png)"


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
    from .evaluation import foreground_probability
    from .protocol import teacher_probability
    from .uncertainty import binary_entropy

    if by not in SUGGEST_SOURCES:
        raise ConfigError(f"--by must be one of {', '.join(SUGGEST_SOURCES)}, got {by!r}")
    if count < 1:
        raise ConfigError(f"--count must be at least 1, got {count}")
    RunFolder(run_dir).check_idle("suggest")
    model = Segmenter.from_run(run_dir, device)
    method, cfg = model.method, model.cfg
    if method.num_classes != 2:
        raise ConfigError("suggest ranks the images of binary tasks")
    if inputs is not None and (method.spatial_dims != 2 or model.size is None):
        raise ConfigError("suggest ranks a folder of new images for 2D runs at a fixed size; rank the run's own pool")
    if by == "teacher_disagreement" and model.size is None:
        raise ConfigError("--by teacher_disagreement ranks images of one size (data.size); use entropy or spread")
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
    if inputs is None:
        data = run_data(run_dir, cfg)
        pool, labeled = data.unlabeled, list(data.labeled.ids)
        if not pool.ids:
            raise DataError(f"{run_dir}: the run has no unlabeled training images to rank")
    else:
        root = Path(inputs)
        files = [p for p in model.inputs(root) if is_image_file(p)]
        ids = [case_id(p, root) if root.is_dir() else image_stem(p) for p in files]  # p7/s012 in subfolders
        pool = Split([model.read(p)[0][0] for p in files], None, ids, size=model.size)
        labeled = None
    ids = list(pool.ids)
    draws = samples if by == "spread" else 1
    if pool.size is None:  # volumes, or 2D images at their own size: case by case, by sliding windows
        scores = []
        for image in pool.images:
            pred = model.probabilities(image[None], draws)
            maps = binary_entropy(foreground_probability(pred.probs)) if by == "entropy" else pred.spread
            scores.append(float(maps.double().mean()))
    else:
        pred = model.probabilities(pool.stack(), draws)
        fg = foreground_probability(pred.probs)
        if by == "entropy":
            maps = binary_entropy(fg)
        elif by == "spread":
            maps = pred.spread
        else:
            maps = (teacher_probability(method, method.teacher_net(), pool, cfg, model.device) - fg).abs()
        scores = maps.flatten(1).double().mean(1).tolist()
    ranked = sorted(zip(ids, scores), key=lambda item: -item[1])
    if inputs is None:  # images without a mask in the folder are labeled by drawing one, not by their id
        drawn = {p.id for p in pool.pairs}
        missing = [i for i, _ in ranked[:count] if i not in drawn]
        if missing:
            following = None
            LOG.info("suggest: draw the masks of its top %d images (%s) into %s; the next train labels every "
                     "image that has a mask", len(missing), ", ".join(missing[:5]) + (" ..." if len(missing) > 5
                     else ""), _mask_place(cfg))  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    claim_in_run(run_dir, out, following)
    write_rows(out, [{"rank": k + 1, "id": i, "score": s, "source": by} for k, (i, s) in enumerate(ranked)])
    if following is not None:
        chosen = [i for i, _ in ranked[:count]]
        safefs.write_text(following, "\n".join(labeled + chosen) + "\n")
    return out, following
