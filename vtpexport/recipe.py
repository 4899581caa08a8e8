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
from .pruning.registry import ScheduleSpec, SelectorSpec, describe, methods

RECIPE_VERSION = 1


def check_selector(args: LlavaArgs, selector: SelectorSpec) -> None:
    """Refuse a selector the model's vision features cannot feed."""
    if selector.declaration.probe.cls_token and not args.cls_token:
        without_cls = [name for name, m in methods("selector").items() if not m.probe.cls_token]
        raise UserError(
            f"selector {selector.method} scores patches by the CLS token's attention, and {args.family} has no "
            f"CLS token (LLaVA-HR drops it before its ViT); use {' / '.join(without_cls)} or an in-LLM schedule "
            f"({', '.join(methods('schedule'))})"
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
            out[key] = None if spec is None else describe(spec)
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


def _tuples(spec: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}


def new_provenance(produced_by: str, **entries) -> dict:
    return {
        "tool": f"vtpexport {__version__}",
        "produced_by": produced_by,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **entries,
    }
