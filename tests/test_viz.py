"""`vtpexport viz`: the image with the patches a recipe keeps, one panel per selector / drop stage."""

import matplotlib.image
import pytest
from click.testing import CliRunner
from conftest import random_image
from test_cli import assert_one_line_error

from vtpexport.cli import main
from vtpexport.models.loader import architecture
from vtpexport.recipe import ModelRef, Recipe, ScheduleSpec, SelectorSpec
from vtpexport.viz import image_region, kept_patch_panels


def invoke(*args):
    return CliRunner().invoke(main, ["viz", *map(str, args)])


def recipe_for(model_name, selector=None, schedule=None, name="r"):
    args = architecture(model_name)
    return Recipe(name, ModelRef(args.family, model_name, args.config_hash()), selector, schedule)


def test_panels_follow_the_recipe(tiny_models):
    model = tiny_models["tiny-llava-1.5"]  # 6 x 6 = 36 patches
    image = random_image(48, 72)
    composed = recipe_for(
        "tiny-llava-1.5", SelectorSpec("fopru-rank", ratio=0.5), ScheduleSpec("pyramiddrop", layers=(1, 3), ratio=0.5)
    )
    panels = kept_patch_panels(model, composed, image, "What?")
    assert [title for title, _ in panels] == [
        "input: 36 patches",
        "fopru-rank: 18 of 36",
        "pyramiddrop drop at layer 1: 9 of 36 left",
        "pyramiddrop drop at layer 3: 4 of 36 left",
    ]
    selected = set(panels[1][1])
    assert set(panels[2][1]) <= selected and set(panels[3][1]) <= set(panels[2][1])  # each stage keeps a subset
    fitprune = recipe_for("tiny-llava-1.5", schedule=ScheduleSpec("fitprune", drop=(3, 3, 3, 3), visual_tokens=36))
    titles = [title for title, _ in kept_patch_panels(model, fitprune, image, "What?")]
    assert titles[1:] == [f"fitprune drop at layer {i}: {33 - 3 * i} of 36 left" for i in range(4)]
    merged = kept_patch_panels(model, recipe_for("tiny-llava-1.5", SelectorSpec("prumerge", tokens=5)), image, "What?")
    assert merged[1][0] == "prumerge: 5 of 36 + 1 merged" and len(merged[1][1]) == 5


def test_many_fitprune_drops_are_grouped(tiny_models, monkeypatch):
    monkeypatch.setattr("vtpexport.viz.MAX_PANELS", 3)
    schedule = ScheduleSpec("fitprune", drop=(3, 3, 3, 3), visual_tokens=36)
    panels = kept_patch_panels(tiny_models["tiny-llava-1.5"], recipe_for("tiny-llava-1.5", schedule=schedule),
                               random_image(48, 48), "What?")  # fmt: skip
    assert [title for title, _ in panels[1:]] == [
        "fitprune drop at layers 0-1: 30 of 36 left",
        "fitprune drop at layers 2-3: 24 of 36 left",
    ]


def test_region_is_what_the_processor_keeps(tiny_models):
    processor = tiny_models["tiny-llava-1.5"].image_processor
    assert image_region(random_image(80, 120), processor) == (20, 0, 100, 80)  # centre square of a wide image


def test_viz_writes_a_png(tmp_path, image_file):
    recipe = tmp_path / "r.yaml"
    recipe_for("tiny-llava-1.5", SelectorSpec("fopru-rank", ratio=0.5), ScheduleSpec("fastv", layer=1, ratio=0.5)).save(
        recipe
    )
    out = tmp_path / "kept.png"
    result = invoke("--recipe", recipe, "--image", image_file, "--prompt", "What colour?", "--out", out)
    assert result.exit_code == 0, result.output
    height, width = matplotlib.image.imread(out).shape[:2]
    assert width > height > 100  # three panels side by side


@pytest.mark.parametrize(
    "model, recipe_model, pattern",
    [
        ("tiny-llava-next", "tiny-llava-next", r"LLaVA-NeXT anyres tiles are not mapped"),
        ("tiny-llava-1.5", "tiny-llava-next", r"recipe 'r' is for tiny-llava-next .* not for tiny-llava-1.5"),
    ],
)
def test_viz_refusals(tmp_path, image_file, model, recipe_model, pattern):
    recipe = tmp_path / "r.yaml"
    recipe_for(recipe_model, schedule=ScheduleSpec("fastv", layer=1)).save(recipe)
    out = tmp_path / "kept.png"
    args = ["--model", model, "--recipe", recipe, "--image", image_file, "--prompt", "What?", "--out", out]
    assert_one_line_error(invoke(*args), pattern)
    assert not out.exists()
