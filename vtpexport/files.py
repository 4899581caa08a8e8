"""Writing outputs atomically: a temporary file or folder beside the target, renamed into place."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import UserError


def write_atomically(path: str | Path, write: Callable[[BinaryIO], None], what: str, replace: bool = True) -> Path:
    """Call `write(stream)` on a temporary file in `path`'s folder, then rename it to `path`,
    so `path` is either the complete old file or the complete new one. `what` names the file
    in errors ("the plot", "the results"). Without `replace` an existing `path` is refused, in
    the same step that puts the file in place (a file that appeared meanwhile is kept)."""
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
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)  # fails if `path` exists: the check and the write are one step
    except FileExistsError:
        raise UserError(f"{path} already exists; pass --force to replace it") from None
    except OSError as error:
        raise UserError(f"cannot write {what} to {path}: {error.strerror or error}") from None
    finally:
        Path(temporary).unlink(missing_ok=True)
    return path


@contextmanager
def folder_atomically(out: str | Path, force: bool, what: str, ours: Callable[[Path], bool]) -> Iterator[Path]:
    """A staging folder beside `out` for the block to fill, renamed to `out` when the block
    completes and removed when it fails or is interrupted, so `out` is never half-written.

    The whole build holds a lock beside `out` (a second build into it is refused at once), and
    the final rename refuses an `out` that appeared meanwhile in the same step that renames.
    `force` replaces only a folder `ours` recognises as one this tool wrote. `what` names the
    folder in errors ("the export")."""
    out = Path(out)
    _check_replaceable(out, force, what, ours)  # before the long part
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot write {what} to {out.parent}: {error.strerror or error}") from None
    with _locked(out, what):
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
            staging.chmod(0o755)  # mkdtemp makes it private; the finished folder is an ordinary one
        except OSError as error:
            raise UserError(f"cannot write {what} to {out.parent}: {error.strerror or error}") from None
        try:
            yield staging
            replacing = _check_replaceable(out, force, what, ours, appeared=True)
            try:
                _put_in_place(staging, out, replacing)
            except FileExistsError:  # made between the check and the rename
                raise UserError(_appeared(out, what)) from None
        except OSError as error:  # a full disk, a folder made read-only meanwhile
            raise UserError(f"cannot write {what} to {out}: {error.strerror or error}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def files_atomically(folder: Path, what: str) -> Iterator[Path]:
    """A hidden staging folder inside `folder` for the block to write files into, each renamed
    into `folder` (replacing one of its name) once the block completes; when it fails or is
    interrupted none is, so `folder` never holds some of a set. `what` names them in errors."""
    try:
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
    except OSError as error:
        raise UserError(f"cannot write {what} to {folder}: {error.strerror or error}") from None
    try:
        yield staging
        for file in sorted(staging.iterdir()):
            os.replace(file, folder / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def folder_once(folder: Path, write: Callable[[Path], None]) -> Path:
    """`folder`, made by `write(staging)` in a staging folder beside it and renamed into place,
    unless it exists: a cache entry that concurrent writers make once (the first rename wins and
    the others' copies are dropped). OSError when it cannot be made."""
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        write(staging)
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        staging.rename(folder)
    except OSError:
        if not folder.is_dir():  # another process may have won the race
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _check_replaceable(out: Path, force: bool, what: str, ours: Callable[[Path], bool], appeared: bool = False) -> bool:
    """Whether `out` exists, refused unless `force` and it is ours; `appeared`: checked after the build."""
    if not (out.exists() or out.is_symlink()):
        return False
    if not force:
        raise UserError(_appeared(out, what) if appeared else f"{out} already exists; pass --force to replace it")
    if out.is_symlink() or not out.is_dir() or not ours(out):
        kind = what.removeprefix("the ")
        raise UserError(f"{out} is not a vtpexport {kind}: --force replaces only those; remove it yourself")
    return True


def _appeared(out: Path, what: str) -> str:
    return f"{out} appeared while {what} was being written; it is kept and nothing was written (--force replaces it)"


def _put_in_place(staging: Path, out: Path, replacing: bool) -> None:
    """Rename `staging` to `out`. When `replacing` (the caller checked `out`), `out` is set aside
    first, put back if the rename fails, and removed once the new folder is in place; otherwise
    an `out` made since the check fails the rename (FileExistsError), never replaced."""
    retired = None
    if replacing:
        retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.replaced-", dir=out.parent))
        out.rename(retired / out.name)
    try:
        _rename_no_replace(staging, out)
    except BaseException:
        if retired is not None:
            _rename_no_replace(retired / out.name, out)
            retired.rmdir()
        raise
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)


_LIBC = ctypes.CDLL(None, use_errno=True)
_RENAME_NOREPLACE = 1  # linux/fs.h
_AT_FDCWD = -100


def _rename_no_replace(source: Path, target: Path) -> None:
    """rename(2) that fails with FileExistsError when `target` exists (renameat2 RENAME_NOREPLACE);
    a plain rename would replace an empty folder that appeared at `target`."""
    renameat2 = getattr(_LIBC, "renameat2", None)
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS):  # EEXIST becomes FileExistsError
            raise OSError(code, os.strerror(code), str(target))
    # No renameat2 (not glibc 2.28+, or a filesystem such as NFS without the flag): the lock
    # still keeps our own builds apart, and only an empty folder could be replaced.
    if target.exists():
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    source.rename(target)


@contextmanager
def _locked(out: Path, what: str) -> Iterator[None]:
    """An exclusive lock on a file beside `out`, held for the block and removed after it."""
    lock = out.with_name(f".{out.name}.lock")
    while True:
        try:
            handle = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise UserError(f"cannot write {what} to {out.parent}: {error.strerror or error}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            raise UserError(
                f"another vtpexport process is writing {out}; wait for it, or choose another --out"
            ) from None
        try:
            if os.path.samestat(os.fstat(handle), os.stat(lock)):
                break
        except FileNotFoundError:
            pass
        os.close(handle)  # the holder before us removed this file after we opened it: take the new one
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(handle)


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
