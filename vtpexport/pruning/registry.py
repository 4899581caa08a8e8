"""The pruning methods, each declared once, in its own `pruning/<method>.py`, and found here.

A method is a *selector* (before the LLM, in the vision stage) or a *schedule* (inside the
decoder's prefill). Its declaration says, as data where it can: its recipe fields and their
ranges, its kept-count rules, its position policy (schedules), the probe it needs from the
vision tower (selectors), its tensor entry point (`select` / `prefill_hook`) and, where the
budget is solved without data, its solver. Recipe validation, the graph, calibration, FLOPs,
the export and the CLI all read these declarations; none of them names a method.

This module does not import torch (so loading a recipe or listing methods stays cheap until
tensors are needed): the method modules are imported on the first lookup.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import UserError

if TYPE_CHECKING:  # annotations only: the tensor side is the method modules' business
    from torch import Tensor


def ratio(value: float) -> Fraction:
    """A ratio as an exact fraction, so kept counts are the same in every implementation."""
    return Fraction(value).limit_denominator(1000)


# --- recipe fields as data ---------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """A recipe field a method takes, with its range (read by validation, the CLI and docs)."""

    name: str
    doc: str
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    choices: tuple[str, ...] = ()

    def interval(self) -> str:
        low = "(" if self.exclusive_minimum else "["
        if self.maximum is None:
            return f"{'>' if self.exclusive_minimum else '>='} {self.minimum:g}"
        return f"in {low}{self.minimum:g}, {self.maximum:g}]"

    def check(self, owner: str, value: Any) -> None:
        """UserError when `value` is missing (and required) or outside the declared range."""
        if value is None:
            if self.required:
                raise UserError(f"{owner} needs {self.name} {self.interval()}, got none")
            return
        if self.choices:
            if value not in self.choices:
                allowed = " or ".join(repr(c) for c in self.choices)
                raise UserError(f"{owner}: {self.name} must be {allowed}, got {value!r}")
            return
        if self.minimum is None:
            return
        below = value <= self.minimum if self.exclusive_minimum else value < self.minimum
        if below or (self.maximum is not None and value > self.maximum):
            raise UserError(f"{owner}: {self.name} must be {self.interval()}, got {value}")


RATIO_OF_TOKENS = Field("ratio", "share of the tokens (or grid rows) kept", True, 0, 1, exclusive_minimum=True)
TOKENS = Field("tokens", "fixed count of kept tokens (none: adaptive, an IQR outlier count)", minimum=0)
ORDER = Field("order", "kept tokens in raster order (ours) or by score (the reference)", choices=("raster", "score"))


# --- what a recipe stores: one spec per stage ------------------------------------------------------


@dataclass(frozen=True)
class SelectorSpec:
    """A pre-LLM selector as a recipe stores it: the method's name and its fields (the union of
    every selector's fields; a method takes only those it declares, see `selector_method`)."""

    method: str
    ratio: float | None = None
    tokens: int | None = None
    order: str = "raster"
    text_tokens: int | None = None
    merge_tokens: int | None = None

    @property
    def declaration(self) -> Selector:
        return selector_method(self.method)

    def validate(self) -> None:
        self.declaration.validate(self)

    @property
    def adaptive(self) -> bool:
        """Whether the kept count depends on the image (ONNX Runtime only)."""
        return self.declaration.adaptive(self)

    @property
    def text_guided(self) -> bool:
        """Whether the selector reads the question (the export then takes CLIP text embeddings)."""
        return self.declaration.probe.question

    def output_tokens(self, num_patches: int, grid_size: int) -> int | None:
        """Visual tokens entering the LLM; None when data-dependent."""
        return self.declaration.output_tokens(self, num_patches, grid_size)


@dataclass(frozen=True)
class ScheduleSpec:
    """An in-LLM schedule (prefill only) as a recipe stores it; see each method's declaration."""

    method: str
    drop: tuple[int, ...] = ()
    visual_tokens: int | None = None
    layers: tuple[int, ...] = ()
    ratio: float = 0.5
    layer: int = 2

    @property
    def declaration(self) -> Schedule:
        return schedule_method(self.method)

    @property
    def position_policy(self) -> str:
        return self.declaration.position_policy

    def validate(self, num_layers: int | None = None) -> None:
        self.declaration.validate(self, num_layers)

    def stage_starts(self, num_layers: int) -> list[int]:
        """First layer of each KV-cache stage: layers of a stage share one cache length."""
        return self.declaration.stage_starts(self, num_layers)

    def tokens_per_layer(self, n: int, num_layers: int) -> list[tuple[int, int]]:
        """Visual tokens per layer: (entering the layer, after its in-layer drop)."""
        return self.declaration.tokens_per_layer(self, n, num_layers)


# --- declarations --------------------------------------------------------------------------------


class Method:
    """What every method declares. Subclasses set the class attributes and override the rules."""

    name: ClassVar[str]
    kind: ClassVar[str]  # "selector" | "schedule"
    summary: ClassVar[str]
    fields: ClassVar[tuple[Field, ...]] = ()
    # Fields every method of the kind accepts (checked, not listed as the method's own).
    shared: ClassVar[tuple[Field, ...]] = ()
    # Fields given all together or not at all (e.g. a fixed budget made of three counts).
    together: ClassVar[tuple[str, ...]] = ()
    spec_type: ClassVar[type]

    def owner(self) -> str:
        return f"{self.kind} {self.name}"

    def error(self, message: str) -> UserError:
        return UserError(f"{self.name} {message}")

    def validate(self, spec, num_layers: int | None = None) -> None:
        """Declared fields in range; a field the method does not take left at its default."""
        declared = [f.name for f in self.fields]
        for f in fields(self.spec_type):
            if f.name == "method" or f.name in declared or f.name in {s.name for s in self.shared}:
                continue
            if getattr(spec, f.name) != f.default:
                takes = ", ".join(declared) or "no fields"
                raise UserError(f"{self.owner()} takes {takes} only, not {f.name}")
        for f in (*self.fields, *self.shared):
            f.check(self.owner(), getattr(spec, f.name))
        given = {getattr(spec, name) is None for name in self.together}
        if len(given) > 1:
            raise UserError(f"{self.name}: give {_and(self.together)} together (fixed budget) or none")
        self.check(spec, num_layers)

    def check(self, spec, num_layers: int | None) -> None:
        """Rules across fields or against the model (override where there are any)."""


@dataclass(frozen=True)
class VisionProbe:
    """What a selector needs from the vision stage besides the feature layer's patch tokens."""

    attention: bool = False  # the feature layer's attention probabilities, all heads
    cls_qk: bool = False  # q/k projections (raw Linear outputs) of the layer after the feature layer
    question: bool = False  # CLIP-space patch embeddings of the last layer + the question's text embeddings
    cls_token: bool = False  # the scores are the CLS token's attention: the features must carry one


@dataclass
class SelectorInputs:
    """The vision stage's outputs a selector reads (those its probe did not ask for are None)."""

    patches: Tensor  # [B, N, C] feature-layer patch tokens (CLS dropped)
    grid_size: int
    cls_tokens: int  # CLS tokens in front of the patches in the probes below (0 or 1)
    attn_probs: Tensor | None = None  # [B, H, c + N, c + N]
    query: Tensor | None = None  # [B, c + N, C]
    key: Tensor | None = None  # [B, c + N, C]
    patch_embeds: Tensor | None = None  # [B, N, P]
    text_embeds: Tensor | None = None  # [B, P]


@dataclass
class Selection:
    """A selector's output before the projector."""

    tokens: Tensor  # [B, k, C]
    patch_index: Tensor  # [B, k] raster index of each token's patch (-1: a merged token)


class Selector(Method):
    kind = "selector"
    spec_type = SelectorSpec
    # The order field predates per-method fields and was accepted by every selector; PruMerge reads it.
    shared = (ORDER,)
    probe: ClassVar[VisionProbe] = VisionProbe()

    def adaptive(self, spec: SelectorSpec) -> bool:
        return False

    def output_tokens(self, spec: SelectorSpec, num_patches: int, grid_size: int) -> int | None:
        raise NotImplementedError

    def select(self, spec: SelectorSpec, inputs: SelectorInputs) -> Selection:
        """The tensor entry point (eager and inside the exported vision graph)."""
        raise NotImplementedError


class Schedule(Method):
    kind = "schedule"
    spec_type = ScheduleSpec
    position_policy: ClassVar[str]  # "original" (gaps) | "renumbered" (contiguous after each drop)
    # How `vtpexport calibrate` meets a FLOPs budget: "analytic" (`solve`, no data) or "data"
    # (FitPrune's search over calibration samples, in calibrate.py).
    calibration: ClassVar[str]

    def stage_starts(self, spec: ScheduleSpec, num_layers: int) -> list[int]:
        raise NotImplementedError

    def tokens_per_layer(self, spec: ScheduleSpec, n: int, num_layers: int) -> list[tuple[int, int]]:
        raise NotImplementedError

    def prefill_hook(self, spec: ScheduleSpec, image_len: int, replay: dict[int, Tensor] | None):
        """The `PrefillHook` that prunes the prefill (see pruning/prefill.py)."""
        raise NotImplementedError

    def solve(self, budget, fixed: dict) -> tuple[ScheduleSpec, str]:
        """An analytic method's schedule meeting `budget` (calibrate's `Budget`), with the fields
        the user fixed (`fixed`, by field name), and a line saying what was solved."""
        raise NotImplementedError


def _and(names: tuple[str, ...]) -> str:
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]


# --- the registry --------------------------------------------------------------------------------

_METHODS: dict[str, Method] = {}
_LOADED = False


def register(cls: type[Method]) -> type[Method]:
    """Class decorator of a method declaration: one instance is registered under its name."""
    if cls.name in _METHODS:
        raise ValueError(f"pruning method {cls.name!r} is declared twice")
    _METHODS[cls.name] = cls()
    return cls


def _load() -> None:
    """Import every module of this package once, so each declares its methods."""
    global _LOADED
    if not _LOADED:
        _LOADED = True
        package = __name__.rsplit(".", 1)[0]
        for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
            importlib.import_module(f"{package}.{info.name}")


def methods(kind: str) -> dict[str, Method]:
    """Every declared method of `kind` ("selector" or "schedule"), by name, sorted."""
    _load()
    return {name: m for name, m in sorted(_METHODS.items()) if m.kind == kind}


def names(kind: str) -> tuple[str, ...]:
    return tuple(methods(kind))


def _lookup(kind: str, name: str) -> Method:
    known = methods(kind)
    if name not in known:
        raise UserError(f"unknown {kind} {name!r} (known: {', '.join(known)})")
    return known[name]


def selector_method(name: str) -> Selector:
    return _lookup("selector", name)


def schedule_method(name: str) -> Schedule:
    return _lookup("schedule", name)


def describe(spec: SelectorSpec | ScheduleSpec) -> dict:
    """The spec as a recipe stores it (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()}
