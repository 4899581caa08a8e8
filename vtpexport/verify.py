"""`vtpexport verify`: the exported graphs against our eager reference on the same inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .dataset import load_samples, read_dataset
from .export.manifest import check_export_model, export_model_spec, folder_differences, read_manifest
from .export.precision import precision
from .models.loader import load_model
from .models.text_encoder import attach_text_encoder
from .progress import track
from .runtime import open_runner
from .runtime.batch import PreparedBatch, image_token_groups, subset_rows
from .runtime.eager import greedy_generate, image_embeddings, prefill, prepare

DEFAULT_QUESTIONS = ["What is in the picture?", "How many shapes are there?", "Describe the colours."]


@dataclass
class GraphCheck:
    graph: str
    max_abs_error: float = 0.0
    top1_agreement: float | None = None  # fraction of logit rows whose argmax agrees
    compared: int = 0

    def add(self, ours: np.ndarray, reference: np.ndarray, logits: bool) -> None:
        self.max_abs_error = max(self.max_abs_error, float(np.abs(ours - reference).max(initial=0.0)))
        if logits:
            agree = (ours.argmax(-1) == reference.argmax(-1)).astype(float)
            total = (self.top1_agreement or 0.0) * self.compared + agree.sum()
            self.compared += agree.size
            self.top1_agreement = total / self.compared
        else:
            self.compared += 1


@dataclass
class VerifyReport:
    tolerance: float
    samples: int = 0
    graphs: dict[str, GraphCheck] = field(default_factory=dict)
    generations_identical: bool = True
    changed_files: list[str] = field(default_factory=list)  # removed, changed, added files and links

    @property
    def passed(self) -> bool:
        return (
            not self.changed_files
            and self.generations_identical
            and all(g.max_abs_error <= self.tolerance for g in self.graphs.values())
        )


def verify_view(report: VerifyReport):
    """Per graph: max abs error, top-1 agreement and the count compared; then the verdict."""
    from rich.console import Group
    from rich.table import Table

    table = Table("graph", "max abs error", "top-1 agreement", "compared", title=f"{report.samples} samples")
    for check in report.graphs.values():
        agreement = "-" if check.top1_agreement is None else f"{check.top1_agreement:.1%}"
        table.add_row(check.graph, f"{check.max_abs_error:.2e}", agreement, str(check.compared))
    return Group(
        table,
        f"greedy generations identical: {'yes' if report.generations_identical else 'NO'}",
        f"verify {'passed' if report.passed else 'FAILED'} (tolerance {report.tolerance:g})",
    )


def synthetic_samples() -> list[tuple[Image.Image, str]]:
    """Deterministic images of different sizes (so LLaVA-NeXT sees different tile grids)."""
    rng = np.random.default_rng(0)
    sizes = [(60, 90), (90, 60), (64, 64)]
    return [
        (Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), question)
        for (h, w), question in zip(sizes, DEFAULT_QUESTIONS, strict=True)
    ]


def verify_export(
    folder: str | Path,
    model_spec: str | None = None,
    weights: str | None = None,
    data: str | None = None,
    max_new_tokens: int = 20,
    tolerance: float | None = None,
    backend: str = "ort",
    progress: bool = False,
) -> VerifyReport:
    """tolerance: max abs error per graph; default the export precision's (1e-4 for fp32)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if tolerance is None:
        tolerance = precision(manifest["precision"]).verify_tolerance
    report = VerifyReport(tolerance)
    report.changed_files = folder_differences(folder, manifest)
    if report.changed_files:
        return report
    runner = open_runner(folder, backend)
    # The eager reference runs in the export's precision, so that only the export's error is measured.
    dtype = precision(manifest["precision"]).torch_dtype
    model = load_model(model_spec or export_model_spec(manifest), weights, dtype)
    check_export_model(folder, manifest, model)
    recipe = runner.recipe
    if data:
        loaded = load_samples(read_dataset(data))
        samples = list(zip(loaded.images, loaded.questions, strict=True))
    else:
        samples = synthetic_samples()
    images, questions = [s[0] for s in samples], [s[1] for s in samples]
    report.samples = len(samples)
    checks = {name: GraphCheck(name) for name in ("vision", "prefill", "decode")}
    if manifest.get("text_encoder"):
        attach_text_encoder(model, manifest["text_encoder"]["source"])
        checks["text_encoder"] = GraphCheck("text_encoder")
        for question in questions:
            checks["text_encoder"].add(
                runner.text_embeddings(question), model.text_encoder.embed([question]).numpy(), False
            )
    for image, question in track(samples, "verifying vision", len(samples), "image", progress):
        checks["vision"].add(
            runner.image_embeddings(image, question).numpy(),
            image_embeddings(model, image, recipe, question).numpy(),
            False,
        )
    batch = prepare(model, images, questions, max_new_tokens, recipe)
    schedule = recipe.schedule if recipe else None
    groups = image_token_groups(batch)
    for members in track(groups, "verifying prefill and decode", len(groups), "batch", progress):
        _compare_prefill_and_decode(runner, model, subset_rows(batch, members), schedule, max_new_tokens, checks)
    report.graphs = checks
    exported = runner.generate(runner.prepare(images, questions, max_new_tokens), max_new_tokens)
    report.generations_identical = exported == greedy_generate(model, batch, max_new_tokens, recipe=recipe)
    return report


@torch.no_grad()
def _compare_prefill_and_decode(runner, model, batch: PreparedBatch, schedule, steps: int, checks) -> None:
    """Both sides take the same inputs; decode is driven by the reference's greedy tokens."""
    outputs = runner.prefill(batch)
    reference = prefill(model, batch, schedule)
    checks["prefill"].add(outputs["logits"], reference.logits.numpy(), True)
    caches = reference.caches
    token = reference.logits.argmax(-1)
    for _ in range(steps - 1):
        outputs = runner.decode(token, outputs)
        step = model.graph.decode(token[:, None], caches)
        caches = step.caches
        checks["decode"].add(outputs["logits"], step.logits.numpy(), True)
        token = step.logits.argmax(-1)
