"""Hostile and careless input through the CLI: crafted manifests, checkpoint indexes and
recipes, tampered exports, concurrent builds, full disks, bad caches and images.

Every refusal is asserted the same way: a non-zero exit, no traceback, one line that starts
with `error:` and names the input, nothing written outside the output, nothing half-written,
and the next ordinary run still working. One tiny export is built for the session (the shared
`exports` fixture) and copied before it is tampered with; most cases take milliseconds.
"""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import random_image

from vtpexport.cli import main
from vtpexport.export.manifest import seal_of

MODEL = "tiny-llava-1.5"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def refused(result, *names: str) -> str:
    """The one error line of a refused command (after its progress lines, if any), which names
    each of `names`."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    *progress, last = result.output.strip().splitlines()
    assert all(re.match(r"\[ *\d+\.\ds\] ", line) for line in progress), result.output
    assert last.startswith("error: "), result.output
    for name in names:
        assert name in last, last
    return last


def snapshot(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every entry under `root` with its size and modification time (None for folders)."""
    return {
        str(p.relative_to(root)): None
        if p.is_dir() and not p.is_symlink()
        else (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in root.rglob("*")
    }


@pytest.fixture
def export(exports, tmp_path) -> Path:
    """A private copy of the session's tiny unpruned export, to tamper with."""
    folder = tmp_path / "export"
    shutil.copytree(exports(MODEL), folder)
    return folder


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    random_image(60, 90).save(path)
    return path


def craft(folder: Path, change) -> None:
    """Edit the manifest as a hostile builder would, resealing it, so that only the checks of
    its content stand in the way."""
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    manifest["seal"] = seal_of(manifest)
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def export_commands(folder: Path, image: Path, work: Path) -> list[list]:
    """Every command that reads an export folder."""
    data = work / "data.jsonl"
    data.write_text(json.dumps({"image": str(image), "question": "What?"}) + "\n")
    question = ["--image", image, "--prompt", "What?"]
    return [
        ["lint", folder],
        ["verify", folder],
        ["run", folder, *question],
        ["build", "--from", folder, "--triton-repo", work / "triton"],
        ["build", "--from", folder, "--engine", "trt"],
        ["bench", folder, "--baseline", folder, *question],
        ["eval", folder, "--data", data],
    ]


def _set(keys: str, value):
    def change(manifest):
        *parents, last = keys.split(".")
        for key in parents:
            manifest = manifest[key]
        manifest[last] = value

    return change


def _delete(keys: str):
    def change(manifest):
        *parents, last = keys.split(".")
        for key in parents:
            manifest = manifest[key]
        del manifest[last]

    return change


def _engines(engines: dict):
    return _set(
        "tensorrt",
        {"version": "10.0", "gpu": "x", "compute_capability": "9.0", "workspace_bytes": 1, "engines": engines}
        | {"profiles": "profiles.json"},
    )


CRAFTED = {
    "no graphs": (_delete("graphs"), "missing key 'graphs'"),
    "opset as text": (_set("opset", "18"), "opset must be an integer"),
    "graph up and out": (_set("graphs.vision.file", "../outside.onnx"), "graphs.vision.file must be a relative"),
    "graph absolute": (_set("graphs.vision.file", "/etc/hostname"), "graphs.vision.file must be a relative"),
    "graph unlisted": (lambda m: m["files"].pop("vision.onnx"), "'vision.onnx' is used but not in its file list"),
    "engine out": (_engines({"vision": "../../etc/hostname"}), "tensorrt.engines.vision must be a relative"),
    "listed out": (lambda m: m["files"].update({"../out": "0" * 64}), "files['../out'] is not a valid name"),
    "name as path": (_set("name", "../../escape"), "name must be a name of letters"),
    "version 1": (_set("manifest_version", 1), "manifest version 1"),
}


@pytest.mark.parametrize("kind", CRAFTED)
def test_crafted_manifests_are_refused_by_every_command(kind, export, image, tmp_path):
    change, message = CRAFTED[kind]
    craft(export, change)
    commands = export_commands(export, image, tmp_path)
    before = snapshot(tmp_path)
    for command in commands:
        refused(invoke(*command), "manifest.json", message)
        assert snapshot(tmp_path) == before, command


def test_edited_or_unreadable_manifests_and_links_out_are_refused(export, image, tmp_path):
    manifest = export / "manifest.json"
    text = manifest.read_text()
    outside = tmp_path / "outside.onnx"
    cases = {
        "a dimension edited": (text.replace('"max": 4', '"max": 400', 1), "edited after it was built"),
        "one space added": (text.replace(": ", ":  ", 1), "edited after it was built"),
        "not JSON": (text[:-20], "is not valid JSON"),
        "binary": ("\0" * 10, "not a text file"),
        "a list": ("[]\n", "expected a JSON object, got a list"),
    }
    commands = export_commands(export, image, tmp_path)
    for edited, message in cases.values():
        manifest.write_text(edited)
        for command in commands:
            refused(invoke(*command), "manifest.json", message)
    manifest.write_text(text)

    shutil.move(export / "vision.onnx", outside)
    (export / "vision.onnx").symlink_to(outside)  # the same bytes, so the digest alone would pass
    before = snapshot(tmp_path)
    for command in commands:
        refused(invoke(*command), f"export {export}", "'vision.onnx' goes through a link out of")
    assert snapshot(tmp_path) == before

    (export / "vision.onnx").unlink()
    shutil.move(outside, export / "vision.onnx")
    assert invoke("lint", export).exit_code == 0  # the next ordinary run


def test_verify_fails_on_every_added_removed_or_changed_byte(export):
    result = invoke("verify", export, "--max-new-tokens", 2)
    assert result.exit_code == 0 and "verify passed" in result.output, result.output
    pristine = {p.name: p.read_bytes() for p in export.iterdir()}

    def verify_fails(*differences: str) -> None:
        line = refused(invoke("verify", export), f"{export} does not match its manifest")
        assert line.endswith(", ".join(differences)), line
        for name, data in pristine.items():
            (export / name).write_bytes(data)

    (export / "llm.onnx").write_bytes(pristine["llm.onnx"][:-1] + bytes([pristine["llm.onnx"][-1] ^ 1]))
    verify_fails("llm.onnx (changed)")
    (export / "tokenizer.json").unlink()
    verify_fails("tokenizer.json (removed)")
    (export / "notes.txt").write_text("added")
    (export / ".hidden").write_text("added")
    verify_fails(".hidden (added)", "notes.txt (added)")
    (export / ".hidden").unlink()
    (export / "notes.txt").unlink()


class Payload:
    """Pickled, it is code that would create `marker` when a checkpoint is loaded unsafely."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def model_folder(tmp_path: Path) -> Path:
    """A private copy of the tiny built-in model's checkpoint folder."""
    from vtpexport.models.builtin import builtin_folder

    folder = tmp_path / "model"
    shutil.copytree(builtin_folder(MODEL), folder)
    return folder


def test_crafted_checkpoints_are_refused(tmp_path, image):
    folder = model_folder(tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    run = ["run", "--model", folder, "--image", image, "--prompt", "What?", "--max-new-tokens", 1]
    index = folder / "model.safetensors.index.json"
    secret = tmp_path / "secret.safetensors"
    secret.write_bytes(data)

    weights.write_bytes(data[: len(data) // 2])
    refused(invoke(*run), f"cannot read weights in {folder}")
    weights.write_bytes(b"\xff" * 64)
    refused(invoke(*run), f"cannot read weights in {folder}")
    weights.unlink()

    marker = tmp_path / "pickle-ran"
    torch.save({"w": Payload(marker)}, folder / "pytorch_model.bin")
    refused(invoke(*run), f"cannot read weights in {folder}", "Weights only load failed")
    assert not marker.exists()
    (folder / "pytorch_model.bin").unlink()

    indexes = {
        "up and out": ({"weight_map": {"w": "../secret.safetensors"}}, "weight_map.w must be a relative file name"),
        "absolute": ({"weight_map": {"w": str(secret)}}, "weight_map.w must be a relative file name"),
        "no weight_map": ({"metadata": {}}, "missing key 'weight_map'"),
        "a list": ([], "must be a weight index mapping"),
    }
    for document, message in indexes.values():
        index.write_text(json.dumps(document))
        refused(invoke(*run), str(index), message)
    (folder / "shard.safetensors").symlink_to(secret)
    index.write_text(json.dumps({"weight_map": {"w": "shard.safetensors"}}))
    refused(invoke(*run), f"{index} weight_map", "'shard.safetensors' goes through a link out of")

    index.unlink()
    (folder / "shard.safetensors").unlink()
    weights.write_bytes(data)
    assert invoke(*run).exit_code == 0  # the next ordinary run


def reseal(folder: Path, *names: str) -> None:
    """Rewrite the manifest's digests of `names` (and its seal) as a hostile builder would."""
    from vtpexport.files import sha256

    craft(folder, lambda manifest: manifest["files"].update({name: sha256(folder / name) for name in names}))


def test_garbage_or_swapped_graphs_are_one_line(export, image):
    run = ["run", export, "--image", image, "--prompt", "What?", "--max-new-tokens", 1]
    vision = (export / "vision.onnx").read_bytes()
    (export / "vision.onnx").write_bytes(b"\x08garbage, not a protobuf")
    reseal(export, "vision.onnx")
    refused(invoke(*run), f"ONNX Runtime cannot load {export / 'vision.onnx'}")
    refused(invoke("lint", export), f"cannot lint {export / 'vision.onnx'}: not a readable ONNX model")

    shutil.copy(export / "llm.onnx", export / "vision.onnx")  # loads, but takes other inputs
    reseal(export, "vision.onnx")
    refused(invoke(*run), f"ONNX Runtime cannot run {export / 'vision'}.onnx")

    (export / "vision.onnx").write_bytes(vision)
    reseal(export, "vision.onnx")
    assert invoke(*run).exit_code == 0  # the next ordinary run


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` but holds almost no pixel data: it can be refused
    only from its header (decoding would fail as truncated instead)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )


OVERSIZED = {
    "pixels": ((7000, 7500), "7000 x 7500 pixels, over the limit"),
    "side": ((9000, 600), "9000 x 600 pixels, over the limit"),
    "aspect": ((6300, 300), "more elongated than 20:1"),
    "PIL's own bomb limit": ((20000, 20000), "too large to decode safely"),
}


def test_oversized_images_are_refused_from_their_header(tmp_path, export):
    recipe = tmp_path / "fastv.yaml"
    from vtpexport.models.loader import architecture
    from vtpexport.recipe import ModelRef, Recipe, ScheduleSpec

    args = architecture(MODEL)
    Recipe("fastv", ModelRef(args.family, MODEL, args.config_hash()), None, ScheduleSpec("fastv")).save(recipe)
    for (width, height), message in OVERSIZED.values():
        path = tmp_path / f"{width}x{height}.png"
        path.write_bytes(png_header(width, height))
        question = ["--image", path, "--prompt", "What?"]
        refused(invoke("run", "--model", MODEL, *question), str(path), message)
        refused(invoke("viz", "--recipe", recipe, *question, "--out", tmp_path / "v.png"), str(path), message)
    assert not (tmp_path / "v.png").exists()
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"image": str(path), "question": "What?"}) + "\n")  # the last, PIL's bomb
    for command in (
        ["bench", export, "--baseline", export, "--image", path, "--prompt", "What?"],
        ["eval", export, "--data", data],
        ["verify", export, "--data", data],
    ):
        refused(invoke(*command), str(path), message)


def test_an_elongated_image_costs_no_memory(tmp_path, image):
    """1 x 40000 pixels is 196 bytes of PNG; resized to the model's 336-pixel short side it
    would be 13 million pixels long (gigabytes). Refused, the run's peak memory does not move."""
    import resource

    from PIL import Image

    path = tmp_path / "strip.png"
    Image.new("RGB", (40000, 1)).save(path)
    assert invoke("run", "--model", MODEL, "--image", image, "--prompt", "What?", "--max-new-tokens", 1).exit_code == 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, after an ordinary run
    refused(invoke("run", "--model", MODEL, "--image", path, "--prompt", "What?"), str(path), "40000 x 1 pixels")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 100 << 10


def test_skip_bad_skips_and_counts_oversized_images(tmp_path, image):
    (tmp_path / "huge.png").write_bytes(png_header(20000, 20000))
    shutil.copy(image, tmp_path / "good.png")
    rows = [{"image": name, "question": "What?"} for name in ("good.png", "huge.png")]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    calibrate = ["calibrate", "--model", MODEL, "--flops-budget", 0.5, "--samples", 2, "--data", data]
    out = tmp_path / "r.yaml"
    refused(invoke(*calibrate, "--out", out), str(tmp_path / "huge.png"), "too large to decode safely")
    assert not out.exists()
    result = invoke(*calibrate, "--out", out, "--skip-bad")
    assert result.exit_code == 0, result.output
    assert "1 used, 1 skipped" in result.output


def test_calibrate_overwrites_a_recipe_only_with_force(tmp_path):
    out = tmp_path / "r.yaml"
    calibrate = ["calibrate", "--model", "llava-1.5-7b", "--method", "fastv", "--flops-budget", 0.5, "--out", out]
    assert invoke(*calibrate).exit_code == 0
    written = out.read_bytes()
    refused(invoke(*calibrate), f"{out} already exists; pass --force")
    assert out.read_bytes() == written
    assert invoke(*calibrate, "--force").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def test_recipe_names_never_pick_a_folder_outside_exported(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("../escape", "/tmp/escape", "a/b"):
        recipe = tmp_path / "evil.yaml"
        recipe.write_text(
            "version: 1\n"
            f"name: {json.dumps(name)}\n"
            "model: {family: llava-1.5, name: tiny-llava-1.5, config_hash: 0123456789abcdef}\n"
        )
        refused(invoke("build", "--recipe", recipe), str(recipe), "name must be a name of letters")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.yaml"]


def test_force_replaces_only_our_own_folders(export, tmp_path):
    unrelated = tmp_path / "photos"
    unrelated.mkdir()
    (unrelated / "holiday.jpg").write_bytes(b"precious")
    before = snapshot(tmp_path)
    build = ["build", "--model", MODEL, "--no-prune", "--force"]
    refused(invoke(*build, "--out", unrelated), f"{unrelated} is not a vtpexport export: --force replaces only those")
    refused(invoke(*build, "--out", unrelated / "holiday.jpg"), "holiday.jpg is not a vtpexport export")
    refused(
        invoke("build", "--from", export, "--triton-repo", unrelated, "--force"),
        f"{unrelated} is not a vtpexport Triton repository",
    )
    assert snapshot(tmp_path) == before

    repo = tmp_path / "triton"
    assert invoke("build", "--from", export, "--triton-repo", repo).exit_code == 0
    refused(invoke("build", "--from", export, "--triton-repo", repo), f"{repo} already exists; pass --force")
    assert invoke("build", "--from", export, "--triton-repo", repo, "--force").exit_code == 0


def test_a_second_build_into_one_folder_is_refused_while_the_first_runs(export, tmp_path):
    import fcntl
    import os

    out = tmp_path / "out"
    lock = os.open(tmp_path / ".out.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)  # as the first build holds it
    try:
        refused(invoke("build", "--from", export, "--triton-repo", out), f"another vtpexport process is writing {out}")
        refused(invoke("build", "--model", MODEL, "--no-prune", "--out", out), "another vtpexport process is writing")
    finally:
        os.close(lock)
    assert not out.exists()


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "without renameat2"])
def test_a_folder_that_appears_during_a_build_is_kept(renameat2, export, tmp_path, monkeypatch):
    import vtpexport.export.triton as triton
    import vtpexport.files as files

    if not renameat2:
        monkeypatch.setattr(files, "_LIBC", object())  # a libc without it (macOS, musl before 1.2)
    repo = tmp_path / "triton"
    real_config = triton.graph_config

    def appears(*args):
        repo.mkdir(exist_ok=True)
        (repo / "theirs").write_text("someone else's")
        return real_config(*args)

    with monkeypatch.context() as patch:
        patch.setattr(triton, "graph_config", appears)
        line = refused(invoke("build", "--from", export, "--triton-repo", repo))
    assert line.startswith(f"error: {repo} appeared while the Triton repository was being written"), line
    assert [p.name for p in repo.iterdir()] == ["theirs"]

    # An empty folder made between the last check and the rename: the rename itself refuses it.
    shutil.rmtree(repo)
    real_check = files._check_replaceable
    checks = []

    def then_appears(out, *args, **kwargs):
        exists = real_check(out, *args, **kwargs)
        checks.append(out)
        if len(checks) == 2:
            out.mkdir()
        return exists

    monkeypatch.setattr(files, "_check_replaceable", then_appears)
    refused(invoke("build", "--from", export, "--triton-repo", repo), f"{repo} appeared while")
    assert list(repo.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "triton"]


def full_disk(after: int = 0):
    """A `write(stream)` wrapper for files.write_atomically that runs out of space after `after` calls."""
    import errno
    import os

    calls = []

    def wrap(real):
        def write_atomically(path, write, what, replace=True):
            calls.append(path)
            if len(calls) <= after:
                return real(path, write, what, replace)

            def half_then_full(stream):
                stream.write(b"half an engine")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            return real(path, half_then_full, what, replace)

        return write_atomically

    return wrap


def test_a_full_disk_leaves_nothing_half_written(export, tmp_path, monkeypatch):
    import errno
    import os
    import sys

    from fake_tensorrt import fake_tensorrt

    import vtpexport.export.build as build
    import vtpexport.export.tensorrt as tensorrt_build
    import vtpexport.export.triton as triton

    before = snapshot(tmp_path)
    no_space = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    # The ONNX export: whatever it had written into its staging folder goes with it.
    def export_all(model, recipe, specs, staging, *args):
        (staging / "vision.onnx").write_bytes(b"half a graph")
        raise no_space

    monkeypatch.setattr(build, "export_all", export_all)
    out = tmp_path / "out"
    refused(invoke("build", "--model", MODEL, "--no-prune", "--out", out), f"cannot write the export to {out}")
    refused(invoke("build", "--model", MODEL, "--no-prune", "--out", out), "No space left on device")

    # A Triton repository, full after its first file.
    real_copy = shutil.copy2
    copies = []

    def copy2(source, target):
        copies.append(target)
        if len(copies) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        return real_copy(source, target)

    monkeypatch.setattr(triton.shutil, "copy2", copy2)
    repo = tmp_path / "triton"
    refused(invoke("build", "--from", export, "--triton-repo", repo), f"cannot write the Triton repository to {repo}")
    monkeypatch.setattr(triton.shutil, "copy2", real_copy)

    # TensorRT engines (a fake TensorRT), full at the second engine: no engine, no partial file.
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("11.1.0"))
    monkeypatch.setattr(tensorrt_build, "cuda_device", lambda: ("Fake GPU", "8.9"))
    monkeypatch.setattr(tensorrt_build, "write_atomically", full_disk(1)(tensorrt_build.write_atomically))
    refused(invoke("build", "--from", export, "--engine", "trt"), "cannot write the llm engine", "No space left")
    assert snapshot(tmp_path) == before
    monkeypatch.undo()
    assert invoke("verify", export, "--max-new-tokens", 1).exit_code == 0  # the next ordinary run


def test_a_bad_cache_folder_is_one_line(tmp_path, image, monkeypatch):
    import errno
    import os

    import vtpexport.files as files

    run = ["run", "--model", MODEL, "--image", image, "--prompt", "What?", "--max-new-tokens", 1]
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file")
    monkeypatch.setenv("VTPEXPORT_CACHE", str(not_a_folder))
    refused(invoke(*run), f"cannot write built-in model {MODEL} to the cache {not_a_folder} ($VTPEXPORT_CACHE)")

    read_only = tmp_path / "read-only"
    monkeypatch.setenv("VTPEXPORT_CACHE", str(read_only))

    def mkdtemp(**kwargs):  # root ignores permissions, so the read-only filesystem is simulated
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), kwargs["dir"])

    monkeypatch.setattr(files.tempfile, "mkdtemp", mkdtemp)
    refused(invoke(*run), f"the cache {read_only} ($VTPEXPORT_CACHE)", "Read-only file system")
    assert not_a_folder.read_text() == "a file" and not list((read_only / "builtin").iterdir())
