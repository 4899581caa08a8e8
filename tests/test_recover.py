"""Recoverable Compression, fixed-budget PruMerge+ and the CLIP text encoder they rely on."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import random_image
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

from vtpexport.cli import main
from vtpexport.errors import UserError
from vtpexport.models.text_encoder import attach_text_encoder, load_text_encoder, write_tiny_clip
from vtpexport.pruning.prumerge import merge, plus_fixed_budget
from vtpexport.pruning.recover import recover_adaptive, recover_fixed
from vtpexport.recipe import ModelRef, Recipe, SelectorSpec
from vtpexport.runtime.eager import greedy_generate, image_embeddings, prepare

N = 36


def peaked(n: int, peaks: dict[int, float], base: float = 0.01) -> torch.Tensor:
    values = torch.full((1, n), base)
    for index, value in peaks.items():
        values[0, index] = value
    return values


def test_recover_fixed_unites_visual_and_text_picks_then_takes_centres_from_the_rest():
    scores = peaked(N, {3: 0.9, 10: 0.8, 20: 0.7, 25: 0.3, 33: 0.2})
    relevance = peaked(N, {10: 0.99, 5: 0.9, 30: 0.8, 0: 0.1})  # 10 is already a visual pick
    pick = recover_fixed(scores, relevance, visual_tokens=3, text_tokens=2, merge_tokens=2)
    assert pick.selected.tolist() == [[3, 5, 10, 20, 30]]
    assert pick.centres.tolist() == [[25, 33]]  # by descending score, as the reference emits them
    leftover = set(pick.leftover[0].nonzero().flatten().tolist())
    assert leftover == set(range(N)) - {3, 5, 10, 20, 30}


def test_recover_fixed_clamps_counts_to_what_is_left():
    scores, relevance = torch.rand(1, 8), torch.rand(1, 8)
    pick = recover_fixed(scores, relevance, visual_tokens=6, text_tokens=5, merge_tokens=5)
    assert pick.selected.shape[1] == 8 and pick.centres.shape[1] == 0
    assert not pick.leftover.any()


def _fence_mask(values: np.ndarray) -> np.ndarray:
    q1, q3 = np.percentile(values, [25, 75])
    return values > q3 + 1.5 * (q3 - q1)


def test_recover_adaptive_counts_are_iqr_outliers_among_what_is_left():
    torch.manual_seed(3)  # Gamma samples from the global generator
    scores = torch.distributions.Gamma(0.5, 1.0).sample((1, N)).float()
    relevance = torch.rand(1, N)
    relevance[0, [2, 17, 29]] = torch.tensor([3.0, 2.5, 2.0])
    pick = recover_adaptive(scores, relevance)

    a, t = scores[0].numpy(), relevance[0].numpy()
    visual = set(np.flatnonzero(_fence_mask(a)))
    rest = np.array(sorted(set(range(N)) - visual))
    text_count = int(_fence_mask(t[rest]).sum())
    text = set(rest[np.argsort(-t[rest])[:text_count]])
    selected = sorted(visual | text)
    leftover = np.array(sorted(set(range(N)) - set(selected)))
    centre_count = int(_fence_mask(a[leftover]).sum())
    centres = list(leftover[np.argsort(-a[leftover], kind="stable")[:centre_count]])  # highest first

    assert visual and text_count == 3, "the crafted inputs must exercise both recoveries"
    assert pick.selected[0].tolist() == selected
    assert pick.centres[0].tolist() == centres


def test_recover_centres_come_highest_score_first_at_36_outliers():
    """On LLaVA-1.5's 576 patches, 36 centres among the leftovers leave topk's order, not raster's."""
    scores = torch.rand(1, 576, generator=torch.Generator().manual_seed(36))
    relevance = torch.rand(1, 576, generator=torch.Generator().manual_seed(37))
    pick = recover_fixed(scores, relevance, visual_tokens=36, text_tokens=36, merge_tokens=36)
    leftover = np.array(sorted(set(range(576)) - set(pick.selected[0].tolist())))
    a = scores[0].numpy()
    expected = leftover[np.argsort(-a[leftover], kind="stable")[:36]]
    assert pick.centres[0].tolist() == expected.tolist()
    assert pick.centres[0].tolist() != sorted(expected.tolist())


def test_recover_without_centres_appends_no_aggregate():
    assert SelectorSpec("recover", tokens=36, text_tokens=36, merge_tokens=0).output_tokens(576, 24) == 72
    assert SelectorSpec("recover", tokens=36, text_tokens=36, merge_tokens=36).output_tokens(576, 24) == 109
    # Centres clamped to what is left count too: none left, no aggregate.
    assert SelectorSpec("recover", tokens=500, text_tokens=76, merge_tokens=36).output_tokens(576, 24) == 576


def test_merge_with_a_pool_only_absorbs_and_aggregates_pool_members():
    n, c = 6, 6
    features = torch.eye(n)[None]  # token j is the unit vector e_j: sums show who was merged
    keys = torch.randn(1, n, c, generator=torch.Generator().manual_seed(0))
    scores = torch.full((1, n), 0.1)
    pool = torch.tensor([[False, True, True, True, False, False]])
    out = merge(features, keys, scores, torch.tensor([[1]]), pool=pool)
    # Centre 1 takes its pool neighbours 2 and 3 (never 0, 4, 5, itself only once).
    assert torch.allclose(out[0, 0], torch.tensor([0.0, 1.0, 0.1, 0.1, 0.0, 0.0]))
    # The aggregate holds the pool members no centre is: 2 and 3.
    assert torch.allclose(out[0, 1], torch.tensor([0.0, 0.0, 0.1, 0.1, 0.0, 0.0]))


def test_merge_affinity_bonus_changes_which_neighbours_are_taken():
    n = 40  # more than 32 candidates, so the ranking matters
    features = torch.eye(n)[None]
    keys = torch.ones(1, n, 4)  # every key equally similar: only the bonus decides
    scores = torch.full((1, n), 0.5)
    bonus = torch.zeros(1, n)
    bonus[0, 8:] = 1.0  # favour tokens 8.. over 1..7
    out = merge(features, keys, scores, torch.tensor([[0]]), affinity_bonus=bonus)
    absorbed = set((out[0, 0] > 0).nonzero().flatten().tolist()) - {0}
    assert absorbed == set(range(8, 40))


def test_plus_fixed_budget_is_a_uniform_grid_filled_by_score():
    scores = peaked(N, {5: 0.9, 6: 0.8, 7: 0.7, 9: 0.6, 4: 0.99})  # 4 is on the grid already
    kept = plus_fixed_budget(scores, 12)
    grid = list(range(0, N, 4))  # 12 // 4 = 3 outliers -> stride (36 // 3) // 3 = 4: 9 samples
    assert kept.tolist() == [sorted(grid + [5, 6, 7])]
    assert plus_fixed_budget(scores, 0).shape == (1, 0)
    assert plus_fixed_budget(scores, N).tolist() == [list(range(N))]
    # Fewer than a grid's worth: the stride widens so the grid alone never exceeds the budget.
    assert plus_fixed_budget(scores, 5).shape == (1, 5)


def test_recover_recipe_validation():
    with pytest.raises(UserError, match="together"):
        SelectorSpec("recover", tokens=4).validate()
    with pytest.raises(UserError, match="text_tokens does not apply to method prumerge"):
        SelectorSpec("prumerge", tokens=4, text_tokens=2).validate()
    with pytest.raises(UserError, match="text_tokens must be an integer >= 0"):
        SelectorSpec("recover", tokens=4, text_tokens=-1, merge_tokens=1).validate()
    fixed = SelectorSpec("recover", tokens=4, text_tokens=3, merge_tokens=2)
    fixed.validate()
    assert fixed.output_tokens(N, 6) == 10 and not fixed.adaptive and fixed.text_guided
    assert SelectorSpec("recover").adaptive
    assert SelectorSpec("prumerge+", tokens=12).output_tokens(N, 6) == 13


@pytest.mark.parametrize("eos_token_id", [2, 5])
def test_text_encoder_matches_transformers_clip(tmp_path, eos_token_id):
    """Both of transformers' pooling rules (legacy eos id 2 = highest id, else first EOS)."""
    text = CLIPTextConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=20, eos_token_id=eos_token_id,
    )  # fmt: skip
    vision = CLIPVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2)
    torch.manual_seed(0)
    reference = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=8))
    reference.save_pretrained(tmp_path)
    write_tiny_clip(24, tmp_path / "tokenizer-source")  # any tokenizer: ids below are explicit
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((tmp_path / "tokenizer-source" / name).read_bytes())
    from vtpexport.graph.args import VisionArgs

    ours = load_text_encoder(tmp_path, VisionArgs(hidden_size=24))
    ids = torch.tensor([[1, 7, 9, 49, 5, 3, 3], [1, 12, 5, 3, 3, 3, 3]])
    with torch.no_grad():
        expected = reference.get_text_features(input_ids=ids)
        expected = getattr(expected, "pooler_output", expected)
        torch.testing.assert_close(ours.module(ids), expected, atol=1e-6, rtol=0)
        patches = torch.randn(2, 5, 24)
        torch.testing.assert_close(
            ours.module.visual_projection(patches), reference.visual_projection(patches), atol=1e-6, rtol=0
        )
    with pytest.raises(UserError, match="width 24"):
        load_text_encoder(tmp_path, VisionArgs(hidden_size=32))


def _recipe(model, selector):
    ref = ModelRef(model.args.family, model.source.name, model.args.config_hash())
    return Recipe("test", ref, selector)


def test_recover_batches_equal_single_images_and_questions(tiny_models):
    model = tiny_models["tiny-llava-1.5"]
    attach_text_encoder(model, None)
    selector = SelectorSpec("recover", tokens=5, text_tokens=4, merge_tokens=3)
    images = [random_image(60, 90, seed) for seed in (0, 1)]
    questions = ["What colour is the square?", "Is there a dog?"]
    pixels = torch.cat([model.image_processor(images=[i], return_tensors="pt")["pixel_values"] for i in images])
    projection = model.text_encoder.module.visual_projection
    with torch.no_grad():
        together = model.graph.select_image_tokens(pixels, selector, model.text_encoder.embed(questions), projection)
    for row, (image, question) in enumerate(zip(images, questions, strict=True)):
        alone = image_embeddings(model, image, _recipe(model, selector), question)
        torch.testing.assert_close(together.embeds[row], alone, atol=1e-5, rtol=0)
    assert together.embeds.shape[1] == 5 + 4 + 3 + 1
    assert (together.patch_index[:, -1] == -1).all()


def test_recover_keeping_everything_gives_the_unpruned_tokens(tiny_models):
    model = tiny_models["tiny-llava-1.5"]
    image = random_image(60, 90)
    selector = SelectorSpec("recover", tokens=N, text_tokens=0, merge_tokens=0)
    kept = image_embeddings(model, image, _recipe(model, selector), "What?")
    unpruned = image_embeddings(model, image)
    torch.testing.assert_close(kept, unpruned, atol=1e-6, rtol=0)  # no centre, so no aggregate


def test_recover_question_changes_the_kept_patches(tiny_models):
    model = tiny_models["tiny-llava-1.5"]
    attach_text_encoder(model, None)
    image = random_image(60, 90)
    pixels = model.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    selector = SelectorSpec("recover", tokens=3, text_tokens=6, merge_tokens=0)
    projection = model.text_encoder.module.visual_projection
    kept = []
    for question in ("What colour is the square?", "How many dogs are on the grass by the lake?"):
        with torch.no_grad():
            text = model.text_encoder.embed([question])
            kept.append(model.graph.select_image_tokens(pixels, selector, text, projection).patch_index.tolist())
    assert kept[0] != kept[1]


def test_adaptive_recover_generates_eagerly(tiny_models):
    model = tiny_models["tiny-llava-1.5"]
    recipe = _recipe(model, SelectorSpec("recover"))
    batch = prepare(model, [random_image(60, 90)], ["Is there a dog?"], 4, recipe)
    assert len(greedy_generate(model, batch, 4, recipe=recipe)[0]) >= 1


def test_cli_refuses_a_missing_text_encoder(tmp_path, image_file):
    from test_export import write_recipe

    recipe = write_recipe(tmp_path, "tiny-llava-1.5", "recover", selector=SelectorSpec("recover"))
    result = CliRunner().invoke(
        main,
        ["run", "--model", "tiny-llava-1.5", "--recipe", str(recipe), "--text-encoder", str(tmp_path / "nope"),
         "--image", str(image_file), "--prompt", "What?"],
    )  # fmt: skip
    assert result.exit_code == 2 and result.output.startswith("error: text encoder folder not found"), result.output
    result = CliRunner().invoke(
        main, ["build", "--recipe", str(recipe), "--out", str(tmp_path / "out"), "--text-encoder", str(recipe)]
    )
    assert result.exit_code == 2 and result.output.startswith("error: text encoder folder not found"), result.output
    assert not (tmp_path / "out").exists()
