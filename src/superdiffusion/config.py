"""Run configuration: typed sections, YAML files and ``key=value`` overrides.

Resolution order (later wins): the defaults below, the profile YAML, the dataset YAML,
the method YAML, a user ``--config`` file, then command-line ``section.key=value``
overrides. Every run writes the resolved result to ``config.yaml`` in its folder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


@dataclass
class DataConfig:
    name: str = "ph2"
    root: str = "builtin:ph2_128"  # folder with images/ + masks/ (+ split.csv), or builtin:NAME
    spatial_dims: int = 2
    size: list[int] = field(default_factory=lambda: [128, 128])  # 2D: resize to (H, W)
    patch_size: list[int] = field(default_factory=lambda: [96, 96, 80])  # 3D training patches
    num_classes: int = 2
    # binary: 0 is background and one other value foreground (2D; more values are refused, as a
    # lossy mask would be; volumes: every non-zero label is foreground); threshold: foreground
    # where value >= mask_threshold (JPEG or resampled masks); index: values are classes
    mask_mode: str = "binary"
    mask_threshold: float | None = None  # threshold mode; None: half the range (128 for 8-bit masks)
    # minmax: 2D [0, max] -> [-1, 1], volumes min..max -> [-1, 1]; percentile (volumes): clip to the
    # 0.5-99.5 percentiles, then [-1, 1]; zscore (per_image for volumes): unbounded, refused by
    # the paper's method, whose diffusion pathways work in [-1, 1]
    normalize: str = "minmax"
    labeled_percent: float = 10.0
    val_fraction: float = 0.1  # carved from train (seeded) when split.csv has no 'val' rows
    test_fraction: float = 0.2  # used only when the folder has no split.csv
    unlabeled_root: str | None = None  # extra folder of images without masks
    # a file of training image ids to label (one per line, or a CSV with an id column, as
    # `superdiffusion suggest` writes); replaces the seeded labeled_percent draw
    labeled_ids: str | None = None


@dataclass
class ModelConfig:
    features: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])
    norm: str = "batch"
    dropout: float = 0.0
    checkpointing: bool = False  # recompute activations in backward: less memory (3D), ~1/3 more time;
    # with batch norm the running statistics then see each batch twice
    channels_last: bool = True  # 2D only: NHWC memory format, faster convolutions on CPU and GPU


@dataclass
class MethodConfig:
    name: str = "superdiffusion"
    lambda_max: float = 5.0
    ramp: str = "linear"  # linear: lambda_max * epoch / epochs (the paper); sigmoid: exp(-5 (1 - x)^2)
    # reference: each method's own lambda_max and ramp (its YAML: SSL4MIS's 0.1 and sigmoid ramp
    # for the baselines); paper: Appendix A's linear ramp to 5 for every method
    lambda_schedule: str = "reference"
    # auto: the method's reference (0.5 (CE + Dice); DTC: Dice; the paper's method: CE); ce; ce_dice; dice
    supervised_loss: str = "auto"
    params: dict[str, Any] = field(default_factory=dict)  # method-specific, checked by the method


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 8
    labeled_batch_size: int = 4  # labeled items in each batch while unlabeled ones exist
    lr: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 5e-5
    lr_step: int = 50
    lr_gamma: float = 0.1
    seed: int = 0
    eval_every: int = 1
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # 0: torch's default
    amp: bool = False  # bf16 autocast on CUDA only (slower than fp32 on CPUs without AVX-512)
    # The run length in updates is epochs x steps_per_epoch, whatever the dataset size (as
    # nnU-Net's fixed iterations per epoch). 0: one pass over the training images per epoch
    # (the paper's epoch: the length then shrinks with the dataset).
    steps_per_epoch: int = 50
    # a finished run keeps model.pt (the segmenter, about 8 MB) and drops its training state
    # (checkpoints/: every network plus Adam's moments); true keeps last.pt and best.pt so that
    # the run can be resumed with more epochs
    keep_state: bool = False


@dataclass
class EvalConfig:
    protocol: str = "honest"  # honest: choose on validation; paper: choose on test (Table 1's way)
    threshold_start: float = 0.0
    threshold_stop: float = 0.9
    threshold_step: float = 0.02
    samples: int = 1  # noise draws averaged at inference (diffusion methods)
    inference_t: int = 999  # diffusion step of the pure-noise mask at inference
    batch_size: int = 16
    sw_overlap: float = 0.5  # sliding-window overlap for volumes


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def _section_types() -> dict[str, type]:
    return {"data": DataConfig, "model": ModelConfig, "method": MethodConfig, "train": TrainConfig, "eval": EvalConfig}


def builtin_config(kind: str, name: str) -> Path:
    """Path of a YAML shipped with the package (``kind`` is datasets, methods or profiles)."""
    path = Path(str(resources.files("superdiffusion") / "configs" / kind / f"{name}.yaml"))
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"no {kind[:-1]} config named {name!r}; available: {', '.join(available)}")
    return path


def _coerce(value: Any, current: Any, key: str) -> Any:
    if isinstance(value, str) and not isinstance(current, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ConfigError(f"{key}: cannot parse {value!r}: {err}") from None
    if isinstance(current, bool) and not isinstance(value, bool):
        raise ConfigError(f"{key} expects true/false, got {value!r}")
    if isinstance(current, int) and not isinstance(current, bool) and isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if current is not None and isinstance(current, (int, float, str, list)) and not isinstance(value, type(current)):
        raise ConfigError(f"{key} expects {type(current).__name__}, got {value!r}")
    return value


def _parse_number(value: str, key: str) -> int | float:
    try:
        number = yaml.safe_load(value)
    except yaml.YAMLError:
        number = None
    if isinstance(number, str):  # YAML 1.1 reads 1e-1 as text
        try:
            number = float(number)
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise ConfigError(f"{key}: cannot read {value!r} as a number")
    return number


def merge(cfg: Config, updates: dict[str, Any], origin: str) -> Config:
    """Apply a nested ``{section: {key: value}}`` mapping onto ``cfg`` in place."""
    types = _section_types()
    for section, values in (updates or {}).items():
        if section not in types:
            raise ConfigError(f"{origin}: unknown section {section!r}; sections: {', '.join(types)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: section {section!r} must be a mapping")
        target = getattr(cfg, section)
        names = {f.name for f in dataclasses.fields(target)}
        for key, value in values.items():
            if section == "method" and key not in names:
                if isinstance(value, str) and (value[:1].isdigit() or value[:1] in "-."):
                    value = _parse_number(value, f"method.{key}")  # its type is checked by the method
                target.params[key] = value  # method-specific: checked when the method is built
                continue
            if key not in names:
                raise ConfigError(f"{origin}: unknown key {section}.{key}; keys: {', '.join(sorted(names))}")
            if key == "params":
                target.params.update(value or {})
                continue
            setattr(target, key, _coerce(value, getattr(target, key), f"{section}.{key}"))
    return cfg


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: expected a mapping of sections")
    return content


DEFAULT_PROFILE = "cpu"


def parse_overrides(items: list[str]) -> tuple[dict[str, str], dict[str, Any]]:
    """Split ``dataset=ph2 method=cps train.epochs=5`` into presets and nested overrides."""
    presets: dict[str, str] = {}
    nested: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        if key in ("dataset", "method", "profile"):
            presets[key] = value
            continue
        if "." not in key:
            raise ConfigError(f"override {item!r}: use section.key=value (sections: {', '.join(SECTIONS)})")
        section, sub = key.split(".", 1)
        nested.setdefault(section, {})[sub] = value
    return presets, nested


def _preset_file(kind: str, value: str) -> Path:
    return Path(value) if value.endswith((".yaml", ".yml")) else builtin_config(kind, value)


def resolve(
    overrides: list[str] | None = None,
    config_file: str | Path | None = None,
    base: dict[str, Any] | None = None,
) -> Config:
    """Build a :class:`Config` from presets, an optional file and ``key=value`` overrides."""
    presets, nested = parse_overrides(list(overrides or []))
    cfg = Config()
    if base:
        merge(cfg, base, "base config")
    user = load_yaml(config_file) if config_file else {}
    presets = {**{k: user.pop(k) for k in ("dataset", "method", "profile") if k in user}, **presets}
    profile = presets.get("profile", DEFAULT_PROFILE)
    profile_yaml = load_yaml(_preset_file("profiles", profile))
    per_method = profile_yaml.pop("methods", {}) or {}  # a profile's settings for one method
    merge(cfg, profile_yaml, f"profile {profile}")
    if "dataset" in presets:
        merge(cfg, load_yaml(_preset_file("datasets", presets["dataset"])), f"dataset {presets['dataset']}")
    method = presets.get("method", cfg.method.name)
    method_yaml = load_yaml(_preset_file("methods", method))
    method_yaml.setdefault("method", {}).setdefault("name", method)
    merge(cfg, method_yaml, f"method {method}")
    if cfg.method.name in per_method:
        merge(cfg, {"method": per_method[cfg.method.name]}, f"profile {profile}")
    merge(cfg, user, str(config_file))
    merge(cfg, nested, "command line")
    _apply_lambda_schedule(cfg, [user.get("method") or {}, nested.get("method") or {}])
    return cfg


PAPER_LAMBDA = {"lambda_max": 5.0, "ramp": "linear"}  # Appendix A's reading for every method


def _apply_lambda_schedule(cfg: Config, user_method_sections: list[dict[str, Any]]) -> None:
    """``method.lambda_schedule=paper`` gives every semi-supervised method the paper's linear
    ramp to 5; it refuses an explicit ``lambda_max`` or ``ramp`` beside it (which would win?)."""
    choice = cfg.method.lambda_schedule
    if choice not in ("reference", "paper"):
        raise ConfigError(f"method.lambda_schedule must be reference or paper, got {choice!r}")
    if choice == "reference" or cfg.method.name == "supervised":
        return
    explicit = sorted({k for section in user_method_sections for k in section if k in PAPER_LAMBDA})
    if explicit:
        raise ConfigError(
            f"method.lambda_schedule=paper sets method.lambda_max=5 and method.ramp=linear; "
            f"drop the explicit method.{explicit[0]} or use lambda_schedule=reference"
        )
    cfg.method.lambda_max = PAPER_LAMBDA["lambda_max"]
    cfg.method.ramp = PAPER_LAMBDA["ramp"]


# settings a resumed run may change: its length (the lr steps at train.lr_step and the lambda
# ramp is recomputed over the new length, as if it had been planned from the start) and how
# it runs (threads, device, inference batch); any other change would mix two experiments
RESUMABLE_KEYS = ("train.epochs", "train.threads", "train.device", "train.keep_state", "eval.batch_size")


def flat(cfg: Config) -> dict[str, Any]:
    """``{"section.key": value}``, method-specific settings as ``method.KEY``."""
    out = {}
    for section, values in cfg.to_dict().items():
        for key, value in values.items():
            if key == "params":
                out.update({f"method.{k}": v for k, v in value.items()})
            else:
                out[f"{section}.{key}"] = value
    return out


def resume_config(saved: Config, overrides: list[str] | None = None, config_file: str | Path | None = None) -> Config:
    """The settings of a resumed run. A command that names presets (``dataset=``, ``method=``,
    ``profile=``) or a ``--config`` file is resolved in full, as for a new run; one with only
    ``section.key=value`` overrides (or none) applies them to the run's saved settings."""
    presets, nested = parse_overrides(list(overrides or []))
    if presets or config_file:
        return resolve(overrides, config_file)
    cfg = from_dict(saved.to_dict())
    merge(cfg, nested, "command line")
    _apply_lambda_schedule(cfg, [nested.get("method") or {}])
    return cfg


LEGACY_KEYS = {("train", "max_steps_per_epoch"): ("train", "steps_per_epoch")}  # older run folders


def from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a config saved by :meth:`Config.to_dict` (e.g. from a checkpoint)."""
    values = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    for (section, old), (_, new) in LEGACY_KEYS.items():
        if old in values.get(section, {}):
            steps = values[section].pop(old)
            values[section].setdefault(new, steps)
    return merge(Config(), values, "saved config")
