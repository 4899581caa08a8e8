"""The recipe: a versioned, validated plan of what to prune, where and how much, for which
model (an architecture hash), with provenance. Stored as YAML.

Every kept count is integer arithmetic on the visual-token count N (`k = N * num // den`),
so the same rule runs eagerly, in calibration, in FLOPs counting and inside an exported
graph where N is a dynamic dimension.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import yaml

from . import __version__
from .errors import UserError
from .graph.args import LlavaArgs
from .recipe_schema import RECIPE, SCHEDULE, SELECTOR
from .schema import load_yaml, validate

RECIPE_VERSION = 1
MAX_RECIPE_BYTES = 1 << 20  # a recipe is a few KB; a bigger file is not one
SELECTORS = ("fopru-rank", "fopru-row", "prumerge", "prumerge+", "recover")
# Selectors that score patches against the question: the export takes CLIP text embeddings.
TEXT_GUIDED_SELECTORS = ("recover",)
SCHEDULES = ("fitprune", "pyramiddrop", "fastv")
POSITION_POLICY = {"fitprune": "original", "fastv": "original", "pyramiddrop": "renumbered"}


def ratio(value: float) -> Fraction:
    """A ratio as an exact fraction, so kept counts are the same in every implementation."""
    return Fraction(value).limit_denominator(1000)


@dataclass(frozen=True)
class SelectorSpec:
    """A pre-LLM selector, applied to the vision features before the projector.

    fopru-rank / fopru-row: keep `ratio` of the tokens (rank) or of the patch-grid rows (row).
    prumerge / prumerge+: `tokens: K` keeps a fixed K (+1 merged token); without it the
    count is adaptive (IQR outliers, data-dependent: ONNX Runtime only).
    recover: `tokens`, `text_tokens` and `merge_tokens` together fix the visual, text-recovered
    and merged-centre counts (+1 aggregate token); without them all three are adaptive.
    """

    method: str
    ratio: float | None = None
    tokens: int | None = None
    order: str = "raster"  # prumerge: "raster" (ours) or "score" (reference order)
    text_tokens: int | None = None
    merge_tokens: int | None = None

    def validate(self) -> None:
        validate(SELECTOR, _plain(self), root="selector")

    @property
    def adaptive(self) -> bool:
        return not self.method.startswith("fopru") and self.tokens is None

    @property
    def text_guided(self) -> bool:
        return self.method in TEXT_GUIDED_SELECTORS

    def output_tokens(self, num_patches: int, grid_size: int) -> int | None:
        """Visual tokens entering the LLM; None when data-dependent."""
        if self.method == "fopru-rank":
            return num_patches * ratio(self.ratio).numerator // ratio(self.ratio).denominator
        if self.method == "fopru-row":
            return grid_size * (grid_size * ratio(self.ratio).numerator // ratio(self.ratio).denominator)
        if self.tokens is not None and self.method == "recover":
            kept = min(self.tokens + self.text_tokens + self.merge_tokens, num_patches)
            return kept + 1  # + the aggregate token
        if self.tokens is not None:
            return min(self.tokens, num_patches) + 1  # + the merged remainder token
        return None


@dataclass(frozen=True)
class ScheduleSpec:
    """An in-LLM schedule (prefill only).

    fitprune: `drop[l]` visual tokens dropped at layer l, for `visual_tokens` entering the LLM
      (scaled as n * drop // visual_tokens for another n).
    pyramiddrop: stages end at `layers`; stage s keeps floor(N * ratio**s).
    fastv: after layer `layer`, keep round(N * (1 - ratio)) (half rounds up).
    """

    method: str
    drop: tuple[int, ...] = ()
    visual_tokens: int | None = None
    layers: tuple[int, ...] = ()
    ratio: float = 0.5
    layer: int = 2

    @property
    def position_policy(self) -> str:
        return POSITION_POLICY[self.method]

    def validate(self, num_layers: int | None = None) -> None:
        """The declared fields (recipe_schema.SCHEDULE); with `num_layers`, also against the model's depth."""
        validate(SCHEDULE, _plain(self), root="schedule")
        if num_layers is None:
            return
        if self.method == "fitprune" and len(self.drop) != num_layers:
            raise UserError(f"fitprune recipe has {len(self.drop)} layers, the model has {num_layers}")
        if self.method == "pyramiddrop" and self.layers[-1] >= num_layers:
            raise UserError(f"pyramiddrop stage layer {self.layers[-1]} is past the model's {num_layers} layers")
        if self.method == "fastv" and self.layer >= num_layers:
            raise UserError(f"fastv layer must be in [1, {num_layers}), got {self.layer}")

    def fitprune_kept(self, layer: int, n: int) -> int:
        """FitPrune: tokens left after `layer`'s drop, for an image that entered the LLM with n.

        One floor of the cumulative drop per layer (not a sum of per-layer floors), so that the
        count is a single simple expression of n inside an exported graph.
        """
        return n - n * sum(self.drop[: layer + 1]) // self.visual_tokens

    def stage_keep(self, stage: int, n: int) -> int:
        """PyramidDrop: tokens kept in stage `stage` (>= 1) of an image with n tokens."""
        r = ratio(self.ratio)
        return n * r.numerator**stage // r.denominator**stage

    def fastv_keep(self, n: int) -> int:
        r = 1 - ratio(self.ratio)
        return (2 * n * r.numerator + r.denominator) // (2 * r.denominator)

    def stage_starts(self, num_layers: int) -> list[int]:
        """First layer of each KV-cache stage: layers of a stage share one cache length."""
        if self.method == "fitprune":
            return [0] + [layer + 1 for layer in range(num_layers - 1) if self.drop[layer] > 0]
        if self.method == "pyramiddrop":
            return [0, *self.layers]
        return [0, self.layer]

    def tokens_per_layer(self, n: int, num_layers: int) -> list[tuple[int, int]]:
        """Visual tokens per layer: (entering the layer, after its in-layer drop)."""
        plan = []
        current = n
        for layer in range(num_layers):
            if self.method == "fitprune":
                after = self.fitprune_kept(layer, n)
                plan.append((current, after))
                current = after
            elif self.method == "pyramiddrop":
                stage = sum(1 for boundary in self.layers if boundary <= layer)
                kept = self.stage_keep(stage, n) if stage else n
                plan.append((kept, kept))
            else:
                kept = self.fastv_keep(n) if layer >= self.layer else n
                plan.append((kept, kept))
        return plan


# Selectors that score patches by the CLS token's attention (PruMerge's outlier score).
CLS_SELECTORS = ("prumerge", "prumerge+", "recover")


def check_selector(args: LlavaArgs, selector: SelectorSpec) -> None:
    """Refuse a selector the model's vision features cannot feed."""
    if selector.method in CLS_SELECTORS and not args.cls_token:
        raise UserError(
            f"selector {selector.method} scores patches by the CLS token's attention, and {args.family} has no "
            "CLS token (LLaVA-HR drops it before its ViT); use fopru-rank / fopru-row or an in-LLM schedule "
            f"({', '.join(SCHEDULES)})"
        )
    if selector.output_tokens(args.vision.num_patches, args.vision.grid_size) == 0:
        # The image would vanish, and a zero-length image dimension cannot be exported.
        rows = selector.method == "fopru-row"
        least = 1 / (args.vision.grid_size if rows else args.vision.num_patches)
        raise UserError(
            f"selector {selector.method} ratio {selector.ratio:g} keeps no image {'row' if rows else 'token'} of "
            f"{args.family}'s {args.vision.grid_size if rows else args.vision.num_patches}; "
            f"use a ratio of at least {least:.4g}"
        )


@dataclass(frozen=True)
class ModelRef:
    family: str
    name: str
    config_hash: str


@dataclass(frozen=True)
class Recipe:
    name: str
    model: ModelRef
    selector: SelectorSpec | None = None
    schedule: ScheduleSpec | None = None
    provenance: dict = field(default_factory=dict)
    version: int = RECIPE_VERSION

    @property
    def position_policy(self) -> str:
        return self.schedule.position_policy if self.schedule else "original"

    def check_model(self, args: LlavaArgs, model_name: str) -> None:
        """Refuse a recipe made for another architecture, naming both."""
        if self.model.config_hash != args.config_hash():
            raise UserError(
                f"recipe {self.name!r} is for {self.model.name} ({self.model.family}, "
                f"config {self.model.config_hash}), not for {model_name} ({args.family}, config {args.config_hash()})"
            )
        if self.selector:
            check_selector(args, self.selector)
        if self.schedule:
            self.schedule.validate(args.text.num_layers)

    def visual_tokens(self, args: LlavaArgs, n_image: int) -> int | None:
        """Visual tokens entering the LLM for an image of n_image tokens (None if adaptive)."""
        if self.selector is None:
            return n_image
        return self.selector.output_tokens(args.vision.num_patches, args.vision.grid_size)

    def to_dict(self) -> dict:
        out = {
            "version": self.version,
            "name": self.name,
            "model": asdict(self.model),
            "position_policy": self.position_policy,
        }
        for key in ("selector", "schedule"):
            spec = getattr(self, key)
            out[key] = (
                None if spec is None else {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()}
            )
        out["provenance"] = self.provenance
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @staticmethod
    def from_dict(data: dict, source: str = "recipe") -> Recipe:
        """A recipe from its document, checked against recipe_schema.RECIPE (types, ranges,
        cross-field rules, no unknown keys); errors name `source`, the key and the value."""
        if not isinstance(data, dict):
            raise UserError(f"{source} is not a recipe (expected a YAML mapping)")
        if data.get("version") != RECIPE_VERSION:
            raise UserError(
                f"{source} has recipe version {data.get('version')!r}; this tool reads version {RECIPE_VERSION}"
            )
        validate(RECIPE, data, source)
        selector = SelectorSpec(**_tuples(data["selector"])) if data.get("selector") else None
        schedule = ScheduleSpec(**_tuples(data["schedule"])) if data.get("schedule") else None
        recipe = Recipe(
            name=data["name"],
            model=ModelRef(**data["model"]),
            selector=selector,
            schedule=schedule,
            provenance=dict(data.get("provenance") or {}),
        )
        if "position_policy" in data and data["position_policy"] != recipe.position_policy:
            raise UserError(f"{source}: position_policy {data['position_policy']!r} does not match its schedule")
        return recipe

    @staticmethod
    def load(path: str | Path) -> Recipe:
        return Recipe.from_dict(load_yaml(path, "recipe", MAX_RECIPE_BYTES), str(path))

    def with_provenance(self, **entries) -> Recipe:
        return replace(self, provenance={**self.provenance, **entries})


def _tuples(spec: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}


def _plain(spec: SelectorSpec | ScheduleSpec) -> dict:
    """A spec as its document writes it (lists, not tuples), for the schema."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()}


def new_provenance(produced_by: str, **entries) -> dict:
    return {
        "tool": f"vtpexport {__version__}",
        "produced_by": produced_by,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **entries,
    }
