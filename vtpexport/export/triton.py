"""`--triton-repo DIR`: a Triton Inference Server model repository for an export.

One model per graph (TensorRT plan when the export has engines, else the ONNX file on the
onnxruntime backend), its inputs and outputs declared from the manifest (the one LLM engine
with its context and generation profiles), and a Python-backend
model (`serving/triton_model.py`) that generates over them through BLS requests.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from ..errors import UserError
from ..files import folder_atomically
from ..safety import inside
from .manifest import MANIFEST, export_file, folder_differences, is_export, read_manifest

TRITON_TYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "bfloat16": "TYPE_BF16",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "bool": "TYPE_BOOL",
}
GENERATE = "generate"
GRAPH_SUFFIXES = (".onnx", ".onnx.data", ".plan")


def _tensor(name: str, dtype: str, dims: list) -> str:
    shape = ", ".join("-1" if isinstance(d, str) else str(d) for d in dims)
    return f'  {{\n    name: "{name}"\n    data_type: {dtype}\n    dims: [ {shape} ]\n  }}'


def _section(kind: str, tensors: list[str]) -> str:
    return f"{kind} [\n" + ",\n".join(tensors) + "\n]\n"


def graph_config(model: str, graph: dict, engine: bool) -> str:
    """config.pbtxt of one graph model; dynamic dimensions are -1 (batching is in the graphs' own dims)."""
    header = f'name: "{model}"\n'
    if engine:
        header += 'platform: "tensorrt_plan"\ndefault_model_filename: "model.plan"\n'
    else:
        header += 'backend: "onnxruntime"\ndefault_model_filename: "model.onnx"\n'
    header += "max_batch_size: 0\n"

    def tensors(kind: str) -> list[str]:
        return [_tensor(t["name"], TRITON_TYPES[t["dtype"]], t["dims"]) for t in graph[kind]]

    text = header + _section("input", tensors("inputs")) + _section("output", tensors("outputs"))
    if engine:  # an engine runs on the GPU it was built for
        # The LLM engine's profiles (context, generation) by index; Triton runs each request on the one its shapes fit.
        profiles = "".join(f"    profile: {json.dumps(str(i))}\n" for i in range(len(graph["profiles"])))
        text += f"instance_group [\n  {{\n    kind: KIND_GPU\n    count: 1\n{profiles}  }}\n]\n"
    return text


def generate_config(model: str, graph_models: dict[str, str]) -> str:
    inputs = [
        _tensor("image", "TYPE_UINT8", ["height", "width", 3]),
        _tensor("prompt", "TYPE_STRING", [1]),
        _tensor("max_new_tokens", "TYPE_INT32", [1]).replace("  }", "    optional: true\n  }"),
    ]
    parameter = json.dumps(json.dumps(graph_models))  # a JSON object inside a protobuf string
    return (
        f'name: "{model}"\nbackend: "python"\nmax_batch_size: 0\n'
        + _section("input", inputs)
        + _section("output", [_tensor("text", "TYPE_STRING", [1])])
        + f'parameters {{\n  key: "graph_models"\n  value: {{ string_value: {parameter} }}\n}}\n'
    )


def is_triton_repo(folder: Path) -> bool:
    """Whether `folder` is a repository this tool wrote (its generate model carries an export)."""
    return any(is_export(export) for export in folder.glob(f"*_{GENERATE}/1/export"))


def write_triton_repo(export_dir: str | Path, repo_dir: str | Path, force: bool = False) -> Path:
    """Write the repository (assembled in a temporary folder, renamed into place); returns it."""
    export_dir, repo_dir = Path(export_dir), Path(repo_dir)
    manifest = read_manifest(export_dir)
    changed = folder_differences(export_dir, manifest)
    if changed:
        raise UserError(f"{export_dir} does not match its manifest: {', '.join(changed)}")
    prefix = re.sub(r"[^A-Za-z0-9_-]", "_", manifest["name"])
    engines = (manifest.get("tensorrt") or {}).get("engines", {})
    with folder_atomically(repo_dir, force, "the Triton repository", is_triton_repo) as staging:
        graph_models = {}
        for graph, info in manifest["graphs"].items():
            model = graph_models[graph] = f"{prefix}_{graph}"
            version = inside(staging, model, "Triton model name") / "1"
            version.mkdir(parents=True)
            if graph in engines:
                engine = export_file(export_dir, engines[graph], f"tensorrt.engines.{graph}")
                shutil.copy2(engine, version / "model.plan")
            else:
                graph_file = export_file(export_dir, info["file"], f"graphs.{graph}.file")
                shutil.copy2(graph_file, version / "model.onnx")
                for data in manifest["files"]:  # external weights keep their file name
                    if data == f"{info['file']}.data":
                        shutil.copy2(export_file(export_dir, data, "files"), version / Path(data).name)
            (version.parent / "config.pbtxt").write_text(graph_config(model, info, graph in engines))
        model = f"{prefix}_{GENERATE}"
        version = inside(staging, model, "Triton model name") / "1"
        (version / "export").mkdir(parents=True)
        shutil.copy2(Path(__file__).parent.parent / "serving" / "triton_model.py", version / "model.py")
        for name in [*manifest["files"], MANIFEST]:
            if not name.endswith(GRAPH_SUFFIXES):
                target = inside(version / "export", name, "manifest.json files")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(export_file(export_dir, name, "files"), target)
        (staging / model / "config.pbtxt").write_text(generate_config(model, graph_models))
    return repo_dir
