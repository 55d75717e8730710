"""Files that hold conversations (the session database, saved KV caches) are the owner's
alone: created 0600 in folders made 0700, whatever the umask."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

FILE_MODE = 0o600
DIR_MODE = 0o700


def _tighten(path: Path, mode: int) -> None:
    """Drop group and other permissions from ``path`` if this process owns it."""
    info = path.stat()
    if info.st_uid == os.geteuid() and info.st_mode & 0o077:
        path.chmod(mode)
        log.info("made owner-only", extra={"file": path.name})


def private_dir(path: Path, *, tighten: bool = True) -> None:
    """Make sure folder ``path`` exists (0700 when made here); ``tighten``: also make an
    existing one owner-only (for the worker's own folders, not ones it was pointed into)."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if tighten:
        _tighten(path, DIR_MODE)


def private_file(path: Path) -> None:
    """Make sure file ``path`` exists, owner-only (an existing one is tightened, not
    truncated)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
    os.close(fd)
    _tighten(path, FILE_MODE)


def open_private(path: Path) -> int:
    """An owner-only file at ``path`` (emptied if it exists, its mode reset too), opened for
    writing: its descriptor."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # a leftover file keeps its old mode through O_CREAT
    return fd
