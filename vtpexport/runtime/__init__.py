"""Runners: the eager reference (`eager`) and the exported graphs (`exported`: ONNX Runtime in
`ort`, our TensorRT engines in `trt`), chosen by `open_runner`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing a runner module loads its engine; only the chosen one is
    from .exported import ExportRunner


def open_runner(folder: str | Path, backend: str = "ort") -> ExportRunner:
    """The runner for `backend`: TensorRT engines (trt) or ONNX Runtime with an execution provider."""
    if backend == "trt":
        from .trt import TrtRunner

        return TrtRunner(folder)
    from .ort import OrtRunner

    return OrtRunner(folder, backend)
