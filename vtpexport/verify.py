"""`vtpexport verify`: the exported graphs against our eager reference on the same inputs.

A comparator of two runners, in the manner of Polygraphy's: the reference runner (our eager
graph, in the export's precision) runs over every sample first and only its outputs are kept
(text and vision embeddings, prefill logits, the logits of each decode step driven by its own
greedy tokens, its generations, and the prepared batch the export's LLM graph is fed); the model
is then released before the export's runner is opened, so the process never holds both. Each
output is compared with its own tolerance: an element passes when |ours - reference| <= atol +
rtol * |reference|.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .dataset import load_samples, read_dataset
from .errors import UserError
from .export.manifest import check_export_model, export_model_spec, folder_differences, read_manifest
from .export.precision import precision
from .models.loader import load_model
from .models.text_encoder import attach_text_encoder
from .progress import track
from .runtime import check_backend, open_runner
from .runtime.batch import PreparedBatch, default_stops, greedy_loop, image_token_groups, subset_rows
from .runtime.eager import EagerRunner
from .runtime.exported import export_recipe, to_numpy

DEFAULT_QUESTIONS = ["What is in the picture?", "How many shapes are there?", "Describe the colours."]
# The compared outputs: the text encoder's and vision graph's embeddings, the LLM graph's logits
# in its context (prefill) and generation (decode) phases.
OUTPUTS = ("text_encoder", "vision", "prefill", "decode")


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float

    def outside(self, ours: np.ndarray, reference: np.ndarray) -> int:
        """How many elements fail |ours - reference| <= atol + rtol * |reference|."""
        return int((np.abs(ours - reference) > self.atol + self.rtol * np.abs(reference)).sum())


def tolerance_overrides(values: Sequence[str], option: str) -> dict[str | None, float]:
    """`--atol 1e-3` (every output) and `--atol prefill:1e-3` (one output) as {None: 1e-3, "prefill": 1e-3}."""
    overrides: dict[str | None, float] = {}
    for value in values:
        name, _, number = value.rpartition(":")
        if name and name not in OUTPUTS:
            raise UserError(f"{option} {value}: {name!r} is not one of {', '.join(OUTPUTS)}")
        try:
            overrides[name or None] = float(number)
        except ValueError:
            raise UserError(f"{option} {value}: give a number, or OUTPUT:NUMBER (e.g. prefill:1e-3)") from None
        if overrides[name or None] < 0:
            raise UserError(f"{option} {value}: a tolerance cannot be negative")
    return overrides


@dataclass
class GraphCheck:
    graph: str
    tolerance: Tolerance
    scale: float = 1.0  # what the default atol was multiplied by (the reference output's RMS, where above 1)
    max_abs_error: float = 0.0
    top1_agreement: float | None = None  # fraction of logit rows whose argmax agrees
    compared: int = 0
    outside: int = 0  # elements outside atol + rtol * |reference|

    @property
    def passed(self) -> bool:
        return self.outside == 0

    def add(self, ours: np.ndarray, reference: np.ndarray, logits: bool) -> None:
        ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
        self.max_abs_error = max(self.max_abs_error, float(np.abs(ours - reference).max(initial=0.0)))
        self.outside += self.tolerance.outside(ours, reference)
        if logits:
            agree = (ours.argmax(-1) == reference.argmax(-1)).astype(float)
            total = (self.top1_agreement or 0.0) * self.compared + agree.sum()
            self.compared += agree.size
            self.top1_agreement = total / self.compared
        else:
            self.compared += 1


@dataclass
class VerifyReport:
    default: Tolerance  # the export precision's, for outputs the command line did not name
    samples: int = 0
    graphs: dict[str, GraphCheck] = field(default_factory=dict)
    generations_identical: bool = True
    changed_files: list[str] = field(default_factory=list)  # removed, changed, added files and links

    @property
    def tolerance(self) -> float:
        """The default absolute tolerance."""
        return self.default.atol

    @property
    def passed(self) -> bool:
        return not self.changed_files and self.generations_identical and all(g.passed for g in self.graphs.values())


def verify_view(report: VerifyReport):
    """Per graph: max abs error, its atol / rtol, elements outside them, top-1 agreement, count; the verdict."""
    from rich.console import Group
    from rich.table import Table

    columns = ("graph", "max abs error", "atol", "rtol", "outside", "top-1 agreement", "compared")
    table = Table(*columns, title=f"{report.samples} samples")
    for check in report.graphs.values():
        agreement = "-" if check.top1_agreement is None else f"{check.top1_agreement:.1%}"
        tolerance = check.tolerance
        table.add_row(
            check.graph,
            f"{check.max_abs_error:.2e}",
            f"{tolerance.atol:.3g}"
            + (f" ({report.default.atol:g} x RMS {check.scale:.3g})" if check.scale > 1 else ""),
            f"{tolerance.rtol:g}",
            str(check.outside),
            agreement,
            str(check.compared),
        )
    return Group(
        table,
        f"greedy generations identical: {'yes' if report.generations_identical else 'NO'}",
        f"verify {'passed' if report.passed else 'FAILED'} (an element passes when |export - eager| <= atol + "
        f"rtol * |eager|; default atol {report.default.atol:g} x the output's RMS where above 1, "
        f"rtol {report.default.rtol:g})",
    )


def synthetic_samples() -> list[tuple[Image.Image, str]]:
    """Deterministic images of different sizes (so LLaVA-NeXT sees different tile grids)."""
    rng = np.random.default_rng(0)
    sizes = [(60, 90), (90, 60), (64, 64)]
    return [
        (Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), question)
        for (h, w), question in zip(sizes, DEFAULT_QUESTIONS, strict=True)
    ]


@dataclass
class DecodeRun:
    """The reference's prefill and decode of one group of rows of equal image token count."""

    rows: list[int]
    prefill_logits: np.ndarray  # [B, V]
    tokens: list[torch.Tensor] = field(default_factory=list)  # [B] fed to each decode step (the reference's argmax)
    step_logits: list[np.ndarray] = field(default_factory=list)  # [B, V] each step returned


@dataclass
class ReferenceOutputs:
    """All the reference computed: what remains of it once its model is released."""

    text_embeds: list[np.ndarray]  # per sample, when the export has a text encoder
    image_embeds: list[np.ndarray]  # per sample
    batch: PreparedBatch  # the samples' prompts and the reference's image tokens: the LLM graph's inputs
    runs: list[DecodeRun]
    generations: list[list[int]]

    def output_scales(self) -> dict[str, float]:
        """Per output, what its default atol is multiplied by: its RMS over every sample, where
        above 1. Two correct fp32 computations differ by rounding that grows with the magnitude
        of what they sum, which the output's RMS follows, not with one element's own value (a
        near-cancellation): LLaVA-HR's vision embeddings (ConvNeXt-L and ViT-L at 1024 px, RMS
        4.8 at real width with random weights) differ between torch and ONNX Runtime by up to
        2.5e-5 x RMS, 1.2e-4, beside elements of 1.5."""
        outputs = {
            "text_encoder": self.text_embeds,
            "vision": self.image_embeds,
            "prefill": [run.prefill_logits for run in self.runs],
            "decode": [logits for run in self.runs for logits in run.step_logits],
        }
        return {name: max(1.0, _rms(arrays)) for name, arrays in outputs.items()}


def _rms(arrays: list[np.ndarray]) -> float:
    squares = sum(float(np.square(a, dtype=np.float64).sum()) for a in arrays)
    count = sum(a.size for a in arrays)
    return math.sqrt(squares / count) if count else 0.0


@torch.no_grad()
def run_reference(
    reference: EagerRunner, samples: list[tuple[Image.Image, str]], max_new_tokens: int, text: bool, progress: bool
) -> ReferenceOutputs:
    images, questions = [s[0] for s in samples], [s[1] for s in samples]
    text_embeds = [reference.text_embeddings(question) for question in questions] if text else []
    image_embeds = [
        to_numpy(reference.image_embeddings(image, question))
        for image, question in track(samples, "reference: vision", len(samples), "image", progress)
    ]
    batch = reference.prepare(images, questions, max_new_tokens)
    runs = []
    generations: list[list[int]] = [[] for _ in images]
    stops = default_stops(reference.tokenizer)
    groups = image_token_groups(batch)
    for members in track(groups, "reference: prefill and decode", len(groups), "batch", progress):
        outputs = reference.prefill(subset_rows(batch, members))
        logits = [outputs["logits"]]
        run = DecodeRun(members, to_numpy(outputs["logits"]))
        token = outputs["logits"].argmax(-1)
        for _ in range(max_new_tokens - 1):
            outputs = reference.decode(token, outputs)
            run.tokens.append(token)
            logits.append(outputs["logits"])
            run.step_logits.append(to_numpy(outputs["logits"]))
            token = outputs["logits"].argmax(-1)
        runs.append(run)
        # These steps are the reference's greedy generation (every row fed its own argmax), so the
        # shared greedy loop replayed over their logits gives its generations without a second run.
        recorded = iter(logits[1:])
        rows = greedy_loop(logits[0], lambda _, recorded=recorded: next(recorded), max_new_tokens, stops)
        for row, tokens in zip(members, rows, strict=True):
            generations[row] = tokens
    return ReferenceOutputs(text_embeds, image_embeds, batch, runs, generations)


def compare(
    reference: ReferenceOutputs,
    runner,
    samples: list[tuple[Image.Image, str]],
    max_new_tokens: int,
    checks: dict[str, GraphCheck],
    progress: bool,
) -> bool:
    """The runner on the reference's inputs, into `checks`; whether its greedy generations are the reference's."""
    if "text_encoder" in checks:
        for (_, question), expected in zip(samples, reference.text_embeds, strict=True):
            checks["text_encoder"].add(runner.text_embeddings(question), expected, False)
    for (image, question), expected in zip(
        track(samples, "export: vision", len(samples), "image", progress), reference.image_embeds, strict=True
    ):
        checks["vision"].add(to_numpy(runner.image_embeddings(image, question)), expected, False)
    for run in track(reference.runs, "export: prefill and decode", len(reference.runs), "batch", progress):
        # Both sides take the same inputs; decode is driven by the reference's greedy tokens.
        outputs = runner.prefill(subset_rows(reference.batch, run.rows))
        checks["prefill"].add(outputs["logits"], run.prefill_logits, True)
        for token, expected in zip(run.tokens, run.step_logits, strict=True):
            outputs = runner.decode(token, outputs)
            checks["decode"].add(outputs["logits"], expected, True)
    images, questions = [s[0] for s in samples], [s[1] for s in samples]
    generated = runner.generate(runner.prepare(images, questions, max_new_tokens), max_new_tokens)
    return generated == reference.generations


def verify_export(
    folder: str | Path,
    model_spec: str | None = None,
    weights: str | None = None,
    data: str | None = None,
    max_new_tokens: int = 20,
    atol: dict[str | None, float] | None = None,
    rtol: dict[str | None, float] | None = None,
    backend: str = "ort",
    progress: bool = False,
) -> VerifyReport:
    """atol / rtol: per output (OUTPUTS; the key None: every output the dict does not name);
    default the export precision's."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    export_precision = precision(manifest["precision"])
    atol, rtol = atol or {}, rtol or {}
    default = Tolerance(atol.get(None, export_precision.verify_tolerance), rtol.get(None, export_precision.verify_rtol))
    report = VerifyReport(default)
    report.changed_files = folder_differences(folder, manifest)
    if report.changed_files:
        return report
    check_backend(folder, manifest, backend)  # before minutes of reference: this machine runs the export
    if data:
        loaded = load_samples(read_dataset(data))
        samples = list(zip(loaded.images, loaded.questions, strict=True))
    else:
        samples = synthetic_samples()
    report.samples = len(samples)
    outputs = [name for name in OUTPUTS if name != "text_encoder" or manifest.get("text_encoder")]

    # The eager reference runs in the export's precision, so that only the export's error is measured.
    model = load_model(model_spec or export_model_spec(manifest), weights, export_precision.torch_dtype)
    check_export_model(folder, manifest, model)
    if manifest.get("text_encoder"):
        attach_text_encoder(model, manifest["text_encoder"]["source"])
    reference = EagerRunner(model, export_recipe(folder))
    expected = run_reference(reference, samples, max_new_tokens, "text_encoder" in outputs, progress)
    del reference, model
    gc.collect()  # the reference's weights go before the export's are loaded

    scales = expected.output_scales()
    for name in outputs:
        # The precision's default atol follows the output's magnitude; one given on the command line is absolute.
        scale = 1.0 if name in atol or None in atol else scales[name]
        tolerance = Tolerance(atol.get(name, default.atol * scale), rtol.get(name, default.rtol))
        report.graphs[name] = GraphCheck(name, tolerance, scale)

    runner = open_runner(folder, backend)
    report.generations_identical = compare(expected, runner, samples, max_new_tokens, report.graphs, progress)
    return report
