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

RECIPE_VERSION = 1
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
        if self.method not in SELECTORS:
            raise UserError(f"unknown selector {self.method!r} (known: {', '.join(SELECTORS)})")
        if self.method.startswith("fopru"):
            if self.ratio is None or not 0 < self.ratio <= 1:
                raise UserError(f"selector {self.method} needs ratio in (0, 1], got {self.ratio}")
        else:
            counts = {"tokens": self.tokens, "text_tokens": self.text_tokens, "merge_tokens": self.merge_tokens}
            for key, value in counts.items():
                if value is not None and value < 0:
                    raise UserError(f"selector {self.method}: {key} must be >= 0, got {value}")
            if self.method == "recover":
                if len({value is None for value in counts.values()}) > 1:
                    raise UserError(
                        "recover: give tokens, text_tokens and merge_tokens together (fixed budget) or none"
                    )
            elif self.text_tokens is not None or self.merge_tokens is not None:
                raise UserError(f"selector {self.method} takes tokens only (text_tokens / merge_tokens are recover's)")
        if self.order not in ("raster", "score"):
            raise UserError(f"selector order must be 'raster' or 'score', got {self.order!r}")

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
        if self.method not in SCHEDULES:
            raise UserError(f"unknown schedule {self.method!r} (known: {', '.join(SCHEDULES)})")
        if self.method == "fitprune":
            if not self.drop or self.visual_tokens is None:
                raise UserError("fitprune needs per-layer drop counts and visual_tokens")
            if min(self.drop) < 0 or sum(self.drop) > self.visual_tokens:
                raise UserError(f"fitprune drops {sum(self.drop)} of {self.visual_tokens} tokens (or a negative count)")
            if num_layers is not None and len(self.drop) != num_layers:
                raise UserError(f"fitprune recipe has {len(self.drop)} layers, the model has {num_layers}")
        if self.method == "pyramiddrop":
            if not self.layers or list(self.layers) != sorted(set(self.layers)) or self.layers[0] < 1:
                raise UserError(f"pyramiddrop stage layers must be increasing and >= 1, got {list(self.layers)}")
            if num_layers is not None and self.layers[-1] >= num_layers:
                raise UserError(f"pyramiddrop stage layer {self.layers[-1]} is past the model's {num_layers} layers")
        if self.method in ("pyramiddrop", "fastv") and not 0 <= self.ratio <= 1:
            raise UserError(f"{self.method} ratio must be in [0, 1], got {self.ratio}")
        if self.method == "fastv" and (self.layer < 1 or (num_layers is not None and self.layer >= num_layers)):
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
        if not isinstance(data, dict):
            raise UserError(f"{source} is not a recipe (expected a YAML mapping)")
        if data.get("version") != RECIPE_VERSION:
            raise UserError(
                f"{source} has recipe version {data.get('version')!r}; this tool reads version {RECIPE_VERSION}"
            )
        try:
            model = ModelRef(**data["model"])
            selector = SelectorSpec(**_tuples(data["selector"])) if data.get("selector") else None
            schedule = ScheduleSpec(**_tuples(data["schedule"])) if data.get("schedule") else None
            recipe = Recipe(
                name=str(data["name"]),
                model=model,
                selector=selector,
                schedule=schedule,
                provenance=dict(data.get("provenance") or {}),
            )
        except (KeyError, TypeError) as error:
            raise UserError(f"{source} is malformed: {error}") from None
        if selector:
            selector.validate()
        if schedule:
            schedule.validate()
        if "position_policy" in data and data["position_policy"] != recipe.position_policy:
            raise UserError(f"{source}: position_policy {data['position_policy']!r} does not match its schedule")
        return recipe

    @staticmethod
    def load(path: str | Path) -> Recipe:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"recipe not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise UserError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
        return Recipe.from_dict(data, str(path))

    def with_provenance(self, **entries) -> Recipe:
        return replace(self, provenance={**self.provenance, **entries})


def _tuples(spec: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}


def new_provenance(produced_by: str, **entries) -> dict:
    return {
        "tool": f"vtpexport {__version__}",
        "produced_by": produced_by,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **entries,
    }
