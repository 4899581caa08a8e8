"""manifest.json: what an export folder holds, how to drive it, and a sha256 of every file.

The manifest seals itself: `seal` is the sha256 of its own canonical JSON (every key but the
seal, the file list included), so an edited dimension or a file dropped from the list is seen
by every reader, and `folder_differences` compares the folder with the list byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from ..files import sha256, write_atomically
from ..safety import inside
from ..schema import parse_json, read_text, validate
from .manifest_schema import MANIFEST_SCHEMA, MANIFEST_VERSION

if TYPE_CHECKING:
    from ..models.loader import LoadedModel

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20  # a manifest is tens of KB
RUNTIME_CACHES = (".ort-trt-cache",)  # written beside the graphs by runners, not part of the export


def library_versions() -> dict[str, str]:
    out = {}
    for package in ("vtpexport", "torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "tokenizers"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            continue
    return out


def _entries(folder: Path) -> list[str]:
    """Every file and link under `folder`, relative, without following links."""
    found = []
    for parent, folders, files in os.walk(folder):
        links = [name for name in folders if (Path(parent) / name).is_symlink()]  # os.walk does not enter them
        found += [str((Path(parent) / name).relative_to(folder)) for name in [*files, *links]]
    return sorted(found)


def _hidden(name: str) -> bool:
    return any(part.startswith(".") for part in Path(name).parts)


def _file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file in `folder` but the manifest and hidden ones (partial files, caches)."""
    return {name: sha256(folder / name) for name in _entries(folder) if name != MANIFEST and not _hidden(name)}


def seal_of(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON without its seal."""
    body = {key: value for key, value in manifest.items() if key != "seal"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _render(manifest: dict) -> str:
    """The one way a manifest is written, so that reading can demand these exact bytes."""
    return json.dumps(manifest, indent=2) + "\n"


def write_manifest(folder: Path, content: dict, versions: dict[str, str] | None = None) -> dict:
    """Write manifest.json with the sha256 of every other file in `folder` and its seal
    (versions: default this tool's)."""
    manifest = {"manifest_version": MANIFEST_VERSION, **content, "versions": versions or library_versions()}
    manifest["files"] = _file_hashes(folder)
    manifest["seal"] = seal_of(manifest)
    validate(MANIFEST_SCHEMA, manifest, f"the manifest written to {folder}")  # what every reader will demand
    text = _render(manifest)
    write_atomically(folder / MANIFEST, lambda stream: stream.write(text.encode()), "the manifest")
    return manifest


def read_manifest(folder: str | Path) -> dict:
    """The folder's manifest, checked against its schema and its seal; one UserError otherwise."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise UserError(f"{folder} is not a vtpexport export: no {MANIFEST} (build one with vtpexport build)")
    for name in _entries(folder):  # cheap (no hashing), so every reader refuses a link out of the export
        inside(folder, name, f"export {folder}")
    text = read_text(path, "manifest", MAX_MANIFEST_BYTES)
    manifest = parse_json(text, path, "manifest")
    if not isinstance(manifest, dict):
        raise UserError(f"{path} is not a manifest: expected a JSON object, got a {type(manifest).__name__}")
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        raise UserError(
            f"{path} has manifest version {manifest.get('manifest_version')!r}; this tool reads {MANIFEST_VERSION} "
            "(rebuild the export with this version of vtpexport)"
        )
    validate(MANIFEST_SCHEMA, manifest, str(path))
    if seal_of(manifest) != manifest["seal"] or text != _render(manifest):
        raise UserError(f"{path} was edited after it was built: its seal does not match its bytes")
    return manifest


def is_export(folder: Path) -> bool:
    """Whether `folder` holds a manifest this tool wrote (any version): what --force may replace."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and str(manifest.get("tool", "")).startswith("vtpexport")


def export_file(folder: str | Path, name: str, where: str) -> Path:
    """A file the manifest names (`where`: the key it sits under), refused unless inside the folder."""
    return inside(folder, name, f"{Path(folder) / MANIFEST} {where}")


def folder_differences(folder: Path, manifest: dict) -> list[str]:
    """Each way the folder differs from the manifest's file list: removed, changed, added files
    and links (an export holds none); empty when every byte is as built."""
    folder = Path(folder)
    differences = []
    for name, digest in manifest["files"].items():
        path = folder / name
        if path.resolve() != folder.resolve() / name:
            differences.append(f"{name} (a link)")
        elif not path.is_file():
            differences.append(f"{name} (removed)")
        elif sha256(path) != digest:
            differences.append(f"{name} (changed)")
    for name in _entries(folder):
        if name == MANIFEST or name in manifest["files"] or Path(name).parts[0] in RUNTIME_CACHES:
            continue
        differences.append(f"{name} ({'a link' if (folder / name).is_symlink() else 'added'})")
    return differences


def update_manifest(folder: str | Path, **changes) -> dict:
    """Rewrite manifest.json with `changes` and the sha256 of every file now in `folder`;
    the library versions of the export are kept (engines record their own)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    content = {k: v for k, v in manifest.items() if k not in ("manifest_version", "versions", "files", "seal")}
    return write_manifest(folder, content | changes, manifest["versions"])


def export_model_spec(manifest: dict) -> str:
    """The model an export was built from: its source folder if still there, else its name."""
    source = Path(manifest["model"]["source"])
    return str(source) if source.is_dir() else manifest["model"]["name"]


def check_export_model(folder: Path, manifest: dict, model: LoadedModel) -> None:
    """Refuse to compare an export against a model of another architecture, naming both."""
    if model.args.config_hash() != manifest["model"]["config_hash"]:
        raise UserError(
            f"{folder} was exported from {manifest['model']['name']} (config {manifest['model']['config_hash']}), "
            f"not from {model.source.name} (config {model.args.config_hash()})"
        )
