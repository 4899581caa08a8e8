"""Paths taken from files we read (a manifest's entries, a recipe's name, a checkpoint index's
shards, Triton model names) are data, not trusted paths: each one goes through `inside`."""

from __future__ import annotations

from pathlib import Path

from .errors import UserError


def inside(folder: str | Path, name: str | Path, source: str) -> Path:
    """`folder / name`, resolved, when it stays inside `folder` after following every link;
    otherwise one UserError naming `source` (where the name was read: "manifest.json
    graphs.vision.file") and the name. Absolute names, `..` and links out are all refused."""
    root = Path(folder).resolve()
    if not isinstance(name, str | Path) or not str(name) or "\0" in str(name):
        raise UserError(f"{source}: {name!r} is not a file name")
    if Path(name).is_absolute():
        raise UserError(f"{source}: {str(name)!r} is an absolute path; it must name a file inside {root}")
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        why = "leads out of" if ".." in Path(name).parts else "goes through a link out of"
        raise UserError(f"{source}: {str(name)!r} {why} {root}")
    return path
