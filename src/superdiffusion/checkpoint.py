"""Atomic checkpoints: written to a temporary file, fsynced and renamed; the previous one is
kept as ``*.prev.pt`` and used when the newest cannot be read."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from . import safefs
from .errors import RunFolderError


def save_atomic(obj: Any, path: Path, keep_previous: bool = True) -> None:
    """Write ``obj`` to ``path`` atomically (never through a link); the file it replaces is kept
    as ``*.prev.pt`` with ``keep_previous``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    safefs.refuse_link(path.parent)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    if keep_previous and path.exists():
        safefs.refuse_link(previous_path(path))
        os.replace(path, previous_path(path))
    safefs.write_bytes(path, buffer.getvalue())


def previous_path(path: Path) -> Path:
    return path.with_name(path.stem + ".prev" + path.suffix)


def load(path: Path, fallback: bool = True) -> dict[str, Any]:
    """Load with ``weights_only=True``; a truncated or corrupt file falls back to the previous one."""
    candidates = [path, previous_path(path)] if fallback else [path]
    errors = []
    for candidate in candidates:
        if not candidate.exists():
            continue
        try:
            state = torch.load(candidate, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file means: try the previous one
            errors.append(f"{candidate}: {type(err).__name__}: {str(err).splitlines()[0][:120]}")
            warnings.warn(
                f"checkpoint {candidate} is unreadable ({type(err).__name__}); trying the previous one", stacklevel=2
            )
            continue
        if not isinstance(state, dict) or "format" not in state:
            errors.append(f"{candidate}: not a superdiffusion checkpoint")
            continue
        return state
    detail = "; ".join(errors) if errors else "no such file"
    raise RunFolderError(f"no usable checkpoint at {path} ({detail})")
