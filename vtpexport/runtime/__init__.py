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


def check_backend(folder: str | Path, manifest: dict, backend: str = "ort") -> None:
    """Fail in one line, before any model is loaded, when this machine cannot run `backend` on the
    export (no such execution provider; no TensorRT, GPU or matching engines)."""
    if backend == "trt":
        from .trt import check_engines_run_here

        check_engines_run_here(Path(folder), manifest)
    else:
        from .ort import check_provider

        check_provider(backend)


def answer(runner, image, prompt: str, max_new_tokens: int) -> tuple[str, str | None]:
    """One greedy answer from any runner (eager or exported), and a warning when the model
    declares the questions it knows and this is none of them."""
    from ..models.question_templates import outside_templates

    tokens = runner.generate(runner.prepare([image], [prompt], max_new_tokens), max_new_tokens)[0]
    text = runner.tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return text, outside_templates(runner.folder, prompt)
