"""`vtpexport eval`: what pruning costs in answers, against the unpruned model, per question type.

Each candidate is an export folder (run with ONNX Runtime) or a recipe (run eagerly with our
graph); all are compared against the unpruned model run eagerly once. Per sample:

- accuracy: the generated answer matches the labelled one, both normalised to their first word
  (lower case, letters and digits only) — the toy task's answers are single words;
- agreement: the normalised answer equals the unpruned model's (measured with or without labels);
- first-token KL divergence KL(unpruned || pruned) of the first generated position's
  distributions: how far pruning moves the model before any decoding choice.

Compute per candidate, averaged over the samples: the paper-convention visual-token LLM MACs as
a share of unpruned, the exact whole-model prefill MACs (flops.py; the samples' own prompt
lengths and image sizes), and the visual tokens entering the LLM and attended per layer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .dataset import Record, load_samples, read_dataset
from .errors import UserError
from .export.manifest import check_export_model, export_model_spec, read_manifest
from .files import write_atomically
from .flops import Compute, add_compute
from .models.loader import load_model
from .progress import progress_bar
from .recipe import Recipe
from .runtime.eager import EagerRunner

BATCH_SIZE = 8  # samples per prefill; rows of different image token counts still run apart
NO_TYPE = "(no type)"


def normalise_answer(text: str) -> str:
    """The first word of an answer, lower case, letters and digits only ("" if none)."""
    words = re.findall(r"[^\W_]+", text.lower())
    return words[0] if words else ""


def first_token_kl(reference: Tensor, logits: Tensor) -> float:
    """KL(reference || pruned) in nats between the softmax distributions of two logit rows [V]."""
    p = torch.log_softmax(reference.double(), dim=-1)
    q = torch.log_softmax(logits.double(), dim=-1)
    return float((p.exp() * (p - q)).sum())


@dataclass
class Scores:
    """Sums over a group of samples; rates come out as properties."""

    samples: int = 0
    labelled: int = 0
    correct: int = 0
    agree: int = 0
    kl_sum: float = 0.0

    def add(self, correct: bool | None, agrees: bool, kl: float) -> None:
        self.samples += 1
        self.labelled += correct is not None
        self.correct += bool(correct)
        self.agree += agrees
        self.kl_sum += kl

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def agreement(self) -> float:
        return self.agree / self.samples if self.samples else 0.0

    @property
    def first_token_kl(self) -> float:
        return self.kl_sum / self.samples if self.samples else 0.0

    def to_dict(self) -> dict:
        return {
            "samples": self.samples,
            "labelled": self.labelled,
            "accuracy": self.accuracy,
            "agreement": self.agreement,
            "first_token_kl": self.first_token_kl,
        }


@dataclass
class Entry:
    """One evaluated model: the unpruned reference or a candidate."""

    name: str
    source: str  # "unpruned", an export folder or a recipe file
    runtime: str  # "eager" (our graph) or "onnxruntime"
    recipe: str | None
    overall: Scores = field(default_factory=Scores)
    by_type: dict[str, Scores] = field(default_factory=dict)
    compute: Compute = field(default_factory=Compute)
    answers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "runtime": self.runtime,
            "recipe": self.recipe,
            "overall": self.overall.to_dict(),
            "by_type": {kind: scores.to_dict() for kind, scores in sorted(self.by_type.items())},
            "compute": self.compute.to_dict(),
            "answers": self.answers,
        }


@dataclass
class EvalReport:
    model: str
    data: str
    samples: int
    labelled: bool
    max_new_tokens: int
    entries: list[Entry]  # the unpruned reference first

    @property
    def metric(self) -> str:
        """What the plot and summary rank by: accuracy when the data is labelled."""
        return "accuracy" if self.labelled else "agreement"

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "data": self.data,
            "samples": self.samples,
            "labelled": self.labelled,
            "max_new_tokens": self.max_new_tokens,
            "metrics": {
                "accuracy": "normalised first-word match of the generated answer with the label",
                "agreement": "normalised first-word match with the unpruned model's answer",
                "first_token_kl": "KL(unpruned || pruned) of the first generated position, nats, mean",
                "paper_flops_ratio": "LLM MACs over visual tokens (FastV/PyramidDrop/FitPrune convention) / unpruned",
                "exact_prefill_ratio": "whole-model prefill MACs (vision, projector, LLM, lm_head) / unpruned",
            },
            "entries": [entry.to_dict() for entry in self.entries],
        }

    def write_json(self, path: str | Path) -> Path:
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        return write_atomically(path, lambda stream: stream.write(text.encode()), "the results")


@dataclass
class Candidate:
    """What one command-line argument names, before anything is loaded."""

    source: str
    recipe: Recipe | None
    manifest: dict | None  # an export folder's manifest; None for a recipe run eagerly

    @property
    def name(self) -> str:
        if self.manifest is not None:
            return self.manifest["name"]
        return self.recipe.name


def read_candidate(argument: str) -> Candidate:
    """An export folder (has manifest.json) or a recipe file."""
    path = Path(argument)
    if path.is_dir():
        manifest = read_manifest(path)
        recipe = Recipe.from_dict(manifest["recipe"], f"{path}/manifest.json") if manifest.get("recipe") else None
        return Candidate(argument, recipe, manifest)
    if path.is_file():
        return Candidate(argument, Recipe.load(path), None)
    raise UserError(f"{argument} is neither an export folder nor a recipe file")


def evaluate(
    arguments: list[str],
    data: str,
    model_spec: str | None = None,
    weights: str | None = None,
    limit: int | None = None,
    max_new_tokens: int = 8,
    backend: str = "ort",
    progress: bool = False,
) -> EvalReport:
    """Evaluate every candidate against the unpruned model on `data` (the first `limit` rows).

    Every input is checked before a model is loaded: the candidates, the data and its images.
    """
    from .runtime import open_runner

    if not arguments:
        raise UserError("name at least one export folder or recipe to evaluate")
    candidates = [read_candidate(argument) for argument in arguments]
    records = read_dataset(data)[:limit]
    samples = load_samples(records)
    model_name = model_spec
    if model_spec is None:
        first = candidates[0]
        model_name = first.manifest["model"]["name"] if first.manifest else first.recipe.model.name
        model_spec = export_model_spec(first.manifest) if first.manifest else model_name
    model = load_model(model_spec, weights)
    for candidate in candidates:
        if candidate.manifest is not None:
            check_export_model(Path(candidate.source), candidate.manifest, model)
        else:
            candidate.recipe.check_model(model.args, model.source.name)
    entries = [Entry("unpruned", "unpruned", "eager", None)]
    runners = [EagerRunner(model)]
    for candidate in candidates:
        recipe_name = candidate.recipe.name if candidate.recipe else None
        if candidate.manifest is not None:
            entries.append(Entry(candidate.name, candidate.source, "onnxruntime", recipe_name))
            runners.append(open_runner(candidate.source, backend))
        else:
            entries.append(Entry(candidate.name, candidate.source, "eager", recipe_name))
            runners.append(EagerRunner(model, candidate.recipe))

    chunks = list(_chunks(len(samples.images), BATCH_SIZE))
    bar = progress_bar("evaluating", len(chunks) * len(entries), "batch", progress)
    with bar:
        for rows in chunks:
            images = [samples.images[i] for i in rows]
            questions = [samples.questions[i] for i in rows]
            reference: list[tuple[str, Tensor]] = []
            for entry, runner in zip(entries, runners, strict=True):
                batch = runner.prepare(images, questions, max_new_tokens)
                for row, (tokens, logits) in enumerate(runner.generate_with_logits(batch, max_new_tokens)):
                    answer = model.tokenizer.decode(tokens, skip_special_tokens=True).strip()
                    if entry is entries[0]:
                        reference.append((answer, logits))
                    _score(entry, samples.records[rows[row]], answer, logits, reference[row])
                    add_compute(entry.compute, model.args, runner.recipe, images[row], batch, row)
                bar.update()
    labelled = any(record.answer is not None for record in samples.records)
    return EvalReport(model_name, str(data), len(samples.images), labelled, max_new_tokens, entries)


def _chunks(count: int, size: int) -> Iterator[list[int]]:
    for start in range(0, count, size):
        yield list(range(start, min(start + size, count)))


def _score(entry: Entry, record: Record, answer: str, logits: Tensor, reference: tuple[str, Tensor]) -> None:
    normalised = normalise_answer(answer)
    correct = None if record.answer is None else normalised == normalise_answer(record.answer)
    agrees = normalised == normalise_answer(reference[0])
    kl = first_token_kl(reference[1], logits)
    entry.answers.append(answer)
    entry.overall.add(correct, agrees, kl)
    if record.type is not None or entry.by_type:
        entry.by_type.setdefault(record.type or NO_TYPE, Scores()).add(correct, agrees, kl)


def pareto_points(report: EvalReport) -> list[tuple[str, float, float]]:
    """(name, paper FLOPs ratio, metric) per entry, the unpruned reference first."""
    points = []
    for entry in report.entries:
        value = getattr(entry.overall, report.metric)
        points.append((entry.name, entry.compute.to_dict()["paper_flops_ratio"], value))
    return points


def summary_view(report: EvalReport):
    """Tables: overall per entry, then the ranking metric per question type."""
    from rich.console import Group
    from rich.table import Table

    def rate(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    overall = Table(title=f"{report.model} on {report.data}: {report.samples} samples", title_justify="left")
    overall.add_column("model", overflow="fold")
    for column in ("tokens", "FLOPs", "prefill", "acc", "agree", "KL"):
        overall.add_column(column, justify="right", no_wrap=True)
    overall.caption = (
        "tokens: visual tokens per LLM layer (share of the image's); FLOPs: paper convention, prefill: exact "
        "whole-model prefill MACs, both % of unpruned; acc: against labels; agree: with the unpruned answer; "
        "KL: first-token KL(unpruned || pruned), nats"
    )
    for entry in report.entries:
        compute = entry.compute.to_dict()
        overall.add_row(
            entry.name + (" (ort)" if entry.runtime == "onnxruntime" else ""),
            f"{compute['visual_tokens_per_layer_mean']:.1f} ({100 * compute['visual_token_share']:.0f}%)",
            rate(compute["paper_flops_ratio"]),
            rate(compute["exact_prefill_ratio"]),
            rate(entry.overall.accuracy),
            rate(entry.overall.agreement),
            f"{entry.overall.first_token_kl:.4f}",
        )
    parts = [overall]
    types = sorted({kind for entry in report.entries for kind in entry.by_type})
    if types:
        # One row per type and a column per model: there are usually fewer models than types,
        # so the table fits a terminal and long model names fold in their header.
        per_type = Table(title=f"{report.metric} per question type", title_justify="left")
        per_type.add_column("type", no_wrap=True)
        for entry in report.entries:
            per_type.add_column(entry.name, justify="right", overflow="fold", min_width=6)
        for kind in types:
            scores = [entry.by_type.get(kind) for entry in report.entries]
            cells = ["-" if score is None else rate(getattr(score, report.metric)) for score in scores]
            per_type.add_row(kind, *cells)
        parts.append(per_type)
    return Group(*parts)
