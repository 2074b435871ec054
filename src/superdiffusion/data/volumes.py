"""3D volumes: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``) and MetaImage
(``.mha``, ``.mhd``; with the ``itk`` extra) through MONAI's readers, with their affine in RAS;
HDF5 (``image`` and ``label`` datasets, the usual LA layout ``CASE/mri_norm2.h5``) through h5py,
and NumPy ``.npz`` files of the same two arrays (never unpickled); multi-page TIFF stacks
through Pillow.
A detached header (``.nhdr``, ``.mhd``) is read only when the voxel file it names sits in its
own folder: no input outside the data folder is read.

Folder layouts:
- ``images/`` + ``labels/`` (or ``masks/``) with the same file names (+ optional ``split.csv``);
- one folder per case holding its images (one a channel) and its label, told by its name
  (KiTS' ``CASE/imaging.nii.gz`` + ``CASE/segmentation.nii.gz``, BraTS' ``CASE/CASE_flair.nii.gz``
  ... + ``CASE/CASE_seg.nii.gz``);
- HDF5 (or ``.npz``) files holding both, anywhere one or two levels below the root.

Volumes keep their own sizes: they are held as lists, cropped into random patches for
training and predicted by sliding windows. Spacing and affine are kept for metrics in
physical units and for writing predictions with the input's geometry.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from zipfile import BadZipFile, ZipFile

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DataError
from .dataset import (
    IDENTITY,
    PER_IMAGE_MODES,
    SegmentationData,
    Split,
    assign_splits,
    available_memory,
    check_inside,
    check_memory,
    dataset_stats,
    normalize,
    normalize_each,
    resolve_root,
    set_aside_unlabeled,
    unlabeled_as_recorded,
)
from .folder import MAX_IMAGE_PIXELS, check_finite, classes_of, compact_mask, mask_folder, read_columns
from .splits import choose_labeled

LOG = logging.getLogger("superdiffusion")

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".h5", ".hdf5", ".npz")
# the volume formats a 2D dataset may use for its images (a DICOM file: one X-ray, one ultrasound frame)
PLANE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
HDF5_SUFFIXES = (".h5", ".hdf5")
# an image and its label in one file, as arrays "image" and "label": HDF5, or NumPy's .npz (TransUNet's Synapse)
CONTAINER_SUFFIXES = (*HDF5_SUFFIXES, ".npz")
STACK_SUFFIXES = (".tif", ".tiff")  # a multi-page TIFF of one size a page: a stack (microscopy, EM), a volume
NRRD_SUFFIXES = (".nrrd", ".nhdr")
METAIMAGE_SUFFIXES = (".mha", ".mhd")
ITK_SUFFIXES = (*METAIMAGE_SUFFIXES, ".dcm")  # read by MONAI's ITKReader (the itk extra)


def volume_stem(path: Path) -> str:
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name if path.is_dir() else path.stem  # a DICOM series: its folder's name


def case_stem(image: Path | tuple[Path, ...]) -> str:
    """The case name of a volume file, or of a case's channel files (``CASE_0000.nii.gz`` ...)."""
    if isinstance(image, tuple):
        return volume_stem(image[0]).rsplit("_", 1)[0]
    return volume_stem(image)


def nnunet_channel(path: Path) -> tuple[str, int] | None:
    """The case and channel of a file named as nnU-Net names one channel of a case
    (``CASE_0001.nii.gz``: ``("CASE", 1)``); None for another name."""
    case, _, index = volume_stem(path).rpartition("_")
    return (case, int(index)) if case and index.isdigit() and len(index) == 4 else None


def group_channels(files: list[Path], channels: int) -> list[Path | tuple[Path, ...]]:
    """Volume files as cases: with one channel, each file; with more, nnU-Net's naming
    ``CASE_0000``, ``CASE_0001``, ... gathered per case in channel order."""
    if channels == 1:
        return list(files)
    if files and all(p.name.endswith(PLANE_SUFFIXES) and stored_shape(p)[3:] == (channels,) for p in files):
        return list(files)  # one 4D file a case, its modalities on the last axis (MSD)
    cases: dict[str, dict[int, Path]] = {}
    for path in files:
        split = nnunet_channel(path)
        if split is None:
            raise DataError(f"{path}: a {channels}-channel model reads CASE_0000 ... CASE_{channels - 1:04d} files")
        cases.setdefault(split[0], {})[split[1]] = path
    out = []
    for case, found in sorted(cases.items()):
        if sorted(found) != list(range(channels)):
            raise DataError(
                f"{case}: channel files {sorted(found)} found, the model needs {channels} (_0000 to _{channels - 1:04d})"
            )
        out.append(tuple(found[k] for k in range(channels)))
    return out


def is_volume(path: Path) -> bool:
    """A volume file: by its suffix, or a TIFF stack (:func:`is_stack`)."""
    return path.name.lower().endswith(VOLUME_SUFFIXES) or is_stack(path)


def is_stack(path: Path) -> bool:
    """Whether ``path`` is a TIFF stack: two or more pages of one size, a page a slice (a 3D
    microscopy or EM image, as ImageJ saves it); a TIFF whose further pages are smaller
    previews is a 2D image. Reads the header."""
    if not path.name.lower().endswith(STACK_SUFFIXES) or not path.is_file() or path.name.startswith("."):
        return False
    from PIL import Image

    from .folder import frames_of

    try:
        with Image.open(path) as img:
            return frames_of(img) > 1
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False  # not a readable TIFF: the 2D reader names it


def _stacks(files: list[Path]) -> tuple[list[Path], list[Path]]:
    """A folder's TIFF stacks and its other files: its TIFFs are stacks when the first is one
    (only that one is opened: a folder of 2D TIFFs costs one header)."""
    files = sorted(files)
    tiffs = [p for p in files if p.name.lower().endswith(STACK_SUFFIXES)]
    return (tiffs if tiffs and is_stack(tiffs[0]) else []), [p for p in files if p not in tiffs]


def holds_volumes(files: list[Path]) -> bool:
    """Whether a folder's files are volumes: its TIFFs when the first is a stack, else any
    volume file or DICOM series unless the first NIfTI (NRRD ...) holds one slice."""
    stacks, others = _stacks(files)
    return bool(stacks) or (any(is_volume(p) or is_series(p) for p in others) and not is_plane_folder(others))


def read_stack(path: Path) -> np.ndarray:
    """A TIFF stack's voxels ``(x, y, z)``, as NIfTI indexes them: a page a z slice."""
    from PIL import Image, ImageSequence

    with Image.open(path) as img:
        pages = [np.asarray(page) for page in ImageSequence.Iterator(img)]
    if pages[0].ndim != 2:
        raise DataError(f"{path}: a stack of colour pages; a volume's pages are grey (one channel)")
    if any(page.shape != pages[0].shape for page in pages):
        raise DataError(f"{path}: the stack's pages differ in size")
    return np.stack(pages, axis=-1).transpose(1, 0, 2)


def is_container(path: Path) -> bool:
    """An HDF5 or ``.npz`` file (:data:`CONTAINER_SUFFIXES`), which holds named arrays."""
    return path.name.lower().endswith(CONTAINER_SUFFIXES) and path.is_file() and not path.name.startswith(".")


def _arrays(path: Path) -> dict[str, tuple[int, ...]]:
    """The shapes of an HDF5 or ``.npz`` file's arrays, by name. An ``.npz`` is never unpickled
    (an object array would run code): one holding one is an unreadable file."""
    try:
        if path.name.lower().endswith(".npz"):
            return _npz_shapes(path)
        import h5py

        with h5py.File(path, "r") as handle:
            return _hdf5_shapes(handle, path)
    except (OSError, ValueError, KeyError, EOFError, BadZipFile) as err:
        kind = "NumPy .npz" if path.name.lower().endswith(".npz") else "HDF5"
        raise DataError(f"{path}: cannot read {kind} file ({str(err).splitlines()[0][:120]})") from None


def _hdf5_shapes(handle, path: Path) -> dict[str, tuple[int, ...]]:
    """An open HDF5 file's dataset shapes, by name. Its bytes must lie in the file itself: an
    external link, a dataset kept in an external raw file or a virtual dataset (each of which
    reads another file, wherever it is) is refused with one line."""
    import h5py

    shapes = {}
    for name in handle:
        link = handle.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            raise DataError(
                f"{path}: {name!r} is a link to {link.filename!r}, another file; superdiffusion reads only the "
                "bytes inside the data folder's files: copy the data into this file"
            )
        item = handle[name]
        if isinstance(item, h5py.Dataset):
            if item.external or item.is_virtual:
                raise DataError(
                    f"{path}: {name!r} keeps its values in other files ({'virtual dataset' if item.is_virtual else 'external storage'}); "
                    "superdiffusion reads only the bytes inside the data folder's files: copy the data into this file"
                )
            shapes[name] = tuple(item.shape)
    return shapes


def _npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """An ``.npz`` file's array shapes from each member's header (nothing else is decompressed);
    an object array, which only unpickling would read, is refused."""
    shapes = {}
    with ZipFile(path) as archive:
        for member in archive.namelist():
            with archive.open(member) as handle:
                version = np.lib.format.read_magic(handle)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(handle)
            if dtype.hasobject:
                raise ValueError(
                    f"its array {member.removesuffix('.npy')!r} holds Python objects (pickled), not numbers"
                )
            shapes[member.removesuffix(".npy")] = tuple(shape)
    return shapes


def _container_array(path: Path, dataset: str) -> np.ndarray:
    """An HDF5 or ``.npz`` file's array ``dataset`` (``image`` or ``label``)."""
    names = _arrays(path)
    if dataset not in names:
        raise DataError(f"{path}: no array {dataset!r} (has {', '.join(names) or 'none'})")
    if path.name.lower().endswith(".npz"):
        with np.load(path, allow_pickle=False) as handle:
            return handle[dataset]
    import h5py

    with h5py.File(path, "r") as handle:
        return handle[dataset][()]


def holds_label(path: Path) -> bool:
    """Whether ``path`` is an HDF5 or ``.npz`` file holding a ``label`` beside its ``image``."""
    return is_container(path) and "label" in _arrays(path)


def is_series(path: Path) -> bool:
    """Whether ``path`` is a DICOM series: a folder (not a link) of two or more ``.dcm`` slices and
    nothing else but hidden files, read as one volume."""
    if not path.is_dir() or path.is_symlink():
        return False
    files = [p for p in path.iterdir() if not p.name.startswith(".")]
    return len(files) >= 2 and all(p.is_file() and p.name.lower().endswith(".dcm") for p in files)


@dataclass
class Volume:
    array: np.ndarray  # (H, W, D) float32 image, or int64 labels
    affine: np.ndarray  # 4x4
    spacing: tuple[float, float, float]
    spacing_missing: bool = False  # the header gave no voxel size (NIfTI pixdim 0, HDF5): read as 1 mm


AFFINE_TOLERANCE = 1e-3  # mm (and relative, on directions): float32 headers round below that


def _nifti_spacing_missing(path: Path) -> bool:
    """Whether the NIfTI header's voxel size (pixdim 1-3) holds a zero or a negative value.
    nibabel replaces such a value by 1 as it loads the file, so the raw header is read here."""
    import nibabel as nib
    from nibabel.openers import ImageOpener

    with ImageOpener(str(path)) as handle:
        raw = handle.read(540)
    size = int.from_bytes(raw[:4], "little")
    big = int.from_bytes(raw[:4], "big")
    kind = nib.Nifti2Header if 540 in (size, big) else nib.Nifti1Header
    header = kind.from_fileobj(io.BytesIO(raw), check=False)
    return bool(np.any(np.asarray(header["pixdim"][1:4]) <= 0))


def _metaimage_header(path: Path) -> dict[str, str]:
    """A MetaImage file's header: its ``Key = value`` lines, up to ``ElementDataFile`` (the last
    one; an ``.mha``'s voxels follow it)."""
    fields: dict[str, str] = {}
    with open(path, "rb") as handle:
        for raw in iter(lambda: handle.readline(4096), b""):
            key, sep, value = raw.decode("latin-1").partition("=")
            if not sep:
                raise DataError(f"{path}: not a MetaImage header (line {raw[:40]!r})")
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile" or len(fields) > 100:
                break
    return fields


def check_detached(path: Path) -> dict[str, str]:
    """A detached header (``.mhd``, ``.nhdr``) names the file that holds its voxels: read it only
    when that file sits in the header's own folder; a list or a pattern of files is refused. Returns a
    MetaImage's header (read once here, for the caller too), else an empty one."""
    header: dict[str, str] = {}
    if path.name.lower().endswith((".mha", ".mhd")):
        header = _metaimage_header(path)
    if path.name.lower().endswith(".mhd"):
        named = header.get("ElementDataFile", "")
    elif path.name.lower().endswith(".nhdr"):
        import nrrd

        header = nrrd.read_header(str(path))
        named = str(header.get("data file", header.get("datafile", "")))
    else:
        return header  # an .mha holds its voxels; its header is returned for the caller
    if named.upper() == "LOCAL":
        return header
    if not named or named.upper().startswith("LIST") or "%" in named or " " in named.strip():
        raise DataError(
            f"{path}: its voxels are named as {named[:60]!r}; one voxel file beside the header is read, or "
            "convert the volume to NIfTI"
        )
    folder = path.parent.resolve()
    if not (folder / named).resolve().is_relative_to(folder):
        raise DataError(
            f"{path}: its voxels are in {named[:200]!r}, outside the header's folder; superdiffusion reads only "
            "files inside the data folder"
        )
    return header


def check_declared_size(path: Path, dataset: str = "image", max_elements: int | None = None) -> tuple[int, ...] | None:
    """Before a file is read: one line if the array its header declares (a NIfTI, NRRD,
    MetaImage or TIFF header, an HDF5 or ``.npz`` member's) would not fit in the memory this
    machine has free as float32, or holds more than ``max_elements`` (2D images: the megapixel
    limit). A 1 KB header may declare 4000^3 voxels, a 3 MB ``.npz`` 3 GB: neither is allocated.
    DICOM series, whose shape only decoding gives, are not checked here (None). Returns the shape."""
    if is_series(path) or path.name.lower().endswith(".dcm"):
        return None
    shape = _arrays(path).get(dataset, ()) if is_container(path) else stored_shape(path)
    elements = int(np.prod(shape, dtype=np.float64)) if shape else 0
    if max_elements is not None and elements > max_elements:
        raise DataError(
            f"{path}: {'x'.join(map(str, shape))} is above the limit of {max_elements // 1_000_000} megapixels per 2D "
            "image; downsample it first"
        )
    free = available_memory()
    if free is not None and 4 * elements > free:
        raise DataError(
            f"{path}: its header declares {'x'.join(map(str, shape))} values ({4 * elements / 1e9:.1f} GB as float32), "
            f"more than the {free / 1e9:.1f} GB this machine has free; it is not read"
        )
    return shape


def _read_array(
    path: Path, dataset: str, max_elements: int | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float], bool]:
    """A volume file's voxels as stored, its affine, spacing and whether the spacing is missing;
    any reader failure is one line naming the file. The size its header declares is checked
    first (:func:`check_declared_size`)."""
    check_declared_size(path, dataset, max_elements)
    try:
        if is_series(path) or path.name.lower().endswith(PLANE_SUFFIXES):  # a series: ITK orders its slices
            header = {} if path.is_dir() else check_detached(path)  # MetaImage: its header, read once
            arr, affine = _load_with_monai(path)
            spacing = tuple(float(np.linalg.norm(affine[:3, k])) for k in range(3))
            missing = min(spacing) <= 0 or (path.name.endswith((".nii", ".nii.gz")) and _nifti_spacing_missing(path))
            if path.name.lower().endswith(METAIMAGE_SUFFIXES):  # ITK reads a header without it as 1 mm
                missing = missing or not ({"ElementSpacing", "ElementSize"} & set(header))
            if min(spacing) <= 0:
                affine, spacing = np.eye(4), (1.0, 1.0, 1.0)
        elif is_stack(path):
            arr = read_stack(path)
            affine, spacing, missing = np.eye(4), (1.0, 1.0, 1.0), True  # ImageJ's voxel size is not read: voxels
        elif path.name.lower().endswith(CONTAINER_SUFFIXES):
            arr = _container_array(path, dataset)
            affine, spacing, missing = np.eye(4), (1.0, 1.0, 1.0), False  # HDF5 and .npz have no geometry: voxels
        else:
            raise DataError(f"{path}: not a volume ({', '.join(VOLUME_SUFFIXES)})")
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure is an unreadable file for the user
        raise DataError(
            f"{path}: cannot read volume ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
        ) from None
    return np.asarray(arr), affine, spacing, missing


def read_volume(path: Path, dataset: str = "image") -> Volume:
    """Read one volume; ``dataset`` names the HDF5 dataset (``image`` or ``label``)."""
    arr, affine, spacing, missing = _read_array(path, dataset)
    arr = np.squeeze(arr)
    if arr.ndim == 2:
        raise DataError(f"{path}: a 2D image of {arr.shape[0]}x{arr.shape[1]} stored as a volume; a folder of "
                        "these is a 2D dataset (data.spatial_dims=2)")  # fmt: skip
    if arr.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume, got shape {arr.shape}")
    return Volume(arr, affine, spacing, missing)


def read_channels(path: Path) -> list[Volume]:
    """An image file's channels as volumes: one for a 3D file, one per modality for a 4D file
    that keeps them on its last axis (the Medical Segmentation Decathlon's multi-modal images)."""
    arr, affine, spacing, missing = _read_array(path, "image")
    arr = np.squeeze(arr)
    if arr.ndim == 4:
        return [Volume(np.ascontiguousarray(arr[..., c]), affine, spacing, missing) for c in range(arr.shape[3])]
    return [read_volume(path, "image")]


def stored_shape(path: Path) -> tuple[int, ...]:
    """A NIfTI, NRRD, MetaImage or HDF5 (``image``) file's array shape, from its header alone
    (a CT volume need not be decoded)."""
    try:
        if path.name.lower().endswith(NRRD_SUFFIXES):
            import nrrd

            return tuple(int(v) for v in nrrd.read_header(str(path))["sizes"])
        if path.name.lower().endswith(METAIMAGE_SUFFIXES):
            header = _metaimage_header(path)
            channels = int(header.get("ElementNumberOfChannels", 1))
            return tuple(int(v) for v in header["DimSize"].split()) + ((channels,) if channels > 1 else ())
        if path.name.lower().endswith(CONTAINER_SUFFIXES):
            return _arrays(path).get("image", ())
        if is_stack(path):
            from PIL import Image

            with Image.open(path) as img:
                return (*img.size, img.n_frames)
        if path.name.lower().endswith(".dcm") or is_series(path):  # DICOM: its shape by decoding it
            return tuple(_load_with_monai(path)[0].shape)
        import nibabel as nib

        return tuple(nib.load(str(path)).shape)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - an unreadable header is an unreadable file for the user
        raise DataError(
            f"{path}: cannot read volume ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
        ) from None


def is_plane_file(path: Path) -> bool:
    """A NIfTI, NRRD, MetaImage, DICOM or HDF5 file, which may hold a 2D image (one slice) as well
    as a volume."""
    return path.name.lower().endswith(PLANE_SUFFIXES + CONTAINER_SUFFIXES)


def read_plane(path: Path, dataset: str = "image") -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """A 2D image stored as a NIfTI or NRRD file (``(H, W)`` or ``(H, W, 1)``, as 2D datasets
    are often kept in medical imaging), or as an HDF5 file's ``dataset`` (``image`` or ``label``):
    its ``(H, W)`` array in the file's index order, its affine, and the stored shape (a
    prediction is written back in that shape and geometry)."""
    arr, affine, _, _ = _read_array(path, dataset, MAX_IMAGE_PIXELS)
    return _plane_of(arr, path), affine, tuple(arr.shape)


def _plane_of(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] > 1:
        raise DataError(f"{path}: a volume of {'x'.join(map(str, arr.shape))} in a 2D dataset; a folder of volumes "
                        "trains with data.spatial_dims=3")  # fmt: skip
    plane = np.squeeze(arr)
    if plane.ndim != 2:
        raise DataError(f"{path}: expected a 2D image, got shape {arr.shape}")
    return plane


def holds_slices(path: Path) -> bool:
    """Whether a NIfTI, NRRD, MetaImage, DICOM or HDF5 file holds a volume of several slices
    (from its header, but a DICOM's)."""
    return is_plane_file(path) and sum(n > 1 for n in stored_shape(path)[:3]) == 3


def read_for_2d(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], int | None]:
    """A NIfTI, NRRD, MetaImage, DICOM or HDF5 file given to a 2D model, decoded once (a DICOM's
    decoding is slow): its slices ``(N, H, W)``, one for a 2D image, the file's affine, its stored
    shape (a prediction is written back in it) and the axis a volume's slices were taken along
    (None for a 2D image): the last of a NIfTI, NRRD or MetaImage volume, the first of an HDF5
    one (kept z first, as the semi-supervised codebases' slice files are)."""
    arr, affine, _, _ = _read_array(path, "image")
    shape = tuple(arr.shape)
    if sum(n > 1 for n in shape[:3]) < 3:
        return _plane_of(arr, path)[None], affine, shape, None
    arr = np.squeeze(arr)
    if arr.ndim != 3:
        raise DataError(f"{path}: expected a volume of slices, got shape {shape}")
    axis = 0 if path.name.lower().endswith(CONTAINER_SUFFIXES) else 2
    return np.moveaxis(arr, axis, 0), affine, shape, axis


def is_plane_folder(files: list[Path]) -> bool:
    """Whether a folder's NIfTI or NRRD files are 2D images: its first such file holds one slice."""
    first = next((p for p in sorted(files) if is_plane_file(p)), None)
    if first is None:
        return False
    shape = stored_shape(first)
    spatial = [n for n in shape if n > 1]
    return len(spatial) <= 2 and (len(shape) < 3 or shape[2] == 1)


def _load_with_monai(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The voxels, in the file's index order, and the affine to world coordinates in RAS, the
    NIfTI convention: MONAI's readers turn an NRRD header's LPS space into RAS, so that a
    prediction written as NIfTI overlays the input in any viewer."""
    from monai.transforms import LoadImage

    name = path.name.lower()
    by_itk = path.is_dir() or name.endswith(ITK_SUFFIXES)  # a folder: a DICOM series
    if name.endswith(NRRD_SUFFIXES):
        import nrrd

        header = nrrd.read_header(str(path))
        if "space origin" not in header or "space directions" not in header:
            return _nrrd_without_geometry(path, header)
    if by_itk:
        kind = "DICOM (.dcm)" if path.is_dir() or name.endswith(".dcm") else "MetaImage (.mha, .mhd)"
        try:
            import itk  # noqa: F401 - MONAI's ITKReader needs it
        except ImportError as err:
            if err.name == "itk":
                raise DataError(
                    f"{path}: {kind} is read by ITK, which is not installed: pip install "
                    "'superdiffusion[itk]' (or convert the files to NIfTI)"
                ) from None
            raise DataError(
                f"{path}: {kind} is read by ITK, which is installed but fails to import ({err}); "
                "pip install 'superdiffusion[itk]' installs a version that works"
            ) from None
    reader = "NrrdReader" if name.endswith(NRRD_SUFFIXES) else "ITKReader" if by_itk else "NibabelReader"
    image, meta = LoadImage(image_only=False, reader=reader, dtype=None)(str(path))
    affine = np.asarray(meta["affine"], dtype=np.float64)
    if affine.shape == (3, 3):  # a 2D file (MetaImage): its plane in a 3D affine, one unit thick
        affine = np.block([[affine[:2, :2], np.zeros((2, 1)), affine[:2, 2:]], [np.zeros((2, 2)), np.eye(2)]])
    return np.asarray(image), affine


def _nrrd_without_geometry(path: Path, header: dict) -> tuple[np.ndarray, np.ndarray]:
    """An NRRD whose header lacks the origin or the directions (MONAI's reader needs both):
    origin 0 and, without directions, unit spacing; a declared LPS space still becomes RAS."""
    import nrrd

    arr, header = nrrd.read(str(path))
    directions = np.asarray(header.get("space directions", np.eye(3)), dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = directions.T if directions.shape == (3, 3) else np.eye(3)
    if header.get("space") in ("left-posterior-superior", "LPS"):
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    return arr, affine


@dataclass
class VolumePair:
    id: str
    image: Path | tuple[Path, ...]  # a tuple: one file per channel (nnU-Net's CASE_0000, CASE_0001, ...)
    label: Path | None
    split: str = "train"
    columns: dict[str, str] = field(default_factory=dict)  # split.csv's other columns (subject, ...)


def layout_volumes(layout, root: Path) -> list[VolumePair]:
    """The cases of an nnU-Net or MSD folder of volumes (see :mod:`.layouts`); an nnU-Net case
    without a label in ``labelsTr`` has none (an unlabeled training volume)."""
    pairs = [VolumePair(c.id, tuple(c.images) if len(c.images) > 1 else c.images[0], c.label) for c in layout.cases]
    read_columns(pairs, root / "split.csv")
    return pairs


LABEL_WORDS = {"seg", "segmentation", "label", "labels", "mask", "gt", "groundtruth"}  # a case folder's label


def _volume_files(folder: Path) -> list[Path]:
    """A folder's volume files other than HDF5 and ``.npz`` (which hold image and label
    together), in order; its TIFFs when they are stacks (:func:`_stacks`)."""
    stacks, others = _stacks([p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")])
    return sorted([*stacks, *(p for p in others if is_volume(p) and not is_container(p))])


def is_label_name(path: Path) -> bool:
    """Whether a file in a case folder is its label: a word of its name is ``seg``, ``label``,
    ``mask``, ``gt`` ... (KiTS' ``segmentation.nii.gz``, BraTS' ``CASE_seg.nii.gz``)."""
    return bool(LABEL_WORDS & set(re.split(r"[_\-. ]+", volume_stem(path).lower())))


def case_folder(folder: Path) -> tuple[tuple[Path, ...], Path | None]:
    """A folder holding one case: its image files (one a channel, in name order) and its label
    file (None when it has none)."""
    files = _volume_files(folder)
    labels = [p for p in files if is_label_name(p)]
    if len(labels) > 1:
        raise DataError(f"{folder}: holds {len(labels)} label volumes ({', '.join(p.name for p in labels)}); keep one")
    images = tuple(p for p in files if p not in labels)
    if not images:
        raise DataError(f"{folder}: no image volume beside {labels[0].name}")
    return images, labels[0] if labels else None


CASE_DEPTH = 4  # how far below the root a case folder is looked for (BIDS: sub-01/ses-1/anat/)


def case_folders(root: Path) -> list[Path]:
    """The subfolders of ``root`` that hold volume files, one folder per case; where none does,
    the first folders down each branch that do, at most :data:`CASE_DEPTH` levels down (BIDS'
    ``sub-01/ses-1/anat/``). Never entered through a link; a dataset's own folders (``images/``,
    ``labels/`` ...) are not cases."""
    from .dataset import ROLE_FOLDERS

    def deeper(folder: Path) -> bool:  # a folder a case may be kept below
        return not folder.is_symlink() and folder.name.lower() not in ROLE_FOLDERS and not is_series(folder)

    def below(folder: Path, depth: int) -> list[Path]:
        found = []
        for d in sorted(folder.iterdir()):
            if not d.is_dir() or d.name.startswith(".") or not deeper(d):
                continue
            if _volume_files(d):
                found.append(d)
            elif depth > 1:
                found += below(d, depth - 1)
        return found

    subfolders = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    holding = [d for d in subfolders if _volume_files(d)]
    if holding:
        return holding
    return [case for d in subfolders if deeper(d) for case in below(d, CASE_DEPTH - 1)]


def _roles(images: tuple[Path, ...], case: str) -> list[str]:
    """What each image of a case folder is, its name less the case's (``flair``, ``t1``,
    ``imaging``); for a case kept deeper (``sub-01/ses-1/anat``), less each of its folders' names
    where the name starts with them (``sub-01_ses-1_T1w``: ``T1w``)."""
    roles = []
    for p in images:
        role = volume_stem(p)
        for part in case.split("/"):
            if role.startswith(part) and len(role) > len(part):
                role = role.removeprefix(part).lstrip("_-. ")
        roles.append(role or volume_stem(p))
    return roles


TRAILING_NUMBER = re.compile(r"(\d+)$")


def _unlabeled_words(path: Path) -> tuple[str, ...]:
    return tuple(w for w in re.split(r"[_\-. ]+", volume_stem(path).lower()) if w not in LABEL_WORDS)


def pair_labels(files: list[Path]) -> list[tuple[Path, Path]]:
    """The (image, label) pairs of a folder holding several labeled volumes: each label with the
    image named as it less its label word (ACDC's ``patient001_frame01_gt`` with
    ``patient001_frame01``), else with the one image ending in the label's number (LiTS'
    ``segmentation-0`` with ``volume-0``). Images without a label (ACDC's 4D cine) are left out."""
    labels = [p for p in files if is_label_name(p)]
    images = [p for p in files if p not in labels]
    by_words = {_unlabeled_words(p): p for p in images}
    by_number: dict[int, list[Path]] = {}
    for path in images:
        if match := TRAILING_NUMBER.search(volume_stem(path)):
            by_number.setdefault(int(match[1]), []).append(path)
    pairs, taken = [], {}
    for label in labels:
        image = by_words.get(_unlabeled_words(label))
        number = TRAILING_NUMBER.search(volume_stem(label))
        if image is None and number and len(by_number.get(int(number[1]), [])) == 1:
            image = by_number[int(number[1])][0]
        if image is None:
            raise DataError(
                f"{label}: no image volume pairs with this label (one named as it less its label word, or ending in "
                "its number)"
            )
        if image in taken:
            raise DataError(f"{label}: pairs with {image.name}, as {taken[image].name} does; keep one")
        taken[image] = label
        pairs.append((image, label))
    return pairs


def folder_cases(folder: Path) -> list[Path | tuple[Path, ...]]:
    """The images of a case folder (:func:`case_folder`; one tuple of several channels), or of
    each labeled volume of a folder holding several (:func:`pair_labels`)."""
    files = _volume_files(folder)
    if sum(map(is_label_name, files)) > 1:
        return [image for image, _ in pair_labels(files)]
    images = case_folder(folder)[0]
    return [images if len(images) > 1 else images[0]]


def _scan_case_folders(root: Path, folders: list[Path]) -> list[VolumePair]:
    """The cases of case folders; one kept deeper (``sub-01/ses-1/anat``) is named by its path
    and grouped by its first folder (the subject), as a folder of several labeled volumes groups
    them."""
    pairs, first = [], None
    for folder in folders:
        files = _volume_files(folder)
        case = folder.relative_to(root).as_posix()
        if sum(map(is_label_name, files)) > 1:  # several labeled volumes of one patient (ACDC's frames)
            pairs += [
                VolumePair(f"{case}/{volume_stem(image)}", image, label, columns={"case": case.split("/")[0]})
                for image, label in pair_labels(files)
            ]
            continue
        images, label = case_folder(folder)  # no label: an unlabeled case
        roles = _roles(images, case)
        if first is None:
            first = roles
        elif roles != first:
            raise DataError(f"{folder}: holds the images {roles}; the first case {first}")
        subject = {"case": case.split("/")[0]} if "/" in case else {}
        pairs.append(VolumePair(case, images if len(images) > 1 else images[0], label, columns=subject))
    if pairs and all(p.label is None for p in pairs):
        first = folders[0]
        raise DataError(
            f"{first}: no label volume (a file named like segmentation, CASE_seg, label or mask) beside "
            f"{case_folder(first)[0][0].name}, nor in any case folder of {root}"
        )
    return pairs


def volumes_in(folder: Path, containers: bool = False) -> dict[str, Path]:
    """The volume files and DICOM series of ``folder`` and of its subfolders one a patient
    (``images/patient007/scan0.nii.gz``; never entered through a link), by id: the name less its
    suffix, after its subfolder (``patient007/scan0``). HDF5 and ``.npz`` files only with
    ``containers``."""
    found: dict[str, Path] = {}

    def add(path: Path, key: str) -> None:
        if key in found:
            raise DataError(f"{path}: shares the id {key!r} with {found[key].name}")
        found[key] = path

    def one(path: Path) -> bool:  # a volume: a file (a container only with ``containers``), or a series
        return is_series(path) or (path.is_file() and is_volume(path) and (containers or not is_container(path)))

    for path in (p for p in sorted(folder.iterdir()) if not p.name.startswith(".")):
        if one(path):
            add(path, volume_stem(path))
        elif path.is_dir() and not path.is_symlink():
            for inner in (p for p in sorted(path.iterdir()) if not p.name.startswith(".") and one(p)):
                add(inner, f"{path.name}/{volume_stem(inner)}")
    return found


def scan_volumes(root: str | Path, masks: str | None = None) -> list[VolumePair]:
    """The volume pairs of a dataset folder; ``masks``: the folder of labels (``data.masks``), when
    it is not ``labels/`` or ``masks/``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    pairs: list[VolumePair] = []
    images_dir = root / "images"
    by_case = case_folders(root) if not images_dir.is_dir() else []
    if by_case:  # one folder per case (KiTS, BraTS): images and label side by side
        pairs = _scan_case_folders(root, by_case)
    elif images_dir.is_dir() and (images := volumes_in(images_dir)):
        labels_dir = root / masks if masks is not None else mask_folder(root)
        if masks is not None and not labels_dir.is_dir():
            raise DataError(f"{labels_dir}: data.masks names no folder of {root}")
        if labels_dir is None:
            raise DataError(f"{root}: no labels/ (or masks/) folder beside images/")
        labels = volumes_in(labels_dir, containers=True)
        if not labels:
            raise DataError(f"{labels_dir}: no label volumes")
        for key, path in images.items():  # no label: an unlabeled volume; a patient's folder groups its volumes
            folder = {"folder": key.rpartition("/")[0]} if "/" in key else {}
            pairs.append(VolumePair(key, path, labels.pop(key, None), columns=folder))
        if labels:
            orphan = sorted(labels.values())[0]
            raise DataError(f"{orphan}: label without an image ({len(labels)} such labels)")
    elif (flat := _volume_files(root)) and any(map(is_label_name, flat)):  # LiTS: volume-0 + segmentation-0
        pairs = [VolumePair(volume_stem(image), image, label) for image, label in pair_labels(flat)]
    else:  # HDF5 volumes in the folder, else in its subfolders (a case folder's mri_norm2.h5), never through a link
        below = [p for d in sorted(root.iterdir()) if d.is_dir() and not d.is_symlink() for p in sorted(d.iterdir())]
        files = [p for p in sorted(root.iterdir()) if is_container(p)] or [p for p in below if is_container(p)]
        for path in files:
            case = volume_stem(path) if path.parent == root or path.parent.name == "images" else path.parent.name
            pairs.append(VolumePair(case, path, path))
    if not pairs:
        raise DataError(
            f"{root}: no volumes (images/ + labels/ of NIfTI, NRRD or MetaImage files, one folder per case, or HDF5 "
            "files)"
        )
    read_columns(pairs, root / "split.csv")
    return pairs


def load_volume_pair(
    pair: VolumePair, cfg: DataConfig, labels: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None, Volume]:
    """Image ``(C, H, W, D)`` float32, each channel normalised per volume (but under ``zscore``,
    whose training-set statistics :func:`~superdiffusion.data.normalize` applies after), and labels
    ``(H, W, D)`` class indices checked against the declared classes, held by :func:`compact_mask` (None
    when ``labels`` is False)."""
    files = pair.image if isinstance(pair.image, tuple) else (pair.image,)
    read = [(path, channel) for path in files for channel in read_channels(path)]  # a 4D file: its modalities
    files, channels = tuple(path for path, _ in read), [channel for _, channel in read]
    for path, channel in zip(files, channels):
        if channel.array.dtype.kind == "f":
            check_finite(channel.array, path)
    image = channels[0]  # its geometry is the case's
    for path, channel in zip(files[1:], channels[1:]):
        if channel.array.shape != image.array.shape:
            raise DataError(f"{path}: shape {channel.array.shape} differs from its first channel {image.array.shape}")
    img = torch.stack([_normalize(torch.from_numpy(c.array.astype(np.float32)), cfg.normalize) for c in channels])
    if not labels:
        return img, None, image
    label = read_volume(pair.label, "label")
    if image.array.shape != label.array.shape:
        raise DataError(f"{pair.label}: label shape {label.array.shape} differs from its image {image.array.shape}")
    if not np.allclose(image.affine, label.affine, rtol=AFFINE_TOLERANCE, atol=AFFINE_TOLERANCE):
        gap = float(np.abs(image.affine - label.affine).max())
        raise DataError(
            f"{pair.label}: its affine differs from its image's by up to {gap:.4g} (mm or direction): the label "
            "does not lie on the image; resample it onto the image's grid"
        )
    lab = label.array
    if cfg.mask_mode not in ("binary", "threshold", "index"):
        raise DataError(f"data.mask_mode must be binary, threshold or index, got {cfg.mask_mode!r}")
    if cfg.mask_mode == "threshold":
        cut = 0.5 if cfg.mask_threshold is None else cfg.mask_threshold  # resampled 0/1 labels by default
        lab = (lab >= cut).astype(np.int64)
    if lab.dtype.kind == "f":
        if not np.all(np.equal(np.mod(lab, 1), 0)):
            raise DataError(
                f"{pair.label}: label volume has non-integer values (resampled labels: data.mask_mode=threshold)"
            )
    lab = lab.astype(np.int64)
    if cfg.mask_mode == "index" and cfg.mask_values is not None:
        lab = classes_of(lab, cfg.mask_values, pair.label)
    values = np.unique(lab)
    if cfg.mask_mode == "binary":
        lab = (lab > 0).astype(np.int64)
    elif values.min() < 0 or values.max() >= cfg.num_classes:
        raise DataError(
            f"{pair.label}: label values {values.tolist()[:8]} outside the classes 0..{cfg.num_classes - 1}"
        )
    return img, compact_mask(lab), image


def _normalize(img: torch.Tensor, mode: str) -> torch.Tensor:
    """The per-volume part of ``data.normalize``. ``percentile``: clip to the volume's 0.5 and
    99.5 percentiles, then map linearly to [-1, 1] (bounded: the range of the diffusion
    pathways); ``minmax``: min..max to [-1, 1]; ``per_image``: the volume's own z-score;
    ``zscore``: unchanged here (the training set's mean and std are applied afterwards)."""
    if mode == "zscore":
        return img
    if mode in PER_IMAGE_MODES:
        return normalize_each(img[None, None], mode)[0, 0]
    if mode == "minmax":
        low, high = img.min(), img.max()
        return (img - low) / (high - low).clamp_min(1e-6) * 2 - 1
    raise DataError(f"data.normalize must be percentile, minmax, per_image or zscore for volumes, got {mode!r}")


def check_unique_ids(pairs: list[VolumePair], root: Path) -> None:
    """One line when two cases share an id (the data folder and ``data.unlabeled_root`` may)."""
    seen: dict[str, VolumePair] = {}
    for pair in pairs:
        if pair.id in seen:
            first = seen[pair.id].image
            raise DataError(
                f"{pair.image if not isinstance(pair.image, tuple) else pair.image[0]}: shares the case id "
                f"{pair.id!r} with {first if not isinstance(first, tuple) else first[0]}; rename one of them"
            )
        seen[pair.id] = pair


def _bytes_held(pair: VolumePair) -> int:
    """The memory a case takes once loaded: float32 channels and one-byte labels, from the headers."""
    files = pair.image if isinstance(pair.image, tuple) else (pair.image,)
    # each file's declared size checked on its own first (named), then the dataset's total
    shapes = [check_declared_size(Path(path)) or stored_shape(Path(path)) for path in files]
    voxels = int(np.prod(shapes[0][:3])) if shapes and len(shapes[0]) >= 3 else 0
    channels = sum(int(np.prod(shape[3:])) if len(shape) > 3 else 1 for shape in shapes)
    return voxels * (4 * channels + 1)


def unlabeled_volumes(root: Path) -> list[VolumePair]:
    """The volumes of a folder of unlabeled ones (``data.unlabeled_root``): its ``images/``, or
    the folder itself, each a training volume without a label."""
    if not root.is_dir():
        raise DataError(f"{root}: data.unlabeled_root names no folder")
    folder = root / "images" if (root / "images").is_dir() else root
    found = volumes_in(folder)
    if not found:
        raise DataError(f"{root}: data.unlabeled_root holds no volumes (NIfTI, NRRD, MetaImage or TIFF stacks)")
    return [VolumePair(key, path, None) for key, path in found.items()]


def build_volume_data(cfg: DataConfig, seed: int, validation: bool = True, layout=None, recorded=None):
    """Scan, check, load and split a dataset of volumes (as :func:`~superdiffusion.data.build_data`
    does for 2D images); the volumes without a label, beside the others or in
    ``data.unlabeled_root``, train as unlabeled volumes."""
    root = resolve_root(cfg.root)
    pairs = layout_volumes(layout, root) if layout is not None else scan_volumes(root, cfg.masks)
    check_inside(pairs, root)
    if cfg.unlabeled_root:
        extra = unlabeled_volumes(resolve_root(cfg.unlabeled_root))
        check_inside(extra, resolve_root(cfg.unlabeled_root))
        pairs += extra
    check_unique_ids(pairs, root)
    pairs, unmasked = set_aside_unlabeled(pairs, volumes=True)
    by, grouped_by = assign_splits(pairs, cfg, seed, validation, recorded, unmasked)
    unmasked = unlabeled_as_recorded(unmasked, recorded)
    labeled_ids, unlabeled_ids = choose_labeled([p.id for p in by["train"]], cfg, seed, recorded)
    used = [p for group in by.values() for p in group] + unmasked
    check_memory(root, len(used), sum(_bytes_held(p) for p in used), "volumes")

    def make(name: str, keep: set[str] | None = None) -> Split:
        group = [p for p in by[name] if keep is None or p.id in keep]
        loaded = [load_volume_pair(p, cfg) for p in group]
        split = Split(
            [x[0] for x in loaded],
            [x[1] for x in loaded],
            [p.id for p in group],
            group,
            [tuple(x[1].shape) for x in loaded],
        )
        channels.update(x[0].shape[0] for x in loaded)
        split.geometry = [x[2] for x in loaded]
        for v in split.geometry:
            v.array = None  # keep affine and spacing only
        return split

    channels: set[int] = set()
    unlabeled = make("train", set(unlabeled_ids))
    hidden = Split(list(unlabeled.images), unlabeled.masks, list(unlabeled.ids)) if len(unlabeled) else None
    unlabeled.masks = None
    if unmasked:
        loaded = [load_volume_pair(p, cfg, labels=False) for p in unmasked]
        unlabeled.extend([x[0] for x in loaded], [p.id for p in unmasked])
        unlabeled.pairs = unlabeled.pairs + unmasked
        unlabeled.geometry = unlabeled.geometry + [x[2] for x in loaded]
        for _, _, volume in loaded:
            volume.array = None  # keep affine and spacing only
        channels.update(x[0].shape[0] for x in loaded)
    splits = {"labeled": make("train", set(labeled_ids)), "val": make("val"), "test": make("test")}
    every = [(p, v) for s in (*splits.values(), unlabeled) for p, v in zip(s.pairs, s.geometry)]
    no_spacing = [p for p, v in every if v.spacing_missing]
    if no_spacing:
        first = no_spacing[0].image
        LOG.warning(
            "data: %d of %d volumes have no voxel spacing in their header (first: %s); read as 1 mm, so their "
            "HD95 and ASD are in voxels",
            len(no_spacing),
            len(every),
            (first[0] if isinstance(first, tuple) else first).name,
        )
    if len(channels) > 1:
        raise DataError(f"{root}: cases have different channel counts {sorted(channels)}")
    (count,) = channels
    training = splits["labeled"].images + unlabeled.images
    stats = dataset_stats(training, cfg.normalize if cfg.normalize == "zscore" else IDENTITY)
    for split in (*splits.values(), unlabeled) if cfg.normalize == "zscore" else ():
        split.images = [normalize(image[None], stats)[0] for image in split.images]
    if hidden is not None:  # the unlabeled volumes as the networks see them (their first, masked, ones)
        hidden.images = unlabeled.images[: len(hidden)]
    return SegmentationData(
        labeled=splits["labeled"],
        unlabeled=unlabeled,
        val=splits["val"],
        test=splits["test"],
        channels=count,
        num_classes=cfg.num_classes,
        spatial_dims=3,
        stats=stats,
        grouped_by=grouped_by,
        hidden=hidden,
    )
