"""Run an export folder with ONNX Runtime: the same interface as the eager reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError, one_line
from ..export.manifest import RUNTIME_CACHES, export_file
from ..export.tensorrt import engine_profiles
from .exported import ExportRunner

PROVIDERS = {
    "ort": ["CPUExecutionProvider"],
    "ort-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "ort-trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def tensorrt_provider_options(folder: Path, manifest: dict, graph: str) -> dict[str, str]:
    """ONNX Runtime's TensorRT provider options for one graph: the export's optimization profile
    (without it the provider rebuilds an engine for every new shape) and an engine cache."""
    profile = engine_profiles(manifest)[graph]

    def shapes(corner: str) -> str:
        return ",".join(f"{name}:{'x'.join(map(str, getattr(p, corner)))}" for name, p in profile.items())

    return {
        "trt_profile_min_shapes": shapes("min"),
        "trt_profile_opt_shapes": shapes("opt"),
        "trt_profile_max_shapes": shapes("max"),
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(folder / RUNTIME_CACHES[0]),  # not part of the manifest
    }


class OrtRunner(ExportRunner):
    """Vision / prefill / decode ONNX Runtime sessions of an export folder."""

    def __init__(self, folder: str | Path, backend: str = "ort", session_config: dict[str, str] | None = None):
        """session_config: ONNX Runtime session config entries (e.g. to turn thread spinning off)."""
        import onnxruntime as ort

        super().__init__(folder)
        available = set(ort.get_available_providers())
        wanted = PROVIDERS[backend][0]
        if wanted not in available:
            raise UserError(f"ONNX Runtime here has no {wanted} (available: {', '.join(sorted(available))})")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        for key, value in (session_config or {}).items():
            options.add_session_config_entry(key, value)
        self.sessions = {}
        for name, graph in self.manifest["graphs"].items():
            providers = [p for p in PROVIDERS[backend] if p in available]
            if backend == "ort-trt":
                providers[0] = (providers[0], tensorrt_provider_options(self.folder, self.manifest, name))
            path = export_file(self.folder, graph["file"], f"graphs.{name}.file")
            try:
                session = ort.InferenceSession(str(path), options, providers=providers)
            except Exception as error:  # ONNX Runtime's errors share no base class; anything here is its
                raise UserError(f"ONNX Runtime cannot load {path}: {one_line(error)}") from None
            # A listed provider whose libraries are missing is dropped silently: say so instead.
            if wanted not in session.get_providers():
                raise UserError(
                    f"ONNX Runtime could not start {wanted} for {graph['file']} (CUDA / TensorRT libraries?)"
                )
            self.sessions[name] = session

    def run_graph(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.sessions[graph]
        names = [o.name for o in session.get_outputs()]
        try:
            outputs = session.run(names, feeds)
        except Exception as error:  # e.g. a graph swapped for one that takes other inputs
            raise UserError(f"ONNX Runtime cannot run {self.folder / graph}.onnx: {one_line(error)}") from None
        return dict(zip(names, outputs, strict=True))
