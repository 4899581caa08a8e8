"""The recipes we ship in recipes/: the published FitPrune recipes, the default PyramidDrop and
FastV schedules, and one example recipe per selector (recipes/examples/), built here so that
the YAML files can be regenerated.

    python -m vtpexport.shipped_recipes [FOLDER]     # (re)writes FOLDER (default: ./recipes)

The output is deterministic (fixed creation date), so regenerating gives identical bytes.

The FitPrune per-layer drop counts come from the FitPrune authors' code, collected in
vtpexport/data/fitprune_published_recipes.json (LLaVA-1.5-7B and LLaVA-HR-7B, whose N is
its 1024 visual tokens at 1024 px).
"""

from __future__ import annotations

import json
import sys
from importlib.resources import files
from pathlib import Path

from .recipe import ModelRef, Recipe, ScheduleSpec, SelectorSpec, new_provenance

PUBLISHED_FITPRUNE = "fitprune_published_recipes.json"
# Fixed, so that regenerating the files changes nothing; the day these recipes were first written.
CREATED = "2026-11-22T00:00:00+00:00"
FITPRUNE_MODELS = ("llava-1.5-7b", "llava-hr-7b")
SCHEDULE_MODELS = ("llava-1.5-7b", "llava-next-7b")
PYRAMIDDROP_DEFAULT = ScheduleSpec(method="pyramiddrop", layers=(8, 16, 24), ratio=0.5)
FASTV_DEFAULT = ScheduleSpec(method="fastv", layer=2, ratio=0.5)
EXAMPLES = "examples"
# One example per selector on llava-1.5-7b (576 patches), each at a fixed count TensorRT can
# build (adaptive counts run on ONNX Runtime only), with where the count comes from.
SELECTOR_EXAMPLES = {
    "fopru-rank": (SelectorSpec("fopru-rank", ratio=0.25), "FoPru (Jiang et al. 2024): keep a quarter, 144 of 576"),
    "fopru-row": (SelectorSpec("fopru-row", ratio=0.25), "FoPru's row variant: a quarter of the patch-grid rows"),
    "prumerge": (
        SelectorSpec("prumerge", tokens=32),
        "LLaVA-PruMerge (Shang et al. 2024): its adaptive outliers average about 32 of 576 tokens (5.5%)",
    ),
    "prumerge+": (
        SelectorSpec("prumerge+", tokens=144),
        "LLaVA-PruMerge+ (Shang et al. 2024): about 25% of the tokens, 144 of 576",
    ),
    "recover": (
        SelectorSpec("recover", tokens=64, text_tokens=32, merge_tokens=32),
        "Recoverable Compression (Chen et al. 2024), fixed counts chosen here: 64 visual + 32 text-relevant "
        "patches, 32 merged centres and 1 aggregate token (129 of 576); needs CLIP's text tower",
    ),
    "divprune": (
        SelectorSpec("divprune", tokens=56),
        "DivPrune (Alvar et al. 2025): the reference's default retained ratio 0.098 of 576, 56 tokens",
    ),
    "cdpruner": (
        SelectorSpec("cdpruner", tokens=64),
        "CDPruner (Zhang et al. 2025): 64 of 576 tokens, the smallest LLaVA-1.5 budget of its paper; needs CLIP's "
        "text tower",
    ),
    "dart": (
        SelectorSpec("dart", tokens=128),
        "DART (Wen et al. 2025), pre-LLM variant: 128 of 576, the reference's default max_num_trunction",
    ),
    "random": (SelectorSpec("random", tokens=144), "baseline: 144 of 576 patches, one seeded uniform draw"),
    "pool": (SelectorSpec("pool", tokens=144), "baseline: 2x2 average pooling of the 24x24 patch grid, 144 tokens"),
}

# Schedules without a default recipe in recipes/, one example each on llava-1.5-7b (N = 576).
SCHEDULE_EXAMPLES = {
    "dart-llm": (
        ScheduleSpec("dart-llm", layer=2, ratio=0.7778),
        "DART (Wen et al. 2025) in the LLM at K=2: R = 7/9 gives floor(576 * 2/9 / 8) = 16 tokens per pivot, "
        "4 image pivots + 8 x 16 = 132 of 576, what the reference keeps at its default max_num_trunction 128",
    ),
}


def published_fitprune() -> dict:
    """The published FitPrune data: {model: {"n_visual": N, "recipes": {cut%: [drop per layer]}}, ...}."""
    return json.loads(files("vtpexport").joinpath("data", PUBLISHED_FITPRUNE).read_text())


def model_ref(name: str) -> ModelRef:
    from .models.loader import architecture

    args = architecture(name)
    return ModelRef(args.family, name, args.config_hash())


def fitprune_recipes(model: str = "llava-1.5-7b") -> list[Recipe]:
    """One recipe per published cut, in increasing order of the cut."""
    published = published_fitprune()[model]
    ref = model_ref(model)
    recipes = []
    for cut, drop in sorted(published["recipes"].items(), key=lambda item: int(item[0])):
        provenance = new_provenance(
            "vtpexport.shipped_recipes",
            created=CREATED,
            source="FitPrune authors' code (github.com/ywh187/FitPrune), hard-coded per-layer drop counts",
            data=f"vtpexport/data/{PUBLISHED_FITPRUNE}",
            stated_flops_cut=int(cut) / 100,
        )
        schedule = ScheduleSpec(method="fitprune", drop=tuple(drop), visual_tokens=published["n_visual"])
        recipes.append(Recipe(f"fitprune-{model}-{cut}", ref, schedule=schedule, provenance=provenance))
    return recipes


def default_schedule_recipes(model: str) -> list[Recipe]:
    """PyramidDrop and FastV with the defaults of their papers and code."""
    ref = model_ref(model)
    sources = {
        "pyramiddrop": "PyramidDrop defaults (paper and github.com/Cooperx521/PyramidDrop): stages end at "
        "layers 8, 16, 24, ratio 0.5",
        "fastv": "FastV defaults (paper and github.com/pkunlp-icler/FastV): K=2, R=50%",
    }
    return [
        Recipe(
            f"{schedule.method}-{model}",
            ref,
            schedule=schedule,
            provenance=new_provenance("vtpexport.shipped_recipes", created=CREATED, source=sources[schedule.method]),
        )
        for schedule in (PYRAMIDDROP_DEFAULT, FASTV_DEFAULT)
    ]


def _examples(examples: dict, part: str, model: str) -> list[Recipe]:
    """One recipe per entry of `examples`, its spec as the recipe's `part` (selector or schedule)."""
    ref = model_ref(model)
    return [
        Recipe(
            f"{name}-{model}",
            ref,
            provenance=new_provenance("vtpexport.shipped_recipes", created=CREATED, source=source),
            **{part: spec},
        )
        for name, (spec, source) in examples.items()
    ]


def selector_examples(model: str = "llava-1.5-7b") -> list[Recipe]:
    """One recipe per selector in SELECTOR_EXAMPLES, the selector alone (compose a schedule by
    calibrating with `--selector`)."""
    return _examples(SELECTOR_EXAMPLES, "selector", model)


def schedule_examples(model: str = "llava-1.5-7b") -> list[Recipe]:
    """One recipe per schedule in SCHEDULE_EXAMPLES, the schedule alone."""
    return _examples(SCHEDULE_EXAMPLES, "schedule", model)


def shipped_recipes() -> list[Recipe]:
    """What recipes/ holds (the selector examples in its examples/ folder)."""
    recipes = [recipe for model in FITPRUNE_MODELS for recipe in fitprune_recipes(model)]
    return recipes + [recipe for model in SCHEDULE_MODELS for recipe in default_schedule_recipes(model)]


def write_recipes(folder: str | Path) -> list[Path]:
    """Write every shipped recipe to `folder`/<name>.yaml; returns the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    (folder / EXAMPLES).mkdir(exist_ok=True)
    placed = [(recipe, folder) for recipe in shipped_recipes()]
    placed += [(recipe, folder / EXAMPLES) for recipe in selector_examples() + schedule_examples()]
    for recipe, where in placed:
        recipe.save(where / f"{recipe.name}.yaml")
        paths.append(where / f"{recipe.name}.yaml")
    return paths


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) > 1 or any(arg.startswith("-") for arg in argv):
        sys.exit("usage: python -m vtpexport.shipped_recipes [FOLDER]   (default: ./recipes)")
    for path in write_recipes(argv[0] if argv else "recipes"):
        print(path)


if __name__ == "__main__":
    main()
