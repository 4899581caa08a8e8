"""The recipe: a versioned, validated plan of what to prune, where and how much, for which
model (an architecture hash), with provenance. Stored as YAML.

Every kept count is integer arithmetic on the visual-token count N (`k = N * num // den`),
so the same rule runs eagerly, in calibration, in FLOPs counting and inside an exported
graph where N is a dynamic dimension.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from . import __version__
from .errors import UserError
from .graph.args import LlavaArgs
from .pruning.registry import ScheduleSpec, Selector, SelectorSpec, describe, methods
from .recipe_schema import RECIPE
from .schema import load_yaml, validate

RECIPE_VERSION = 1
MAX_RECIPE_BYTES = 1 << 20  # a recipe is a few KB; a bigger file is not one


def check_selector(args: LlavaArgs, selector: SelectorSpec) -> None:
    """Refuse a selector the model's vision features cannot feed."""
    refusal = selector.declaration.tiles_refusal
    if args.layout.tiled and refusal is not None:
        raise UserError(
            f"selector {selector.method} does not run per tile on {args.family}'s {args.layout.rule} images: it "
            f"{refusal}; use {_fitting(args)} or an in-LLM schedule ({', '.join(methods('schedule'))})"
        )
    probe = selector.declaration.probe
    if probe.cls_token and not args.cls_token:
        raise UserError(
            f"selector {selector.method} scores patches by the CLS token's attention, and {args.family} has no "
            f"CLS token (LLaVA-HR drops it before its ViT); use {_fitting(args)} or an in-LLM schedule "
            f"({', '.join(methods('schedule'))})"
        )
    if probe.question and args.multipath:
        raise UserError(
            f"selector {selector.method} compares patches with the question in CLIP's joint space, and "
            f"{args.family}'s features are the ViT's fused with ConvNeXt's, outside that space; use "
            f"{_fitting(args)} or an in-LLM schedule ({', '.join(methods('schedule'))})"
        )
    if selector.output_tokens(args.vision.num_patches, args.vision.grid_size) == 0:
        # The image would vanish, and a zero-length image dimension cannot be exported.
        raise UserError(
            f"selector {selector.method} ({_settings(selector)}) keeps no image token of {args.family}'s "
            f"{args.vision.num_patches} patches ({args.vision.grid_size} rows); keep more"
        )


def _fitting(args: LlavaArgs) -> str:
    """The selectors whose probes this model's vision features can feed."""
    return " / ".join(
        name
        for name, method in methods("selector").items()
        if not (method.probe.cls_token and not args.cls_token)
        and not (method.probe.question and args.multipath)
        and not (args.layout.tiled and method.tiles_refusal is not None)
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

    def visual_tokens(self, args: LlavaArgs, n_image: int, image_size: tuple[int, int] | None = None) -> int | None:
        """Visual tokens entering the LLM for an image of n_image tokens (None if adaptive).
        A selector on LLaVA-NeXT tiles keeps a count that follows from the image's (height,
        width), `image_size`, not from n_image."""
        if self.selector is None:
            return n_image
        keep = self.selector.output_tokens(args.vision.num_patches, args.vision.grid_size)
        if keep is None or not args.layout.tiled:
            return keep
        if image_size is None:
            raise UserError(
                f"recipe {self.name!r}: {self.selector.method} keeps a count per tile on {args.family}'s "
                f"{args.layout.rule} images, so the tokens entering the LLM follow from the image size, not from a "
                "token count; count them at a size (vtpexport inspect / calibrate --image-size HxW)"
            )
        return args.layout.selected_tokens(image_size, keep, self.selector.declaration)

    def tile_keep(self, args: LlavaArgs) -> int | None:
        """Tokens the selector returns per tile (the vision graph's inputs follow from it, see
        `tile_rule`); None without a selector."""
        if self.selector is None:
            return None
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
            out[key] = None if spec is None else describe(spec)
        out["provenance"] = self.provenance
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

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


def tile_rule(recipe: Recipe | None, args: LlavaArgs) -> tuple[int | None, Selector | None]:
    """What the layout's vision inputs and token counts take of a recipe: the tokens its selector
    returns per tile, and the selector's declaration (how many of them each tile keeps); (None,
    None) without a selector."""
    if recipe is None or recipe.selector is None:
        return None, None
    return recipe.tile_keep(args), recipe.selector.declaration


def _tuples(spec: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}


def _settings(spec: SelectorSpec | ScheduleSpec) -> str:
    """The spec's own fields as `key value` pairs, for messages."""
    return ", ".join(
        f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}"
        for key, value in describe(spec).items()
        if key in spec.declaration.fields
    )


def new_provenance(produced_by: str, **entries) -> dict:
    return {
        "tool": f"vtpexport {__version__}",
        "produced_by": produced_by,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **entries,
    }
