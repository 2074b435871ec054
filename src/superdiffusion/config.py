"""Run configuration: typed, validated sections, YAML files and ``key=value`` overrides.

Resolution order (later wins): the defaults below, the profile YAML, the dataset YAML, the
method's own defaults (its settings class in :mod:`.method_settings`), the profile's settings
for that method, a user ``--config`` file, then command-line ``section.key=value`` overrides.
The layers are merged first and validated once, so every setting of a run, of every point of
a sweep and of a resume is checked before anything runs; an error names the layer that gave
the value. Every run writes the resolved result to ``config.yaml`` in its folder.
"""

from __future__ import annotations

import logging
import re
import typing
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    model_validator,
)

from .errors import ConfigError
from .method_settings import SETTINGS, AnyMethodSettings, SuperDiffusionSettings


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)


class DataConfig(Section):
    # names the default run folder runs/NAME/...: letters, digits, '.', '_' and '-', not first '.'
    name: str = "ph2"
    root: str = "builtin:ph2_128"  # folder with images/ + masks/ or labels/ (+ split.csv), or builtin:NAME
    spatial_dims: Literal[2, 3] = 2  # 2: images; 3: volumes (NIfTI, NRRD, HDF5)
    # 2D: resize every image to (H, W), as the paper does; null: keep each image's own size and
    # train on random patch_size patches, predicted by sliding windows (large images, thin structures)
    size: list[PositiveInt] | None = Field(default_factory=lambda: [128, 128])
    patch_size: list[PositiveInt] = Field(
        default_factory=lambda: [96, 96, 80]
    )  # training patches: volumes, or 2D with size null
    num_classes: int = Field(2, ge=2)  # background included: 2 for a binary task
    # binary: 0 is background and one other value foreground (2D; more values are refused, as a
    # lossy mask would be; volumes: every non-zero label is foreground); threshold: foreground
    # where value >= mask_threshold (JPEG or resampled masks); index: values are classes
    mask_mode: Literal["binary", "threshold", "index"] = "binary"
    mask_threshold: float | None = None  # threshold mode; None: half the range (128 for 8-bit masks)
    # index masks that draw each class as a grey value (0, 128, 255, say) or a colour ("#ff0000"):
    # the value of each class, class 0 first; null: the values are the class indices
    mask_values: list[NonNegativeInt] | list[Annotated[str, StringConstraints(pattern=r"^#[0-9a-fA-F]{6}$")]] | None = (
        None
    )
    # one vocabulary for 2D images and volumes. zscore: the training images' channel mean and
    # std (2D and volumes alike; unbounded). minmax: the intensity range to [-1, 1] (2D: the file
    # type's range, 0..255 for 8 bits; volumes: each volume's min..max). Each image on its own:
    # percentile (clip to the image's 0.5-99.5 percentiles, then [-1, 1]; for images that use a
    # small part of their type's range, e.g. 16-bit) and per_image (the image's own mean and
    # std; unbounded). The paper's method refuses unbounded ranges: its
    # diffusion pathways work in [-1, 1]
    normalize: Literal["minmax", "percentile", "zscore", "per_image"] = "minmax"
    labeled_percent: float = Field(
        10.0, gt=0, le=100
    )  # share of the training images whose masks are used (seeded draw)
    val_fraction: float = Field(0.1, ge=0, lt=1)  # carved from train (seeded) when split.csv has no 'val' rows
    test_fraction: float = Field(0.2, gt=0, lt=1)  # used only when the folder has no split.csv
    # the split.csv column naming each image's subject (patient, animal, volume, ...): a carved
    # validation or test split then holds out whole subjects, so that neighbouring frames or
    # slices of one subject never sit on both sides. "auto": the first of group, subject,
    # subject_id, patient, patient_id, case that split.csv has, else the subfolder (10 or more), else
    # the series the names number (patient001_slice_03: 10 or more), else image by image; null: image by image
    group_column: str | None = "auto"
    unlabeled_root: str | None = None  # extra folder of images without masks
    # the folder of masks (or labels), relative to data.root and to each of its train/, val/, test/
    # folders: for a folder where two could be (DRIVE's 1st_manual/ beside its field-of-view mask/);
    # or, for masks kept beside their images, the tag after the image's name (CHASE_DB1's _1stHO);
    # null: masks/ or labels/, else the one folder whose files pair with the images by name
    masks: str | None = None
    # a file of training image ids to label (one per line, or a CSV with an id column, as
    # `superdiffusion suggest` writes); replaces the seeded labeled_percent draw
    labeled_ids: str | None = None
    # train with a data.root folder (and no dataset= preset): the data settings the user did not give
    # (size or patches, normalisation, mask mode, classes, subject column, name) are planned from the
    # folder's fingerprint (`superdiffusion plan DATA` shows them, with their reasons); false: the defaults
    plan: bool = True

    @model_validator(mode="after")
    def _dimensions(self) -> DataConfig:
        if self.masks is not None and (
            not self.masks.strip() or Path(self.masks).is_absolute() or ".." in Path(self.masks).parts
        ):
            raise ValueError(f"data.masks names a folder inside data.root (no '..', not absolute); got {self.masks!r}")
        if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}", self.name):
            raise ValueError(
                f"data.name names the run folder runs/NAME/: letters, digits, '.', '_' and '-' only, not first '.' "
                f"(no path separators); got {self.name[:60]!r}"
            )
        if self.spatial_dims == 2 and self.size is not None and len(self.size) != 2:
            raise ValueError(f"data.size must be [H, W] for 2D data (or null: native resolution), got {self.size}")
        if self.spatial_dims == 2 and self.size is None and len(self.patch_size) != 2:
            raise ValueError(
                f"data.size=null trains on 2D patches at native resolution: set data.patch_size=[H, W] (got {self.patch_size})"
            )
        if self.spatial_dims == 3 and len(self.patch_size) != 3:
            raise ValueError(f"data.patch_size must be [H, W, D] for volumes, got {self.patch_size}")
        if self.mask_values is not None:
            if self.mask_mode != "index":
                raise ValueError(f"data.mask_values names the value of each class: it needs data.mask_mode=index "
                                 f"(got {self.mask_mode})")  # fmt: skip
            if len(self.mask_values) != self.num_classes or len({str(v).lower() for v in self.mask_values}) != len(
                self.mask_values
            ):
                raise ValueError(f"data.mask_values needs {self.num_classes} distinct values, one per class "
                                 f"(data.num_classes), got {self.mask_values}")  # fmt: skip
        return self


class ModelConfig(Section):
    features: list[PositiveInt] = Field(
        default_factory=lambda: [16, 32, 64, 128, 256], min_length=2
    )  # UNet channels per level
    norm: Literal["batch", "instance", "group"] = "batch"  # the UNet's normalisation layers
    dropout: float = Field(0.0, ge=0, lt=1)  # UNet dropout (> 0 also gives MC-dropout uncertainty)
    # recompute activations in backward: less memory (3D), ~1/3 more time; with batch norm the
    # running statistics then see each batch twice
    checkpointing: bool = False
    channels_last: bool = True  # 2D only: NHWC memory format, faster convolutions on CPU and GPU


class TrainConfig(Section):
    epochs: int = Field(200, ge=1)  # training epochs (the paper: 200); profiles set their own length
    batch_size: int = Field(8, ge=1)  # images per update, labeled and unlabeled together
    labeled_batch_size: int = Field(4, ge=1)  # labeled items in each batch while unlabeled ones exist
    lr: float = Field(0.01, ge=0)  # Adam's learning rate
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.99], min_length=2, max_length=2)  # Adam's betas
    weight_decay: float = Field(5e-5, ge=0)  # Adam's L2 weight decay
    lr_step: int = Field(50, ge=1)  # the lr is multiplied by lr_gamma every lr_step epochs
    lr_gamma: float = Field(0.1, gt=0)  # the factor of each lr step
    seed: int = Field(0, ge=0, le=2**32 - 1)  # the labeled subset, the carved validation split, weights, batches, noise
    eval_every: int = Field(1, ge=1)  # epochs between scorings of the selection split
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")  # auto: a GPU when there is one
    threads: int = Field(0, ge=0)  # 0: torch's default
    amp: bool = False  # bf16 autocast on CUDA only (slower than fp32 on CPUs without AVX-512)
    # The run length in updates is epochs x steps_per_epoch, whatever the dataset size (as
    # nnU-Net's fixed iterations per epoch). 0: one pass over the training images per epoch
    # (the paper's epoch: the length then shrinks with the dataset).
    steps_per_epoch: int = Field(50, ge=0)
    # a finished run keeps model.pt (the segmenter, about 8 MB) and drops its training state
    # (checkpoints/: every network plus Adam's moments); true keeps last.pt and best.pt so that
    # the run can be resumed with more epochs
    keep_state: bool = False


class EvalConfig(Section):
    protocol: Literal["honest", "paper"] = "honest"  # honest: choose on validation; paper: on test (Table 1)
    # the grid of foreground thresholds searched on the selection split (binary tasks): the paper's 0..0.9, step 0.02
    threshold_start: float = Field(0.0, ge=0, lt=1)
    threshold_stop: float = Field(0.9, gt=0, lt=1)  # the last threshold of the grid
    threshold_step: float = Field(0.02, gt=0)  # the grid's step
    samples: int = Field(1, ge=1)  # noise draws averaged at inference (diffusion methods)
    inference_t: int = Field(999, ge=0)  # diffusion step of the pure-noise mask at inference
    batch_size: int = Field(16, ge=1)  # images (or sliding windows) per forward pass at inference
    sw_overlap: float = Field(0.5, ge=0, lt=1)  # sliding-window overlap for volumes
    # score, every evaluated epoch, the unlabeled training images against the masks the label regime hides
    # (benchmarks: the student's targets, its prediction and the teacher's); no update ever reads them
    hidden_labels: bool = False
    hidden_max: int = Field(64, ge=1)  # at most this many unlabeled images scored (evenly spread)


UNBOUNDED_NORMALIZATION = ("zscore", "per_image")


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    # where each given setting came from ("section.key" -> "profile cpu", "command line", ...);
    # a setting no layer gave is its class's default. Filled by build(); not saved.
    _origins: dict[str, str] = PrivateAttr(default_factory=dict)

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: AnyMethodSettings = Field(default_factory=SuperDiffusionSettings)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _across_sections(self) -> Config:
        if isinstance(self.method, SuperDiffusionSettings):
            if self.data.normalize in UNBOUNDED_NORMALIZATION:
                raise ValueError(
                    f"method superdiffusion: data.normalize={self.data.normalize} gives unbounded intensities, but "
                    "the diffusion pathways work in [-1, 1]; use data.normalize=minmax (2D) or percentile (volumes)"
                )
            if self.eval.inference_t >= self.method.timesteps:
                raise ValueError(
                    f"eval.inference_t={self.eval.inference_t} is outside the {self.method.timesteps} diffusion steps"
                )
        if self.eval.threshold_start >= self.eval.threshold_stop:
            raise ValueError("eval.threshold_start must be below eval.threshold_stop")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def origin(self, key: str) -> str:
        """Which layer set ``section.key``: "profile cpu", "dataset pupil", "command line", a
        config file, "plan", or "default" (the settings class's own value)."""
        return self._origins.get(key, "default")


SECTIONS = tuple(Config.model_fields)


def _models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def _holds_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list or any(_holds_list(a) for a in typing.get_args(annotation))


def list_valued(key: str) -> bool:
    """Whether the setting ``section.key`` holds a list (``data.size``, ``train.betas``, a
    method's list settings), as its field type says (for ``method.*``: in any method's settings)."""
    section, _, name = key.partition(".")
    field = Config.model_fields.get(section)
    models = _models(field.annotation) if field is not None else []
    return any(name in m.model_fields and _holds_list(m.model_fields[name].annotation) for m in models)


def builtin_config(kind: str, name: str) -> Path:
    """Path of a YAML shipped with the package (``kind`` is datasets or profiles)."""
    path = Path(str(resources.files("superdiffusion") / "configs" / kind / f"{name}.yaml"))
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"no {kind[:-1]} config named {name!r}; available: {', '.join(available)}")
    return path


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (a YAML config is UTF-8 text)") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: expected a mapping of sections")
    return content


DEFAULT_PROFILE = "cpu"
PRESETS = ("dataset", "method", "profile")


def _command_line_value(text: str) -> Any:
    """A command-line value: lists, mappings, null, numbers and true/false are read as YAML;
    anything else stays text, which the typed field then reads (``1e-1`` for a float)."""
    stripped = text.strip()
    try:
        value = yaml.safe_load(stripped) if stripped else text
    except yaml.YAMLError as err:
        if stripped[:1] in "[{":
            raise ConfigError(f"cannot parse {text!r}: {err}") from None
        return text
    if value is None or isinstance(value, (list, dict, int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, bool) and stripped.lower() in ("true", "false"):
        return value
    return text  # e.g. "yes" stays text: YAML 1.1 would read it as true


def parse_overrides(items: list[str]) -> tuple[dict[str, str], dict[str, Any]]:
    """Split ``dataset=ph2 method=cps train.epochs=5`` into presets and nested overrides."""
    presets: dict[str, str] = {}
    nested: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        if key in PRESETS:
            presets[key] = value
            continue
        if "." not in key:
            raise ConfigError(f"override {item!r}: use section.key=value (sections: {', '.join(SECTIONS)})")
        section, sub = key.split(".", 1)
        nested.setdefault(section, {})[sub] = _command_line_value(value)
    return presets, nested


def _preset_file(kind: str, value: str) -> Path:
    return Path(value) if value.endswith((".yaml", ".yml")) else builtin_config(kind, value)


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, mapping by mapping."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_profile(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A profile's settings: its YAML on top of the profile it names in ``extends`` (so that a
    setting two profiles share has one owner)."""
    if name in seen:
        raise ConfigError(f"profile {name}: extends itself ({' -> '.join((*seen, name))})")
    content = dict(load_yaml(_preset_file("profiles", name)))
    base = content.pop("extends", None)
    if base is None:
        return content
    if not isinstance(base, str):
        raise ConfigError(f"profile {name}: extends must name one profile, got {base!r}")
    return _merged(load_profile(base, (*seen, name)), content)


Layer = tuple[str, dict[str, Any]]  # (where the values come from, {section: {key: value}})


def _normal_layer(origin: str, content: dict[str, Any]) -> Layer:
    """Check a layer's shape; fold ``method.params`` (older configs) into the method section."""
    out: dict[str, Any] = {}
    for section, values in (content or {}).items():
        if section not in SECTIONS:
            raise ConfigError(f"{origin}: unknown section {section!r}; sections: {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: section {section!r} must be a mapping")
        values = dict(values)
        if section == "method" and isinstance(values.get("params"), dict):
            values = {**values.pop("params"), **values}
        out[section] = values
    for (section, old), (_, new) in LEGACY_KEYS.items():
        if old in out.get(section, {}):
            out[section].setdefault(new, out[section].pop(old))
    return origin, out


def build(layers: list[Layer]) -> Config:
    """Merge ``layers`` (later wins, key by key) and validate the result once; an invalid or
    unknown setting raises one :class:`ConfigError` line naming the layer that gave it."""
    merged: dict[str, dict[str, Any]] = {}
    origins: dict[tuple[str, str], str] = {}
    for origin, content in layers:
        for section, values in content.items():
            if section == "method" and "name" in values and values["name"] != merged.get("method", {}).get("name"):
                merged["method"] = {}  # another method: the earlier layers' settings were for the previous one
            merged.setdefault(section, {}).update(values)
            origins.update({(section, key): origin for key in values})
    try:
        cfg = Config.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_explain(err, merged, origins)) from None
    given = {(s, k) for s, values in merged.items() for k in values}
    cfg._origins = {f"{s}.{k}": origin for (s, k), origin in origins.items() if (s, k) in given}
    return cfg


def _explain(err: ValidationError, merged: dict[str, Any], origins: dict[tuple[str, str], str]) -> str:
    """The first error of ``err`` as one line, e.g. ``command line: unknown setting 'round' of
    method superdiffusion; its settings: ...``."""
    e = err.errors()[0]
    loc = [str(part) for part in e["loc"]]
    section = loc[0] if loc else ""
    if section == "method" and len(loc) > 1 and loc[1] in SETTINGS:
        loc = [section, *loc[2:]]  # drop the union's tag
    key = loc[1] if len(loc) > 1 else ""
    origin = origins.get((section, key), "invalid settings")
    if e["type"] == "union_tag_invalid":
        name = merged.get("method", {}).get("name")
        return f"{origins.get(('method', 'name'), origin)}: unknown method {name!r}; available: {', '.join(SETTINGS)}"
    if e["type"] == "extra_forbidden":
        if section == "method":
            name = merged["method"].get("name", "superdiffusion")
            valid = ", ".join(sorted(SETTINGS[name].model_fields)) if name in SETTINGS else ""
            return f"{origin}: unknown setting {key!r} of method {name}; its settings: {valid}"
        fields = Config.model_fields[section].annotation.model_fields if section in SECTIONS else {}
        return f"{origin}: unknown key {section}.{key}; keys: {', '.join(sorted(fields))}"
    if e["type"] == "value_error":  # a check across settings: its message names them
        return f"{origin}: {str(e['msg']).removeprefix('Value error, ')}"
    where = ".".join(loc)
    if e["type"] == "literal_error":
        choices = str(e.get("ctx", {}).get("expected", "")).replace("'", "")
        return f"{origin}: {where} must be one of {choices}; got {e['input']!r}"
    return f"{origin}: {where}: {e['msg'].lower()}; got {e['input']!r}"


Planner = Callable[
    [str, set[str], int, "str | None"], "Layer | None"
]  # (data.root, the keys given, batch size, data.masks)


def resolve(
    overrides: list[str] | None = None,
    config_file: str | Path | None = None,
    planner: Planner | None = None,
) -> Config:
    """Build a :class:`Config` from presets, an optional file and ``key=value`` overrides.
    ``planner`` (the command line's: :mod:`superdiffusion.plan`) gives a layer of planned data
    settings for a ``data.root`` folder when no ``dataset=`` preset is named and ``data.plan`` is
    on; it goes after the profile and the presets, before ``--config`` and the command line, which
    therefore always win."""
    presets, nested = parse_overrides(list(overrides or []))
    user = dict(load_yaml(config_file)) if config_file else {}
    presets = {**{k: user.pop(k) for k in PRESETS if k in user}, **presets}
    profile = presets.get("profile", DEFAULT_PROFILE)
    profile_yaml = load_profile(profile)
    per_method = profile_yaml.pop("methods", {}) or {}  # a profile's settings for one method
    layers = [_normal_layer(f"profile {profile}", profile_yaml)]
    if "dataset" in presets:
        dataset = presets["dataset"]
        layers.append(_normal_layer(f"dataset {dataset}", load_yaml(_preset_file("datasets", dataset))))
    method = presets.get("method")
    if method is not None and method.endswith((".yaml", ".yml")):
        layers.append(_normal_layer(f"method file {method}", load_yaml(method)))
    elif method is not None:
        layers.append((f"method={method}", {"method": {"name": method}}))
    user_layer = _normal_layer(str(config_file), user)
    command_line = _normal_layer("command line", nested)
    later = [user_layer, command_line]
    name = next(
        (layer["method"]["name"] for _, layer in reversed(layers + later) if "name" in layer.get("method", {})),
        Config.model_fields["method"].default_factory().name,
    )
    if name in per_method:
        layers.append(_normal_layer(f"profile {profile}", {"method": {"name": name, **per_method[name]}}))
    explicit = [layer.get("method", {}) for _, layer in later]
    cfg = build(layers + later)
    if planner is not None and "dataset" not in presets and cfg.data.plan and not cfg.data.root.startswith("builtin:"):
        given = {f"{section}.{key}" for _, layer in later for section, values in layer.items() for key in values}
        planned = planner(cfg.data.root, given, cfg.train.batch_size, cfg.data.masks)
        if planned is not None:
            cfg = build([*layers, _normal_layer(*planned), *later])
    _refuse_unused(
        cfg, {f"{section}.{key}" for _, layer in later for section, values in layer.items() for key in values}
    )
    _scale_pretraining(cfg, profile, profile_yaml.get("train", {}).get("epochs"))
    if "data.name" not in cfg._origins and not cfg.data.root.startswith("builtin:"):
        cfg.data.name = folder_name(cfg.data.root)  # runs of a user's folder are named after it, planned or not
        cfg._origins["data.name"] = "the data folder's name"
    return _apply_lambda_schedule(cfg, explicit)


def _scale_pretraining(cfg: Config, profile: str, profile_epochs: int | None) -> None:
    """A profile's pretraining length goes with its training length: when another layer (the
    command line, a file, a dataset) sets ``train.epochs``, the profile's
    ``method.pretrain_epochs`` keeps its share of it (at least 1), so that a 2-epoch run of
    the ``cpu`` profile does not pretrain for 4. A value set anywhere else is kept."""
    m = cfg.method
    if not hasattr(m, "pretrain_epochs") or not profile_epochs or m.pretrain_epochs <= 0:
        return
    if not cfg.origin("method.pretrain_epochs").startswith("profile") or cfg.origin("train.epochs").startswith(
        "profile"
    ):
        return
    scaled = max(1, round(m.pretrain_epochs * cfg.train.epochs / profile_epochs))
    if scaled != m.pretrain_epochs:
        cfg._origins["method.pretrain_epochs"] = (
            f"profile {profile}, scaled to train.epochs ({m.pretrain_epochs} of its {profile_epochs})"
        )
        m.pretrain_epochs = scaled


def folder_name(root: str) -> str:
    """A data folder's name as a run name (``data.name``): its letters, digits, '.', '_' and
    '-', the rest as '-'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(root).name).lstrip(".-")[:100] or "data"


def _refuse_unused(cfg: Config, given: set[str]) -> None:
    """A setting the user gave that the others leave without effect stops with one line, rather
    than being dropped in silence."""
    d = cfg.data
    if "data.mask_threshold" in given and d.mask_mode != "threshold":
        raise ConfigError(
            f"data.mask_threshold applies to data.mask_mode=threshold; the masks are read as {d.mask_mode} "
            "(set data.mask_mode=threshold, or drop data.mask_threshold)"
        )
    if "data.size" in given and d.spatial_dims == 3 and d.size is not None:
        raise ConfigError(
            f"data.size={d.size} applies to 2D images; volumes train on data.patch_size patches at their own "
            "resolution (drop data.size, or set data.patch_size)"
        )
    if "data.patch_size" in given and d.spatial_dims == 2 and d.size is not None and len(d.patch_size) == 2:
        # said, not refused: a sweep over data.size=[null, [128, 128]] gives its fixed-size runs the patch too
        logging.getLogger("superdiffusion").warning(
            "data.patch_size=%s is not used: it applies to data.size=null (2D images at native resolution, on "
            "patches), and at data.size=%s whole resized images train",
            d.patch_size,
            d.size,
        )


PAPER_LAMBDA = {"lambda_max": 5.0, "ramp": "linear"}  # Appendix A's reading for every method


def _apply_lambda_schedule(cfg: Config, user_method_sections: list[dict[str, Any]]) -> Config:
    """``method.lambda_schedule=paper`` gives every semi-supervised method the paper's linear
    ramp to 5; it refuses an explicit ``lambda_max`` or ``ramp`` beside it (which would win?)."""
    if cfg.method.lambda_schedule == "reference" or cfg.method.name == "supervised":
        return cfg
    explicit = sorted({k for section in user_method_sections for k in section if k in PAPER_LAMBDA})
    if explicit:
        raise ConfigError(
            f"method.lambda_schedule=paper sets method.lambda_max=5 and method.ramp=linear; "
            f"drop the explicit method.{explicit[0]} or use lambda_schedule=reference"
        )
    cfg.method.lambda_max = PAPER_LAMBDA["lambda_max"]
    cfg.method.ramp = PAPER_LAMBDA["ramp"]
    cfg._origins.update({f"method.{k}": "method.lambda_schedule=paper" for k in PAPER_LAMBDA})
    return cfg


# settings a resumed run may change: its length (the lr steps at train.lr_step and the lambda
# ramp is recomputed over the new length, as if it had been planned from the start) and how
# it runs (threads, device, inference batch); any other change would mix two experiments
RESUMABLE_KEYS = ("train.epochs", "train.threads", "train.device", "train.keep_state", "eval.batch_size")


def flat(cfg: Config) -> dict[str, Any]:
    """``{"section.key": value}`` of every setting, the method's own ones included."""
    return {f"{section}.{key}": value for section, values in cfg.to_dict().items() for key, value in values.items()}


def resume_config(
    saved: Config,
    overrides: list[str] | None = None,
    config_file: str | Path | None = None,
    planner: Planner | None = None,
) -> Config:
    """The settings of a resumed run. A command that names presets (``dataset=``, ``method=``,
    ``profile=``) or a ``--config`` file is resolved in full, as for a new run, with ``planner``
    (the run's recorded plan); one with only ``section.key=value`` overrides (or none) applies
    them to the run's saved settings."""
    presets, nested = parse_overrides(list(overrides or []))
    if presets or config_file:
        return resolve(overrides, config_file, planner)
    cfg = build([("saved config", saved.to_dict()), _normal_layer("command line", nested)])
    return _apply_lambda_schedule(cfg, [nested.get("method") or {}])


LEGACY_KEYS = {("train", "max_steps_per_epoch"): ("train", "steps_per_epoch")}  # older run folders
# settings a run saved before they existed, with the value that run was trained with (not
# today's default): its splits, and so its resume and its evaluation, stay the ones it had
SAVED_BEFORE = {("data", "group_column"): None}


def from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a config saved by :meth:`Config.to_dict` (e.g. from a checkpoint)."""
    origin, layer = _normal_layer("saved config", values)
    for (section, key), value in SAVED_BEFORE.items():
        if section in layer:
            layer[section].setdefault(key, value)
    return build([(origin, layer)])
