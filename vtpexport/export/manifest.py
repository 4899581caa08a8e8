"""manifest.json: what an export folder holds, how to drive it, and a sha256 of every file."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from ..errors import UserError
from ..files import sha256

MANIFEST = "manifest.json"
MANIFEST_VERSION = 2  # 2: one llm graph (context and generation profiles) instead of prefill + decode


def library_versions() -> dict[str, str]:
    out = {}
    for package in ("vtpexport", "torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "tokenizers"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            continue
    return out


def _file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file in `folder` but the manifest and hidden ones (partial files, caches)."""
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.name != MANIFEST and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    return {str(p.relative_to(folder)): sha256(p) for p in files}


def write_manifest(folder: Path, content: dict, versions: dict[str, str] | None = None) -> dict:
    """Write manifest.json with the sha256 of every other file in `folder` (versions: default this tool's)."""
    manifest = {"manifest_version": MANIFEST_VERSION, **content, "versions": versions or library_versions()}
    manifest["files"] = _file_hashes(folder)
    partial = folder / f".{MANIFEST}.partial"
    partial.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    partial.replace(folder / MANIFEST)
    return manifest


def read_manifest(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise UserError(f"{folder} is not a vtpexport export: no {MANIFEST} (build one with vtpexport build)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON: {error}") from None
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        raise UserError(
            f"{path} has manifest version {manifest.get('manifest_version')!r}; this tool reads {MANIFEST_VERSION}"
        )
    return manifest


def changed_files(folder: Path, manifest: dict) -> list[str]:
    """Files whose sha256 differs from the manifest, or that are missing."""
    changed = []
    for name, digest in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            changed.append(f"{name} (missing)")
        elif sha256(path) != digest:
            changed.append(f"{name} (sha256 differs)")
    return changed


def update_manifest(folder: str | Path, **changes) -> dict:
    """Rewrite manifest.json with `changes` and the sha256 of every file now in `folder`;
    the library versions of the export are kept (engines record their own)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    content = {k: v for k, v in manifest.items() if k not in ("manifest_version", "versions", "files")}
    return write_manifest(folder, content | changes, manifest["versions"])
