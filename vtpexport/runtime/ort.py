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
# Where each backend's outputs live: the caches stay there between steps (IOBinding).
DEVICES = {"ort": "cpu", "ort-cuda": "cuda", "ort-trt": "cuda"}


def tensorrt_provider_options(folder: Path, manifest: dict, graph: str) -> dict[str, str]:
    """ONNX Runtime's TensorRT provider options for one graph: the export's optimization profiles
    (without them the provider rebuilds an engine for every new shape; an input named once per
    profile gives it several) and an engine cache."""
    profiles = engine_profiles(manifest)[graph].values()

    def shapes(corner: str) -> str:
        return ",".join(
            f"{name}:{'x'.join(map(str, getattr(p, corner)))}" for profile in profiles for name, p in profile.items()
        )

    return {
        "trt_profile_min_shapes": shapes("min"),
        "trt_profile_opt_shapes": shapes("opt"),
        "trt_profile_max_shapes": shapes("max"),
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(folder / RUNTIME_CACHES[0]),  # not part of the manifest
    }


def check_provider(backend: str):
    """ONNX Runtime, imported, when it has the backend's execution provider; otherwise a one-line error."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    wanted = PROVIDERS[backend][0]
    if wanted not in available:
        raise UserError(f"ONNX Runtime here has no {wanted} (available: {', '.join(sorted(available))})")
    return ort


class OrtRunner(ExportRunner):
    """ONNX Runtime sessions of an export folder's graphs: vision, the LLM (one session for both
    phases, so its weights are loaded once) and the text encoder when there is one."""

    def __init__(self, folder: str | Path, backend: str = "ort", session_config: dict[str, str] | None = None):
        """session_config: ONNX Runtime session config entries (e.g. to turn thread spinning off)."""
        super().__init__(folder)
        ort = check_provider(backend)
        self.ort = ort
        self.device = DEVICES[backend]
        available = set(ort.get_available_providers())
        wanted = PROVIDERS[backend][0]
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

    def run_graph(self, graph: str, feeds: dict, profile: str | None = None) -> dict:
        """Run one session (the TensorRT provider picks the LLM's profile from the shapes). Feeds
        are numpy arrays or OrtValues (caches the last call returned); the caches come back as
        OrtValues on the provider's device, every other output as numpy."""
        session = self.sessions[graph]
        binding = session.io_binding()
        names = [o.name for o in session.get_outputs()]
        try:  # binding fails too on a graph swapped for one that takes other inputs
            for name, value in feeds.items():
                if isinstance(value, self.ort.OrtValue):
                    binding.bind_ortvalue_input(name, value)
                else:
                    binding.bind_cpu_input(name, np.ascontiguousarray(value))
            for name in names:
                binding.bind_output(name, self.device if name in self.cache_feedback else "cpu")
            session.run_with_iobinding(binding)
        except Exception as error:
            raise UserError(f"ONNX Runtime cannot run {self.folder / graph}.onnx: {one_line(error)}") from None
        values = binding.get_outputs()
        return {name: v if name in self.cache_feedback else v.numpy() for name, v in zip(names, values, strict=True)}
