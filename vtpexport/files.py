"""Writing output files atomically: a temporary file beside the target, renamed into place."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import UserError


def write_atomically(path: str | Path, write: Callable[[BinaryIO], None], what: str) -> Path:
    """Call `write(stream)` on a temporary file in `path`'s folder, then rename it to `path`,
    so `path` is either the complete old file or the complete new one. `what` names the file
    in errors ("the plot", "the results")."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {what} to {path}: it is a folder; name a file")
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise UserError(f"cannot write {what} to {path}: {error.strerror or error}") from None
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; give it a normal file's mode
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise UserError(f"cannot write {what} to {path}: {error.strerror or error}") from None
    return path


def check_writable(path: str | Path, what: str) -> Path:
    """Refuse an output path that cannot be written, before any work is done."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {what} to {path}: it is a folder; name a file")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot write {what} to {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {what} to {path}: no permission to write in {parent}")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
