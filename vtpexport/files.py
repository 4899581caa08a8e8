"""Writing outputs atomically: a temporary file or folder beside the target, renamed into place."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


@contextmanager
def folder_atomically(out: str | Path, force: bool, what: str) -> Iterator[Path]:
    """A temporary folder beside `out` for the block to fill: renamed to `out` (replacing it,
    with `force`) when the block completes, removed when it fails or is interrupted, so `out` is
    never a half-written folder. `what` names the folder in errors ("the export")."""
    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"{out} already exists; pass --force to replace it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        staging.chmod(0o755)  # mkdtemp makes it private; the finished folder is an ordinary one
    except OSError as error:
        raise UserError(f"cannot write {what} to {out.parent}: {error.strerror or error}") from None
    try:
        yield staging
        if out.exists():
            retired = out.with_name(f".{out.name}.replaced")
            shutil.rmtree(retired, ignore_errors=True)
            out.rename(retired)
            staging.rename(out)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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


def sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
