"""The method registry: every method declared once, read by recipe validation, the graph,
FLOPs and the CLI; a new selector needs only its own declaration."""

import pytest
import torch
from click.testing import CliRunner
from conftest import random_image

from vtpexport.cli import main
from vtpexport.errors import UserError
from vtpexport.flops import paper_flops
from vtpexport.pruning import registry
from vtpexport.pruning.ops import gather_tokens
from vtpexport.pruning.registry import (
    ScheduleSpec,
    Selection,
    Selector,
    SelectorSpec,
    names,
    register,
    schedule_method,
    selector_method,
)
from vtpexport.recipe import ModelRef, Recipe
from vtpexport.runtime.eager import greedy_generate, image_embeddings, prepare


def test_every_method_is_declared_once_with_fields_of_its_spec():
    assert names("selector") == (
        "cdpruner", "dart", "divprune", "fopru-rank", "fopru-row", "pool", "prumerge", "prumerge+", "random", "recover"
    )  # fmt: skip
    assert names("schedule") == ("dart-llm", "fastv", "fitprune", "pyramiddrop")
    for kind, spec_type in (("selector", SelectorSpec), ("schedule", ScheduleSpec)):
        spec_fields = set(spec_type.__dataclass_fields__)
        for method in registry.methods(kind).values():
            assert set(method.fields) <= spec_fields - {"method"}, method.name
    assert {m.position_policy for m in registry.methods("schedule").values()} == {"original", "renumbered"}
    assert schedule_method("pyramiddrop").position_policy == "renumbered"


def test_unknown_methods_and_foreign_fields_are_refused():
    with pytest.raises(UserError, match=r"unknown method 'sparsevlm' \(known: cdpruner, dart, divprune, .*recover\)"):
        SelectorSpec("sparsevlm", tokens=3).validate()
    with pytest.raises(
        UserError, match="unknown method 'sparsevlm' \\(known: dart-llm, fastv, fitprune, pyramiddrop\\)"
    ):
        ScheduleSpec("sparsevlm").validate()
    # A field of another method is an error, not silently ignored.
    with pytest.raises(
        UserError, match=r"tokens does not apply to method fopru-rank \(fopru-rank takes ratio, tiles\)"
    ):
        SelectorSpec("fopru-rank", ratio=0.5, tokens=3).validate()
    with pytest.raises(UserError, match=r"drop does not apply to method fastv \(fastv takes layer, ratio\)"):
        ScheduleSpec("fastv", drop=(1, 2)).validate()
    with pytest.raises(UserError, match=r"ratio must be a number in \(0, 1\], got 1.5"):
        SelectorSpec("fopru-row", ratio=1.5).validate()
    with pytest.raises(UserError, match="layers must be strictly increasing, got \\[2, 1\\]"):
        ScheduleSpec("pyramiddrop", layers=(2, 1)).validate()
    with pytest.raises(UserError, match="drop sums to 6, more than the 4 visual_tokens"):
        ScheduleSpec("fitprune", drop=(3, 3), visual_tokens=4).validate()
    # Against the model's depth: each schedule's own rule.
    with pytest.raises(UserError, match=r"fastv layer must be in \[1, 4\), got 4"):
        ScheduleSpec("fastv", layer=4).validate(num_layers=4)
    with pytest.raises(UserError, match="pyramiddrop stage layer 4 is past the model's 4 layers"):
        ScheduleSpec("pyramiddrop", layers=(1, 4)).validate(num_layers=4)
    with pytest.raises(UserError, match="fitprune recipe has 2 layers, the model has 4"):
        ScheduleSpec("fitprune", drop=(1, 1), visual_tokens=4).validate(num_layers=4)


def test_cli_choices_are_the_registry():
    result = CliRunner().invoke(main, ["calibrate", "--help"])
    assert result.exit_code == 0
    help_text = " ".join(result.output.split())
    for name in (*names("selector"), *names("schedule")):
        assert name in help_text
    refused = CliRunner().invoke(
        main, ["calibrate", "--model", "tiny-llava-1.5", "--flops-budget", "0.5", "--method", "x"]
    )
    assert (
        refused.exit_code == 2 and "'x' is not one of 'dart-llm', 'fastv', 'fitprune', 'pyramiddrop'" in refused.output
    )


class EveryOther(Selector):
    """A selector written only for this test: keep the patches at even raster positions."""

    name = "test-every-other"
    summary = "even raster positions"
    fields = {}

    def output_tokens(self, spec, num_patches, grid_size):
        return (num_patches + 1) // 2

    def select(self, spec, inputs):
        n = inputs.patches.shape[1]
        kept = torch.arange(0, n, 2)[None].expand(inputs.patches.shape[0], -1)
        return Selection(gather_tokens(inputs.patches, kept), kept)


@pytest.fixture
def every_other():
    register(EveryOther)
    yield selector_method(EveryOther.name)
    del registry._METHODS[EveryOther.name]


def test_a_new_selector_is_one_declaration(tiny_models, every_other):
    """Declared and registered, it validates, plans FLOPs, runs in the graph and generates."""
    model = tiny_models["tiny-llava-1.5"]
    args = model.args
    spec = SelectorSpec(EveryOther.name)
    recipe = Recipe("every-other", ModelRef(args.family, "tiny-llava-1.5", args.config_hash()), spec)
    Recipe.from_dict(recipe.to_dict()).check_model(args, "tiny-llava-1.5")
    assert paper_flops(args, recipe, args.vision.num_patches).n_image == args.vision.num_patches
    assert recipe.visual_tokens(args, args.vision.num_patches) == 18
    image = random_image(60, 90)
    unpruned = image_embeddings(model, image)
    selected = image_embeddings(model, image, recipe, "What?")
    # The projector is per token, so the kept tokens are the unpruned ones at even positions.
    torch.testing.assert_close(selected, unpruned[0::2], atol=1e-5, rtol=0)
    batch = prepare(model, [image], ["What?"], 3, recipe)
    assert batch.num_image_tokens == [18]
    assert len(greedy_generate(model, batch, 3, recipe=recipe)[0]) == 3
