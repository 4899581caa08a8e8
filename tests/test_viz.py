"""`vtpexport viz`: the image with the patches a recipe keeps, one panel per selector / drop stage."""

import matplotlib.image
from click.testing import CliRunner
from conftest import random_image
from test_cli import assert_one_line_error

from vtpexport.cli import main
from vtpexport.models.loader import architecture
from vtpexport.recipe import ModelRef, Recipe, ScheduleSpec, SelectorSpec
from vtpexport.viz import kept_patch_panels, token_layout


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
        "input: 36 tokens",
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


def test_layout_of_a_centre_cropped_tile(tiny_models):
    model = tiny_models["tiny-llava-1.5"]  # 48 px, 8 px patches: the centre 80 x 80 of 120 x 80, 6 x 6 cells
    layout = token_layout(model.args, model.image_processor, 120, 80)
    assert layout.views == ("image",) and len(layout.boxes) == 36
    assert layout.boxes[0] == (0, 20.0, 0.0, 20 + 80 / 6, 80 / 6)
    assert layout.boxes[35][3:] == (100.0, 80.0)


def test_layout_of_anyres_tiles(tiny_models):
    """LLaVA-NeXT: the base tile's cells cover the squashed image; the high-resolution cells, in
    packing order, cover it row by row (the unpadded rows may overhang by less than a cell)."""
    model = tiny_models["tiny-llava-next"]  # 32 px tiles, 4 x 4 cells; 120 x 80 -> a 2 x 2 tiling
    layout = token_layout(model.args, model.image_processor, 120, 80)
    assert layout.views == ("base tile", "2x2 tiles") and len(layout.boxes) == 70
    base = [box for box in layout.boxes if box and box[0] == 0]
    tiles = [box for box in layout.boxes if box and box[0] == 1]
    assert len(base) == 16 and base[-1][3:] == (120.0, 80.0)
    newlines = [i for i, box in enumerate(layout.boxes) if box is None]
    assert len(newlines) == 6 and len(tiles) == 48  # 6 unpadded rows of 8 cells, each row ends in a newline
    cell_h = tiles[0][4] - tiles[0][2]
    assert tiles[0][1] == 0 and -cell_h < tiles[0][2] <= 0 and 80 <= tiles[-1][4] < 80 + cell_h
    assert [box[1] for box in tiles[:8]] == [15.0 * i for i in range(8)]


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


def test_viz_anyres(tmp_path, image_file):
    recipe = tmp_path / "r.yaml"
    recipe_for("tiny-llava-next", schedule=ScheduleSpec("pyramiddrop", layers=(1, 2), ratio=0.5)).save(recipe)
    out = tmp_path / "kept.png"
    result = invoke("--recipe", recipe, "--image", image_file, "--prompt", "What?", "--out", out)
    assert result.exit_code == 0, result.output
    assert matplotlib.image.imread(out).shape[1] > 600  # two views per panel


def test_viz_refuses_another_models_recipe(tmp_path, image_file):
    recipe = tmp_path / "r.yaml"
    recipe_for("tiny-llava-next", schedule=ScheduleSpec("fastv", layer=1)).save(recipe)
    out = tmp_path / "kept.png"
    args = ["--model", "tiny-llava-1.5", "--recipe", recipe, "--image", image_file, "--prompt", "What?", "--out", out]
    assert_one_line_error(invoke(*args), r"recipe 'r' is for tiny-llava-next .* not for tiny-llava-1.5")
    assert not out.exists()
