"""Writing files without harming what is already there.

Every file the package writes goes through here:

- a path that is a symbolic link (dangling or not) is refused with one line, so no write
  follows a link out of its folder;
- a whole file is written atomically: to a new temporary file in the same folder (created
  exclusively, never through a link), flushed to disk, then renamed over the target;
- an appended file (a log) is opened without following a link;
- a folder the package writes several files into (predictions, a report) lists them in a
  ledger (:data:`LEDGER`): a later command replaces a file only if the ledger lists it, so a
  file of the user's in that folder is never replaced, ``--force`` or not.

This module imports nothing of the package but its errors.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import DataError, RunFolderError

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def refuse_link(path: Path) -> None:
    """One line if ``path`` is a symbolic link: the package never writes through one."""
    if os.path.islink(path):
        raise RunFolderError(
            f"{path} is a symbolic link; superdiffusion does not write through links: remove the link or "
            "choose another output"
        )


def _tmp_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def stale_temporary(path: Path) -> bool:
    """Whether ``path`` is a temporary file :func:`atomic` left behind (``.NAME.tmp-PID``) whose
    process is gone (killed before it could rename or remove it): the package's own, safe to
    remove."""
    name = path.name
    if not (name.startswith(".") and ".tmp-" in name) or path.is_symlink() or not path.is_file():
        return False
    pid = name.rpartition(".tmp-")[2]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # a live process of another user
        return False
    return False


@contextlib.contextmanager
def atomic(path: str | Path, text: bool = False, newline: str | None = None) -> Iterator[io.IOBase]:
    """A file object whose content replaces ``path`` when the block ends without error (and is
    discarded otherwise)."""
    path = Path(path)
    refuse_link(path)
    tmp = _tmp_for(path)
    if os.path.lexists(tmp):  # a temporary file left by a killed process of the same pid: ours
        os.unlink(tmp)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
    except OSError as err:
        raise RunFolderError(f"{path}: cannot write here ({err.strerror})") from None
    handle = os.fdopen(fd, "w", newline=newline) if text else os.fdopen(fd, "wb")
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        refuse_link(path)  # a link planted while writing is still not written through
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic(path) as handle:
        handle.write(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def save_image(path: str | Path, image, **params) -> None:
    """A PIL image written atomically, in the format its suffix names; a link is refused."""
    path = Path(path)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}[path.suffix.lower()]
    with atomic(path) as handle:
        image.save(handle, format=fmt, **params)


def require_empty(folder: str | Path, what: str = "destination") -> None:
    """One line unless ``folder`` is missing or empty: a command that writes a whole folder (a
    dataset import, a generated dataset) never mixes its files with someone else's."""
    folder = Path(folder)
    if os.path.islink(folder) or folder.is_file():
        raise DataError(f"{folder}: the {what} is a link or a file; choose a new folder")
    if folder.exists() and any(folder.iterdir()):
        raise DataError(f"{folder}: the {what} is not empty; choose a new or empty folder")


def check_writable(folder: str | Path) -> None:
    """One line unless files can be written in ``folder`` (or created there: its nearest existing
    ancestor is a writable folder), so that a command fails before it computes, not after."""
    folder = Path(folder)
    probe = folder
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise RunFolderError(f"{folder}: cannot write here: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunFolderError(f"{folder}: cannot write here: {probe} is read-only")


def append(path: str | Path) -> io.TextIOWrapper:
    """``path`` opened for appending text, created if missing; a link is refused."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            refuse_link(Path(path))
        raise RunFolderError(f"{path}: cannot write here ({err.strerror})") from None
    return os.fdopen(fd, "a")


def open_lock(path: str | Path) -> io.TextIOWrapper:
    """``path`` opened for reading and writing without truncating it, created if missing; a
    link is refused."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            refuse_link(Path(path))
        raise RunFolderError(f"{path}: cannot write here ({err.strerror})") from None
    return os.fdopen(fd, "r+")


LEDGER = ".superdiffusion-written.json"


def _inside(name: str) -> bool:
    """A plain relative name: never absolute, never through ``..`` (a tampered ledger's)."""
    path = Path(name)
    return bool(path.parts) and not path.is_absolute() and ".." not in path.parts


def written_in(folder: str | Path) -> set[str]:
    """The files (relative names) the package wrote in ``folder``, as its ledger lists them."""
    ledger = Path(folder) / LEDGER
    if not ledger.is_file() or ledger.is_symlink():
        return set()
    try:
        names = json.loads(ledger.read_text())["written"]
    except (OSError, ValueError, KeyError, TypeError):
        raise RunFolderError(f"{ledger}: not a list superdiffusion wrote (unreadable); move it away") from None
    return {n for n in names if isinstance(n, str) and _inside(n)}


def check_replaceable(folder: str | Path, names: list[str], force: bool = True, hint: str = "") -> None:
    """Before writing ``names`` into ``folder``: one line if one exists and the package did not
    write it there (its ledger does not list it), or, without ``force``, if one exists at all."""
    folder = Path(folder)
    ours = written_in(folder)
    for name in names:
        target = folder / name
        refuse_link(target)
        if not os.path.lexists(target):
            continue
        if name not in ours:
            raise RunFolderError(
                f"{target} exists and was not written by superdiffusion; it is never replaced, even with --force: "
                f"move it, or choose another output{hint}"
            )
        if not force:
            raise RunFolderError(f"{target} already exists; choose another output or pass --force")


def record_written(folder: str | Path, names: list[str]) -> None:
    """Add ``names`` to ``folder``'s ledger (before they are written)."""
    written = written_in(folder) | {n for n in names if _inside(n)}
    write_text(Path(folder) / LEDGER, json.dumps({"written": sorted(written)}, indent=1) + "\n")
