"""Prediction: batched probabilities of normalised tensors (K noise draws for diffusion
methods, MONAI sliding windows for patches and volumes), and the :class:`Segmenter`, the one
owner of a trained model: its preprocessing, its method's inference input, its threshold and
class names, and the files a prediction writes."""

from __future__ import annotations

import io
import itertools
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from PIL import Image

from . import safefs
from .config import Config, from_dict
from .data import normalize, normalize_cases
from .data.dataset import class_names
from .data.folder import (
    IMAGE_EXTENSIONS,
    IMAGE_FOLDERS,
    case_id,
    first_file,
    image_files,
    image_stem,
    mask_folders_below,
    read_image,
    resize_image,
    sort_beside,
)
from .data.volumes import is_plane_file, is_stack
from .errors import ConfigError, DataError, RunFolderError
from .methods import Method, Prediction, build_method
from .runfolder import RunFolder, check_saved_model
from .subnormals import flush_subnormals


def resolve_device(name: str) -> torch.device:
    """``auto`` (a GPU when there is one), ``cpu``, ``mps`` or ``cuda[:N]``, checked."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise ConfigError(f"device must be auto, cpu, mps or cuda[:N], got {name[:40]!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but no CUDA device is available")
    return torch.device(name)


def set_up_device(name: str) -> torch.device:
    """``resolve_device(name)``; on a CPU, also flush subnormal floats to zero on every thread
    that computes (:mod:`superdiffusion.subnormals`): arithmetic on them is many times slower
    on x86 CPUs, and they arise as a diffusion teacher's deep blocks decay."""
    device = resolve_device(name)
    if device.type == "cpu":
        flush_subnormals()  # False (and nothing changes) where the CPU cannot
    return device


@torch.inference_mode()
def predict_tensor(
    method: Method,
    images: torch.Tensor,
    device: torch.device,
    batch_size: int = 16,
    samples: int = 1,
    window: tuple[int, ...] | None = None,
    overlap: float = 0.5,
    seed: int = 0,
    step: int | None = None,
    net: torch.nn.Module | None = None,
) -> Prediction:
    """Probabilities ``(N, C, *S)`` on the CPU (and the spread over draws when ``samples`` > 1).

    ``window``: sliding-window size for volumes (None: the whole image at once). ``seed`` (a
    run passes its ``train.seed``) derives a distinct, reproducible noise generator for each
    chunk of images and each batch of sliding windows, so draws are not correlated across them;
    ``step`` is the diffusion step of the pure-noise masks (``eval.inference_t``); ``net``
    replaces the method's segmenter (the paper's teacher, say).
    """
    if samples < 1:
        raise ConfigError(f"eval.samples must be >= 1, got {samples}")
    if samples > 1 and not method.stochastic_inference:
        raise ConfigError(f"method {method.name} predicts deterministically; eval.samples > 1 needs a diffusion method")
    other = {"net": net} if net is not None else {}  # another network than the method's segmenter
    was_training = method.training
    method.eval()
    probs, spreads = [], []
    try:
        for index, start in enumerate(range(0, images.shape[0], batch_size)):
            chunk = images[start : start + batch_size].to(device)
            if window is None:
                pred = method.predict(chunk, samples, generator(chunk, derived_seed(seed, index)), step, **other)
            else:
                seed_i = derived_seed(seed, index)
                pred = _sliding(method, chunk, samples, window, overlap, batch_size, seed_i, step, other)
            probs.append(pred.probs.float().cpu())
            if pred.spread is not None:
                spreads.append(pred.spread.float().cpu())
    finally:
        method.train(was_training)
    return Prediction(torch.cat(probs), torch.cat(spreads) if spreads else None)


def generator(like: torch.Tensor, seed: int) -> torch.Generator:
    """A generator on ``like``'s device, seeded ``seed``."""
    return torch.Generator(device=like.device).manual_seed(seed)


def derived_seed(base: int, *indices: int) -> int:
    """A reproducible seed for one chunk (and window batch) of a prediction."""
    value = base
    for i in indices:
        value = (value * 1_000_003 + i + 1) % (2**63 - 1)
    return value


def _sliding(
    method: Method,
    volume: torch.Tensor,
    samples: int,
    window: tuple[int, ...],
    overlap: float,
    batch_size: int,
    seed: int,
    step: int | None,
    other: dict | None = None,
) -> Prediction:
    calls = itertools.count()  # one seed per batch of windows

    def run(patch: torch.Tensor) -> torch.Tensor:
        pred = method.predict(patch, samples, generator(patch, derived_seed(seed, next(calls))), step, **(other or {}))
        if pred.spread is None:
            return pred.probs
        return torch.cat([pred.probs, pred.spread[:, None]], dim=1)

    roi = tuple(min(w, s) for w, s in zip(window, volume.shape[2:]))
    out = sliding_window_inference(volume, roi, batch_size, run, overlap=overlap, mode="gaussian")
    c = method.num_classes
    return Prediction(out[:, :c], out[:, c] if out.shape[1] > c else None)


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
    check_saved_model(state, folder.model_path if folder.model_path.exists() else folder.checkpoint_path(which))
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


class Segmenter:
    """A trained model, ready to segment: built once from a run folder (:meth:`from_run`), the
    idiom of nnU-Net's predictor. It owns what a prediction needs beside the weights, so that
    no caller re-derives the preprocessing or reads a method's settings:

    - the preprocessing of a raw image, from the run's saved data record (channels,
      ``data.normalize``, the training set's statistics, the model size);
    - the method's inference input (a diffusion method's pure-noise mask), through the
      method's own ``predict`` and ``frozen_network``;
    - the selected threshold, the class names and the files a prediction writes.

    ``predict``, ``evaluate``, ``suggest``, ``figure``, ``show`` and ``export`` use it.
    """

    def __init__(self, cfg: Config, method: Method, state: dict[str, Any], device: torch.device | str = "cpu"):
        self.cfg, self.state = cfg, state
        self.data_info: dict[str, Any] = state["data"]
        self.device = torch.device(device)
        self.method = method.to(self.device)
        self.best: dict[str, Any] = dict(state.get("best") or {})
        self.threshold = float(self.best.get("threshold", 0.5))
        self.class_names = class_names(method.num_classes, self.data_info.get("class_names"))

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "auto", which: str = "best.pt") -> Segmenter:
        """The selected model of ``run_dir`` on ``device`` (auto: a GPU when there is one)."""
        cfg, method, state = load_run(run_dir, which)
        return cls(cfg, method, state, set_up_device(device))

    # --- what the model is ----------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.method.num_classes

    @property
    def spatial_dims(self) -> int:
        return self.method.spatial_dims

    @property
    def channels(self) -> int:
        return int(self.data_info["channels"])

    @property
    def stats(self) -> dict[str, list[float]]:
        return self.data_info["stats"]

    @property
    def size(self) -> tuple[int, ...] | None:
        """The size a 2D image is resized to before the network; None: the model segments images
        at their own size by sliding windows (volumes, 2D trained on native-resolution patches)."""
        size = self.cfg.data.size
        return tuple(int(v) for v in size) if size is not None and self.spatial_dims == 2 else None

    @property
    def window(self) -> tuple[int, ...] | None:
        """The sliding window (``data.patch_size``), or None when the whole image goes at once."""
        return None if self.size is not None else tuple(self.cfg.data.patch_size)

    def require_fixed_size(self, what: str) -> tuple[int, ...]:
        """The model size, or one line saying that ``what`` needs a 2D run at a fixed ``data.size``."""
        if self.size is None:
            raise ConfigError(
                f"{what} needs a 2D run trained at a fixed data.size; this run predicts by sliding windows "
                "(volumes, or data.size=null): use superdiffusion predict"
            )
        return self.size

    # --- preprocessing ----------------------------------------------------------------------
    def preprocess(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """A raw ``(C, H, W)`` image in [0, 1] (as :func:`read_image` gives it) -> the network's
        normalised ``(1, C, *S)`` input: resized to the model size (if any), then normalised."""
        image = torch.as_tensor(image)
        if self.size is not None:
            image = resize_image(image.numpy(), self.size)
        return normalize_cases([image], self.stats, self.cfg.data.normalize)[0][None]

    def read(self, path: Path) -> tuple[torch.Tensor, tuple[int, ...]]:
        """A 2D image file -> the network's input and the image's own ``(H, W)``."""
        image = read_image(path, self.channels)
        return self.preprocess(image), tuple(image.shape[1:])

    # --- prediction -------------------------------------------------------------------------
    def probabilities(self, images: torch.Tensor, samples: int = 1, net: torch.nn.Module | None = None) -> Prediction:
        """Class probabilities of normalised ``images`` (``(N, C, *S)``, one case at a time when
        they are predicted by sliding windows), seeded from ``train.seed``; ``net`` replaces the
        method's segmenter (the paper's teacher)."""
        e = self.cfg.eval
        overlap = e.sw_overlap if self.window is not None else 0.5
        return predict_tensor(
            self.method, images, self.device, e.batch_size, samples, self.window, overlap,
            self.cfg.train.seed, e.inference_t, net,
        )  # fmt: skip

    def mask(self, probs: torch.Tensor) -> np.ndarray:
        """Class probabilities ``(K, *S)`` -> the uint8 mask: foreground above the threshold
        (binary tasks), else the most probable class."""
        if self.num_classes == 2:
            return (probs[1:].sum(0) > self.threshold).numpy().astype(np.uint8)
        return probs.argmax(0).numpy().astype(np.uint8)

    def drawn(self, mask: np.ndarray, colour: bool = True) -> np.ndarray:
        """Class indices -> the values the training masks drew them with (``data.mask_values``:
        grey values, or colours as an RGB mask where ``colour``), so that a prediction reads
        like the user's own masks; unchanged without them."""
        values = self.cfg.data.mask_values
        if values is None:
            return mask
        if isinstance(values[0], str):  # painted classes: an RGB mask (NIfTI keeps the class indices)
            if not colour:
                return mask
            return np.array([[int(v[k : k + 2], 16) for k in (1, 3, 5)] for v in values], np.uint8)[mask]
        return np.asarray(values, dtype=np.uint8 if max(values) <= 255 else np.uint16)[mask]

    def frozen_network(self) -> torch.nn.Module:
        """The network as one deterministic module, normalised images at the model size ->
        class probabilities, on the CPU: a diffusion method's noise input is fixed to the draw
        that :meth:`predict_file` makes for a single image (what ``export`` writes)."""
        size = self.require_fixed_size("export")
        draw = torch.Generator().manual_seed(derived_seed(self.cfg.train.seed, 0))
        return self.method.cpu().eval().frozen_network(size, self.cfg.eval.inference_t, draw)

    # --- files ------------------------------------------------------------------------------
    def output_suffix(self, path: Path) -> str:
        """The kind of file a prediction of the input ``path`` is written as: a TIFF stack for a
        stack, NIfTI for other volumes and for 2D images kept as NIfTI, NRRD ..., else PNG."""
        if is_stack(path):
            return ".tif"
        return ".nii.gz" if self.spatial_dims == 3 or is_plane_file(path) else ".png"

    def output_names(self, stem: str, samples: int, probabilities: bool, suffix: str = ".png") -> list[str]:
        """The files a prediction of the input ``stem`` writes (``suffix``: :meth:`output_suffix`)."""
        names = [f"{stem}{suffix}"]
        if samples > 1:
            names.append(f"{stem}_uncertainty{suffix}")
        if probabilities:
            names.append(f"{stem}_probability{suffix}")
        return names

    def inputs(self, path: Path) -> list[Path | tuple[Path, ...]]:
        """The cases of a file or folder: each 2D image or volume (volumes of several channels:
        nnU-Net's ``CASE_0000`` ... files gathered per case); a case folder's images (its label
        left out), or those of each case folder below ``path``."""
        from .data.volumes import (
            case_folders,
            folder_cases,
            group_channels,
            is_label_name,
            is_series,
            is_volume,
            nnunet_channel,
        )

        if self.spatial_dims == 3 and path.is_dir():
            if is_series(path):  # a DICOM series: one volume
                return [path]
            folders = [path / name for name in IMAGE_FOLDERS if (path / name).is_dir()]
            if folders:  # a dataset's own folder: the volumes of its image folders, not its labels
                return [case for folder in folders for case in self._image_folder_cases(folder)]
            files = sorted(p for p in path.iterdir() if is_volume(p) or is_series(p))
            one_case = any(is_label_name(p) for p in files) or (  # a labeled case, or a case's modalities
                self.channels > 1 and len(files) == self.channels and not all(nnunet_channel(p) for p in files)
            )
            folders = [path] if one_case else [] if files else case_folders(path)
            cases = [case for folder in folders for case in folder_cases(folder)]
            if cases:
                return cases
        if path.is_file():
            files = [path]
        elif not path.is_dir():
            raise DataError(f"{path}: no such file or folder")
        elif self.spatial_dims == 2:  # its subfolders too (one per patient, say): the outputs keep them
            files = image_files(path)
            masks = mask_folders_below(path, files)  # a dataset folder: its images, not its masks
            files = [p for p in files if not masks & set(p.parents)]
            # masks kept beside the images, and files derived from them, as training reads them
            ids = {p: case_id(p, path) for p in files}  # two files of one id stay, for the check of the outputs
            keep = set(sort_beside(path, {key: p for p, key in ids.items()}).images) if files else set()
            files = [p for p in files if ids[p] in keep]
        else:
            files = sorted(
                p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS or is_volume(p) or is_series(p)
            )
        if not files:
            raise DataError(f"{path}: no image or volume files")
        return group_channels(files, self.channels) if self.spatial_dims == 3 else files

    def _image_folder_cases(self, folder: Path) -> list[Path | tuple[Path, ...]]:
        """The cases of a volume dataset's image folder: for a one-channel model each volume, also
        those of its subfolders one a patient (``images/patient007/scan0.nii.gz``), as training
        reads them; else its cases as :meth:`inputs` finds them (a case folder's channels)."""
        from .data.volumes import volumes_in

        found = list(volumes_in(folder).values()) if self.channels == 1 else []
        return found or self.inputs(folder)

    def check_outputs(
        self, cases: list, output: Path, samples: int, probabilities: bool, force: bool, inputs: Path | None = None
    ) -> list[str]:
        """Before anything is written: refuse outputs that would overwrite an input (even with
        ``force``), that two inputs would both write (``case1.png`` and ``case1.jpg``), that exist
        already (without ``force``; with it, that this package did not write there), or that a
        linked subfolder would send elsewhere. Returns the names to be written (relative)."""
        from .data.volumes import case_stem

        groups = [tuple(c) if isinstance(c, list | tuple) else (c,) for c in cases]  # a volume's channel files
        resolved_inputs = {Path(p).resolve() for group in groups for p in group}
        by_name: dict[str, list[str]] = {}  # lower-cased: clashes on case-insensitive file systems too
        names: list[str] = []
        for group in groups:
            first, sub = Path(group[0]), subfolder(group, inputs)
            stem = case_stem(group if len(group) > 1 else first) if self.spatial_dims == 3 else image_stem(first)
            for part in range(1, len(sub.parts) + 1):
                safefs.refuse_link(output.joinpath(*sub.parts[:part]))
            for name in self.output_names(stem, samples, probabilities, self.output_suffix(first)):
                by_name.setdefault((sub / name).as_posix().lower(), []).append(first.name)
                names.append((sub / name).as_posix())
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
        # --force replaces only this package's earlier predictions there, never a user's file (their masks)
        safefs.check_replaceable(output, names, force, hint=" folder")
        return names

    def predict(
        self, inputs: str | Path, output: str | Path, samples: int = 1, force: bool = False, probabilities: bool = False
    ) -> list[Path]:
        """Segment every image or volume of ``inputs`` (a file or a folder) into ``output``;
        returns the files written."""
        output, inputs = Path(output), Path(inputs)
        safefs.refuse_link(output)  # a linked output folder would send the predictions elsewhere
        output.mkdir(parents=True, exist_ok=True)
        cases = self.inputs(inputs)
        out, top = output.resolve(), inputs.resolve()
        if out != top and out.is_relative_to(top):  # an output folder inside the input folder: not more input
            cases = [c for c in cases if not first_file(c).resolve().is_relative_to(out)]
            if not cases:
                raise DataError(f"{inputs}: no image or volume files outside the output folder {output}")
        safefs.record_written(output, self.check_outputs(cases, output, samples, probabilities, force, inputs))
        written = []
        for case in cases:
            folder = output / subfolder(case, inputs)  # an input folder's subfolders, kept
            folder.mkdir(parents=True, exist_ok=True)
            written += self.predict_file(case, folder, samples, probabilities)
        return written

    def predict_file(self, path, output: Path, samples: int = 1, probabilities: bool = False) -> list[Path]:
        """Segment one case. 2D: ``output/STEM.png`` at the image's own size (0/255 for binary
        tasks, class indices otherwise, or the training masks' grey values: :meth:`drawn`), ``STEM_uncertainty.png`` with several draws (the spread
        x 510) and, with ``probabilities``, ``STEM_probability.png`` (16 bits, 65535 = 1). 3D:
        ``STEM.nii.gz`` with the input's affine, and float uncertainty and probability volumes."""
        if self.spatial_dims == 3:
            return self._predict_volume(path, output, samples, probabilities)
        if is_plane_file(path) or is_stack(path):  # a 2D image kept as NIfTI ..., or a volume: slice by slice
            return self._predict_stored(path, output, samples, probabilities)
        x, size = self.read(path)
        mask, spread, fg = self._segment(x, size, samples, probabilities)
        stem = image_stem(path)
        target = output / f"{stem}.png"
        _save_png(Image.fromarray(mask * 255 if self.num_classes == 2 else self.drawn(mask)), target)
        written = [target]
        if spread is not None:
            unc = (spread.clamp(0, 0.5) * 510).numpy().astype(np.uint8)
            _save_png(Image.fromarray(unc), output / f"{stem}_uncertainty.png")
            written.append(output / f"{stem}_uncertainty.png")
        if fg is not None:
            _save_png(
                Image.fromarray((fg * 65535).round().numpy().astype(np.uint16)), output / f"{stem}_probability.png"
            )
            written.append(output / f"{stem}_probability.png")
        return written

    def _segment(self, x: torch.Tensor, size: tuple[int, ...], samples: int, probabilities: bool):
        """A 2D image's network input -> its mask, spread (None for one draw) and foreground
        probability (None unless ``probabilities``), at the image's own ``size``."""
        pred = self.probabilities(x, samples)
        probs = torch.nn.functional.interpolate(pred.probs, size=size, mode="bilinear", align_corners=False)[0]
        spread = None
        if pred.spread is not None:
            spread = torch.nn.functional.interpolate(pred.spread[None], size=size, mode="bilinear", align_corners=False)
            spread = spread[0, 0].clamp(0, 1)
        return self.mask(probs), spread, probs[1:].sum(0).clamp(0, 1) if probabilities else None

    def _predict_stored(self, path: Path, output: Path, samples: int, probabilities: bool) -> list[Path]:
        """A 2D image kept as a NIfTI, NRRD, MetaImage, DICOM, HDF5 or ``.npz`` file, or a volume
        of them segmented slice by slice (:func:`~.data.volumes.read_for_2d` says along which
        axis), each slice as a slice file of it would be: written as ``.nii.gz`` in the file's
        stored shape and affine; a TIFF stack page by page, written back as a stack."""
        from .data.folder import plane_mode, scale_image
        from .data.volumes import case_stem, read_for_2d, read_stack

        stack = is_stack(path)  # a TIFF stack: its pages (y, x), as 2D images are read, back as pages
        slices, affine, shape, axis = (
            (read_stack(path).transpose(2, 1, 0), None, None, 2) if stack else read_for_2d(path)
        )
        parts = []
        for plane in slices:
            image = scale_image(plane, plane_mode(plane), path, self.channels)
            parts.append(self._segment(self.preprocess(image), plane.shape, samples, probabilities))

        def stacked(items: tuple) -> np.ndarray | None:  # the slices' masks (or spreads ...) as the file holds them
            if items[0] is None:
                return None
            found = np.stack([np.asarray(item) for item in items], axis or 0)
            return found.transpose(1, 0, 2) if stack else found  # pages (y, x) on the last axis -> (x, y, z)

        if stack:
            return self._write_stack(output, case_stem(path), *map(stacked, zip(*parts)))
        return self._write_nifti(output, case_stem(path), affine, shape, *map(stacked, zip(*parts)))

    def _write_stack(self, output: Path, stem: str, mask, spread, fg) -> list[Path]:
        """A prediction of a TIFF stack (``(x, y, z)`` arrays) as stacks of its pages: the mask (0/255
        for one class, else :meth:`drawn`'s values), and float spread and probability."""
        written = []
        mask = mask * np.uint8(255) if self.num_classes == 2 else self.drawn(mask, colour=False)
        for name, arr in ((stem, mask), (f"{stem}_uncertainty", spread), (f"{stem}_probability", fg)):
            if arr is not None:
                _save_stack(
                    np.asarray(arr) if arr is mask else np.asarray(arr, dtype=np.float32), output / f"{name}.tif"
                )
                written.append(output / f"{name}.tif")
        return written

    def _write_nifti(self, output: Path, stem: str, affine, shape, mask, spread, fg) -> list[Path]:
        """A 2D model's prediction of a NIfTI, NRRD or HDF5 input (a slice, or a volume slice by
        slice) as ``.nii.gz`` files in the input's stored ``shape`` and ``affine``, as
        :meth:`_predict_volume` writes volumes: class indices, and float spread and probability."""
        import nibabel as nib

        written = []
        for suffix, arr in (("", self.drawn(mask, colour=False)), ("_uncertainty", spread), ("_probability", fg)):
            if arr is not None:
                arr = (np.asarray(arr) if suffix == "" else np.asarray(arr, dtype=np.float32)).reshape(shape)
                _save_nifti(nib.Nifti1Image(arr, affine), output / f"{stem}{suffix}.nii.gz")
                written.append(output / f"{stem}{suffix}.nii.gz")
        return written

    def _predict_volume(self, path, output: Path, samples: int, probabilities: bool) -> list[Path]:
        import nibabel as nib

        from .data.volumes import VolumePair, case_stem, load_volume_pair

        image, _, geometry = load_volume_pair(VolumePair(case_stem(path), path, None), self.cfg.data, labels=False)
        pred = self.probabilities(normalize(image[None], self.stats), samples)
        mask = self.mask(pred.probs[0])
        spread = None if pred.spread is None else pred.spread[0].numpy().astype(np.float32)
        fg = pred.probs[0, 1:].sum(0).clamp(0, 1).numpy().astype(np.float32) if probabilities else None
        stem = case_stem(path)
        if self.output_suffix(first_file(path)) == ".tif":
            return self._write_stack(output, stem, mask, spread, fg)
        written = []
        for name, arr in (
            (stem, self.drawn(mask, colour=False)),
            (f"{stem}_uncertainty", spread),
            (f"{stem}_probability", fg),
        ):
            if arr is not None:
                _save_nifti(nib.Nifti1Image(arr, geometry.affine), output / f"{name}.nii.gz")
                written.append(output / f"{name}.nii.gz")
        return written


def _save_png(image: Image.Image, target: Path) -> None:
    with safefs.atomic(target) as handle:
        image.save(handle, format="PNG")


def _save_stack(volume: np.ndarray, target: Path) -> None:
    """``volume`` ``(x, y, z)`` as a multi-page TIFF, a page a z slice, written atomically."""
    pages = [Image.fromarray(np.ascontiguousarray(volume[:, :, k].T)) for k in range(volume.shape[2])]
    buffer = io.BytesIO()  # Pillow reads back what it wrote of a multi-page TIFF
    pages[0].save(buffer, format="TIFF", save_all=True, append_images=pages[1:])
    safefs.write_bytes(target, buffer.getvalue())


def _save_nifti(image, target: Path) -> None:
    """A ``.nii.gz`` written atomically (never through a link)."""
    import gzip

    safefs.write_bytes(target, gzip.compress(image.to_bytes(), compresslevel=6))


def subfolder(case, inputs: Path | None) -> Path:
    """The subfolder a case sits in below the input folder ``inputs`` (``Path()`` for a file
    given alone, or one at the folder's top): its outputs go to the same subfolder."""
    if inputs is None or not inputs.is_dir() or first_file(case) == inputs:  # a file, or a DICOM series, alone
        return Path()
    return first_file(case).parent.relative_to(inputs)


def predict_image_file(
    method, cfg, data_info, path, output, samples, threshold, device, probabilities: bool = False
) -> list[Path]:
    """:meth:`Segmenter.predict_file` for a method in hand (not loaded from a run folder): a 2D
    image or a volume, whichever the method segments."""
    model = Segmenter(cfg, method, {"data": data_info, "best": {"threshold": threshold}}, device)
    return model.predict_file(path, output, samples, probabilities)


predict_volume_file = predict_image_file  # one path for both: the Segmenter tells them apart
