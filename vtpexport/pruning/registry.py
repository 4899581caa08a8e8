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
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import UserError
from ..schema import Field, Int, Nullable, Number, Record, Rule, Tagged, Text, validate

if TYPE_CHECKING:  # annotations only: the tensor side is the method modules' business
    from torch import Tensor


def ratio(value: float) -> Fraction:
    """A ratio as an exact fraction, so kept counts are the same in every implementation."""
    return Fraction(value).limit_denominator(1000)


# --- recipe field types (hostile's schema parts), shared by the method declarations -------------

RATIO = Number(0, 1, open_low=True)  # a share kept: (0, 1]
SHARE = Number(0, 1)  # a share dropped or kept, 0 and 1 included
PARAMETER_STEPS = 1000  # analytic schedules solve shares on the grid k / 1000 (recipe ratios have denominators <= 1000)
COUNT = Int(0)
NULLABLE_COUNT = Nullable(COUNT)
ORDER = Text(choices=("raster", "score"))
# How a selector's count splits over an image's tiles (LLaVA-NeXT): `per_tile`, the same count in
# the base tile and in every high-resolution tile (see graph/layout.py, AnyresTiles).
PER_TILE = "per_tile"
TILE_RULE = Text(choices=(PER_TILE,))
# The field of every selector that runs per tile (`Selector.runs_per_tile`, read from its
# `tiles_refusal`): `Selector.recipe_fields` adds it (a declaration need not list it) and its
# recipes write it, so that they state the rule.
TILES = {"tiles": Field(TILE_RULE, required=False)}


def all_or_none(*keys: str) -> Rule:
    """A cross-field rule: these keys are given together or not at all."""

    def rule(record: Mapping[str, Any]) -> str | None:
        if len({record.get(key) is None for key in keys}) > 1:
            return f"give {', '.join(keys[:-1])} and {keys[-1]} together (a fixed budget) or none (adaptive)"
        return None

    return rule


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
    # The split over LLaVA-NeXT tiles; a recipe carries it only for a selector that runs per tile.
    tiles: str = PER_TILE

    @property
    def declaration(self) -> Selector:
        return selector_method(self.method)

    def validate(self) -> None:
        """The method's declared fields, types, ranges and rules."""
        validate(SELECTOR, describe(self), root="selector")

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
        """The method's declared fields, types, ranges and rules; with `num_layers`, also against
        the model's depth."""
        validate(SCHEDULE, describe(self), root="schedule")
        if num_layers is not None:
            self.declaration.check_depth(self, num_layers)

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
    # Recipe fields the method takes (the spec's other fields stay at their defaults), as data.
    fields: ClassVar[dict[str, Field]] = {}
    rules: ClassVar[tuple[Rule, ...]] = ()  # cross-field rules on the (type-checked) fields

    @property
    def recipe_fields(self) -> dict[str, Field]:
        """The fields a recipe of this method may carry."""
        return self.fields

    def error(self, message: str) -> UserError:
        return UserError(f"{self.name} {message}")


@dataclass(frozen=True)
class VisionProbe:
    """What a selector needs from the vision stage besides the feature layer's patch tokens."""

    attention: bool = False  # the feature layer's attention probabilities, all heads
    cls_qk: bool = False  # q/k projections (raw Linear outputs) of the layer after the feature layer
    question: bool = False  # CLIP-space patch embeddings + the question's text embeddings
    # Whose patches `question` projects into CLIP's joint space: the tower's "last" layer
    # (Recoverable Compression) or the "feature" layer LLaVA reads (CDPruner's reference).
    question_layer: str = "last"
    cls_token: bool = False  # the scores are the CLS token's attention: the features must carry one
    # Every patch through the projector (selectors that compare tokens in the LLM's input space);
    # such a selector returns projected tokens, so the projector runs once, on all N.
    projected: bool = False


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
    projected: Tensor | None = None  # [B, N, D_text]
    # [B, N]: the patches a selector may keep (None: all). Given only for one image's LLaVA-NeXT
    # tiles (the rows), whose unpadding drops the rest of a tile; a selector that runs on tiles
    # keeps these first, and at most `keep` of them.
    valid: Tensor | None = None


@dataclass
class Selection:
    """A selector's output before the projector."""

    tokens: Tensor  # [B, k, C] ([B, k, D_text] for a `projected` probe)
    patch_index: Tensor  # [B, k] raster index of each token's patch (-1: a merged token)


class Selector(Method):
    kind = "selector"
    probe: ClassVar[VisionProbe] = VisionProbe()
    # Why the method cannot run per LLaVA-NeXT tile (None: it can, reading `SelectorInputs.valid`).
    tiles_refusal: ClassVar[str | None] = "is not built for tiles (not yet)"
    # The recipe field that sets the kept count, which `vtpexport calibrate` solves for a FLOPs
    # budget when the user leaves it out (None: no one field does).
    count_field: ClassVar[str | None] = "tokens"

    @property
    def runs_per_tile(self) -> bool:
        """Whether the method runs on each LLaVA-NeXT tile (and its recipes state the `tiles` rule)."""
        return self.tiles_refusal is None

    @property
    def recipe_fields(self) -> dict[str, Field]:
        """Its own fields, and `tiles` exactly where it runs per tile (whether or not `fields` lists it)."""
        own = {key: value for key, value in self.fields.items() if key not in TILES}
        return own | TILES if self.runs_per_tile else own

    def count_settings(self, num_patches: int, grid_size: int) -> list:
        """Values of `count_field` that calibrate tries, in order of the count kept (those the
        method refuses are skipped): every count of 1 to `num_patches` patches."""
        return list(range(1, num_patches + 1))

    def adaptive(self, spec: SelectorSpec) -> bool:
        return False

    def output_tokens(self, spec: SelectorSpec, num_patches: int, grid_size: int) -> int | None:
        raise NotImplementedError

    def tile_counts(self, candidates, keep: int, grid_size: int):
        """[T] tokens each LLaVA-NeXT tile keeps, of the `keep` its `select` returns per tile, given
        the tiles' candidates [T, P] (a numpy bool array: the patches unpadding keeps, a function of
        the image size only). Its `select` puts those tokens first in each tile (their
        `patch_index` a candidate), the others after (a patch_index that is not). By default
        `keep`, or every candidate when the tile has fewer."""
        return candidates.sum(axis=1).clip(max=keep)

    def select(self, spec: SelectorSpec, inputs: SelectorInputs) -> Selection:
        """The tensor entry point (eager and inside the exported vision graph)."""
        raise NotImplementedError


class CountSelector(Selector):
    """A selector whose recipe fixes the kept count: `tokens`, or every patch when there are fewer."""

    fields = {"tokens": Field(COUNT)}

    def output_tokens(self, spec: SelectorSpec, num_patches: int, grid_size: int) -> int:
        return min(spec.tokens, num_patches)


class Schedule(Method):
    kind = "schedule"
    position_policy: ClassVar[str]  # "original" (gaps) | "renumbered" (contiguous after each drop)
    # How `vtpexport calibrate` meets a FLOPs budget: "analytic" (`solve`, no data) or "data"
    # (FitPrune's search over calibration samples, in calibrate.py).
    calibration: ClassVar[str]

    def check_depth(self, spec: ScheduleSpec, num_layers: int) -> None:
        """UserError when the schedule's layers do not fit a model of `num_layers` layers."""

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


# --- the registry --------------------------------------------------------------------------------

_METHODS: dict[str, Method] = {}
_LOADED = False


class OneDropSchedule(Schedule):
    """A schedule that drops image tokens once, before layer K, keeping the share the recipe's
    R (`ratio`, the share dropped) allows; positions keep their original values, and R is solved
    from the budget analytically. Subclasses say how many tokens R keeps and what they prune by."""

    # K: the first layer without the dropped tokens; R: the share of image tokens dropped.
    fields = {"layer": Field(Int(1)), "ratio": Field(SHARE)}
    position_policy = "original"
    calibration = "analytic"
    # What R = 1 still spends, for the unreachable-budget message ({last}: layer K - 1).
    at_full_ratio: ClassVar[str] = "R = 1 still runs layers 0..{last} on every visual token"

    def kept(self, spec: ScheduleSpec, n: int) -> int:
        """Image tokens kept of n from layer K on; never grows as R grows."""
        raise NotImplementedError

    def check_depth(self, spec: ScheduleSpec, num_layers: int) -> None:
        if spec.layer >= num_layers:
            raise self.error(f"layer must be in [1, {num_layers}), got {spec.layer}")

    def stage_starts(self, spec: ScheduleSpec, num_layers: int) -> list[int]:
        return [0, spec.layer]

    def tokens_per_layer(self, spec: ScheduleSpec, n: int, num_layers: int) -> list[tuple[int, int]]:
        kept = self.kept(spec, n)
        return [(kept, kept) if layer >= spec.layer else (n, n) for layer in range(num_layers)]

    def solve(self, budget, fixed: dict) -> tuple[ScheduleSpec, str]:
        """The smallest R on the 0.001 grid of [0, 1] (the most tokens kept) that meets `budget`."""
        layer = fixed["layer"]

        def schedule(k: int) -> ScheduleSpec:
            return ScheduleSpec(self.name, layer=layer, ratio=k / PARAMETER_STEPS)

        schedule(0).validate(budget.args.text.num_layers)
        if not budget.meets(schedule(PARAMETER_STEPS)):
            how = self.at_full_ratio.format(last=layer - 1)
            raise budget.unreachable(self.name, schedule(PARAMETER_STEPS), how)
        # FLOPs never increase as R grows (`kept` never grows): bisect for the first k that meets.
        lo, hi = -1, PARAMETER_STEPS
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if budget.meets(schedule(mid)) else (mid, hi)
        return schedule(hi), f"R = {hi / PARAMETER_STEPS:g}, the smallest on the 0.001 grid meeting the budget"


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
    """The spec as a recipe stores it (tuples as lists); a selector that does not run per tile
    leaves the `tiles` rule out (unless set to another rule, which its validation refuses)."""
    out = _as_lists(spec)
    if isinstance(spec, SelectorSpec) and spec.tiles == PER_TILE and not _runs_per_tile(spec.method):
        del out["tiles"]
    return out


def _as_lists(spec: SelectorSpec | ScheduleSpec) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()}


def _runs_per_tile(name: str) -> bool:
    """An unknown selector counts as one that does (its validation names the known ones)."""
    method = methods("selector").get(name)
    return method is None or method.runs_per_tile


class _Declared(Mapping):
    """method name -> the schema Record of its declared fields, read from the registry when a
    spec is first checked (so building the recipe schema imports no method module)."""

    def __init__(self, kind: str):
        self.kind = kind

    def _records(self) -> dict[str, Record]:
        return {name: Record(m.recipe_fields, m.rules, f"a {self.kind}") for name, m in methods(self.kind).items()}

    def __getitem__(self, name: str) -> Record:
        return self._records()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(methods(self.kind))

    def __len__(self) -> int:
        return len(methods(self.kind))


def _defaults(spec: SelectorSpec | ScheduleSpec) -> dict:
    """What a serialised spec writes for the fields of other methods: accepted at these values only
    (so `tiles: per_tile`, which every selector's recipe carried before only those that run per
    tile did, still loads on the others)."""
    return {key: value for key, value in _as_lists(spec).items() if key != "method"}


SELECTOR = Tagged("method", _Declared("selector"), _defaults(SelectorSpec("")), "a selector mapping")
SCHEDULE = Tagged("method", _Declared("schedule"), _defaults(ScheduleSpec("")), "a schedule mapping")
