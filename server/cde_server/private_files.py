"""Files that hold users' data or secrets (the SQLite store, the keys file): created readable
by this user only, and a warning at start-up when an existing one is readable by others."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

logger = logging.getLogger("cde_server.private_files")

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def ensure_private_dir(path: Path) -> None:
    """Create `path` (and missing parents) as 0700; an existing directory is left alone."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=PRIVATE_DIR_MODE)
        directory.chmod(PRIVATE_DIR_MODE)  # mkdir's mode is cut by the umask


def ensure_private_file(path: Path) -> None:
    """Create `path` empty as 0600 unless it exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)
    path.chmod(PRIVATE_FILE_MODE)


def shared_with_others(path: Path) -> bool:
    """Whether group or other users may read or write `path`."""
    return bool(path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))


def warn_if_shared(path: Path, what: str) -> bool:
    """Log a warning when the existing file `path` is readable by other users; whether it is."""
    if not path.exists() or not shared_with_others(path):
        return False
    mode = stat.S_IMODE(path.stat().st_mode)
    logger.warning(
        "%s %s is readable by other users (mode %03o): run chmod 600 %s", what, path, mode, path
    )
    return True
