"""Every pruning method on crafted inputs whose answer is known, then inside the tiny models."""

import numpy as np
import pytest
import torch
from conftest import random_image

from vtpexport.pruning.fastv import fastv_scores
from vtpexport.pruning.fitprune import fitprune_scores
from vtpexport.pruning.fopru import fopru_rank, fopru_row, fopru_significance
from vtpexport.pruning.ops import iqr_outliers, masked_quantile_linear, topk_ascending
from vtpexport.pruning.prumerge import adaptive_count, merge, plus_samples, prumerge_scores
from vtpexport.pruning.pyramiddrop import pyramiddrop_scores
from vtpexport.recipe import ModelRef, Recipe, ScheduleSpec, SelectorSpec
from vtpexport.runtime.eager import greedy_generate, prepare

DOMINANT = [1, 3, 4]


def test_topk_ascending_returns_raster_order():
    scores = torch.tensor([[0.1, 0.9, 0.2, 0.8, 0.7, 0.0]])
    assert topk_ascending(scores, 3).tolist() == [[1, 3, 4]]


def test_quantiles_and_outliers_follow_numpy():
    values = torch.rand(3, 37, generator=torch.Generator().manual_seed(0))
    among = torch.rand(3, 37, generator=torch.Generator().manual_seed(1)) < torch.tensor([[1.0], [0.5], [0.2]])
    for q in (0.25, 0.5, 0.75):
        expected = [np.percentile(row[keep], 100 * q) for row, keep in zip(values.numpy(), among.numpy(), strict=True)]
        np.testing.assert_allclose(masked_quantile_linear(values, among, q).numpy(), expected, rtol=1e-6)
    values[1, [5, 9]] = 10.0
    assert iqr_outliers(values)[1].nonzero().flatten().tolist() == [5, 9]
    assert iqr_outliers(values, among)[1].nonzero().flatten().tolist() == [i for i in (5, 9) if among[1, i]]


def test_fitprune_keeps_tokens_text_and_image_rows_attend_to():
    # Sequence [prefix(1) | image(6) | text(2)]; both text and image rows favour tokens 1, 3, 4.
    probs = torch.full((1, 2, 9, 9), 0.01)
    for j in DOMINANT:
        probs[:, :, :, 1 + j] = 0.3
    probs[:, 1, 7:, 1 + 5] = 0.9  # one head's text rows love token 5, but image rows ignore it
    # The image and text rows only: the prefix row is never computed.
    scores = fitprune_scores(probs[:, :, 1:], image_start=1, image_len=6, key_mask=torch.ones(1, 9))
    assert topk_ascending(scores, 3).tolist() == [DOMINANT]


def test_fitprune_uses_max_over_heads():
    probs = torch.full((1, 2, 6, 6), 0.01)
    probs[:, 0, :, 1 + 2] = 0.5  # only head 0 attends token 2: a mean would halve it, max keeps it
    probs[:, :, :, 1 + 0] = 0.3
    scores = fitprune_scores(probs[:, :, 1:], image_start=1, image_len=3, key_mask=torch.ones(1, 6))
    assert scores.argmax().item() == 2


def test_pyramiddrop_scores_follow_the_last_query():
    # Keys [prefix(2) | image(6)]. Head 1 favours DOMINANT; head 0 spends almost all of its mass on
    # prefix key 0 and, within the image, favours token 5. Softmax over every key (the reference)
    # leaves head 0 a tiny image share, so DOMINANT wins; a softmax over the image keys alone
    # would renormalise head 0 and put token 5 in the top 3.
    k = torch.zeros(1, 2, 8, 4)
    q_last = torch.zeros(1, 2, 1, 4)
    q_last[:, :, :, 0] = 4.0
    k[:, 0, 0, 0] = 6.0  # head 0's logit 12 on prefix key 0
    k[:, 0, 2 + 5, 0] = 1.0  # head 0's logit 2 on image token 5 (0 elsewhere)
    for j in DOMINANT:
        k[:, 1, 2 + j, 0] = 0.5  # head 1's logit 1 on DOMINANT (0 elsewhere)
    scores = pyramiddrop_scores(q_last, k, torch.zeros(1, 1, 1, 8), 2, 6, torch.ones(1, 8))
    assert topk_ascending(scores, 3).tolist() == [DOMINANT]
    logits = (q_last @ k.transpose(-1, -2)) * 0.5  # the same scores with the softmax over image keys only
    image_only = torch.softmax(logits[..., 2:], dim=-1).mean(dim=1)[:, 0]
    assert 5 in topk_ascending(image_only, 3).tolist()[0]  # so the assertion above can fail


def test_fastv_scores_mean_over_heads_of_the_last_row():
    # DOMINANT gets 0.3 from both heads (mean 0.3, max 0.3); token 5 gets 0.5 from head 0 only
    # (mean 0.255, max 0.5): the mean keeps DOMINANT, a max over heads would keep token 5.
    probs = torch.full((1, 2, 9), 0.01)
    probs[:, :, [2 + j for j in DOMINANT]] = 0.3
    probs[:, 0, 2 + 5] = 0.5
    assert topk_ascending(fastv_scores(probs, 2, 6, torch.ones(1, 9)), 3).tolist() == [DOMINANT]
    assert 5 in topk_ascending(probs.amax(dim=1)[:, 2:8], 3).tolist()[0]


def test_padding_is_always_dropped_first():
    probs = torch.full((1, 9), 0.5)
    mask = torch.ones(1, 11)
    mask[0, 2] = 0  # image token 0 is padding
    assert 0 not in topk_ascending(fastv_scores(probs[:, None].expand(1, 2, 9), 2, 6, mask), 5).tolist()[0]


def crafted_clip_attention(grid: int, dominant: list[int]) -> torch.Tensor:
    n = grid * grid
    probs = torch.full((1, 3, n + 1, n + 1), 0.1 / n)
    for j in dominant:
        probs[:, :, :, 1 + j] = 0.3
    return probs


def test_fopru_rank_keeps_the_tokens_everyone_attends_to():
    significance = fopru_significance(crafted_clip_attention(4, [2, 7, 9]))
    assert fopru_rank(significance, 3).tolist() == [[2, 7, 9]]


def test_fopru_row_keeps_whole_rows():
    significance = fopru_significance(crafted_clip_attention(4, [8, 9, 10]))
    assert fopru_row(significance, grid_size=4, keep_rows=1).tolist() == [[8, 9, 10, 11]]


def test_fopru_picks_the_statistic_with_larger_variance():
    probs = torch.full((1, 1, 5, 5), 0.2)
    probs[0, 0, 1 + 1, 1:] = torch.tensor([0.9, 0.9, 0.9, 0.9])  # token 1 gives a lot: row means vary
    assert fopru_significance(probs).argmax().item() == 1


def test_prumerge_adaptive_count_finds_the_outliers():
    query = torch.zeros(1, 1 + 16, 8)
    key = torch.randn(1, 1 + 16, 8, generator=torch.Generator().manual_seed(0)) * 0.01
    query[:, 0, 0] = 10.0
    key[:, 1 + torch.tensor(DOMINANT), 0] = 3.0
    scores = prumerge_scores(query, key)
    assert adaptive_count(scores).tolist() == [3]
    assert topk_ascending(scores, 3).tolist() == [DOMINANT]


def test_merge_equals_a_brute_force_loop():
    gen = torch.Generator().manual_seed(1)
    n, c = 40, 5
    x, keys, a = (
        torch.randn(1, n, c, generator=gen),
        torch.randn(1, n, c, generator=gen),
        torch.rand(1, n, generator=gen),
    )
    kept = torch.tensor([[3, 17, 29]])
    out = merge(x, keys, a, kept)
    unit = torch.nn.functional.normalize(keys[0], dim=-1)
    for row, i in enumerate(kept[0].tolist()):
        similarity = unit @ unit[i]
        similarity[i] = -float("inf")
        neighbours = similarity.topk(32).indices
        expected = x[0, i] + (a[0, neighbours, None] * x[0, neighbours]).sum(0)
        torch.testing.assert_close(out[0, row], expected)
    pruned = [j for j in range(n) if j not in kept[0].tolist()]
    torch.testing.assert_close(out[0, -1], (a[0, pruned, None] * x[0, pruned]).sum(0))


def test_prumerge_plus_samples_edge_cases():
    # The reference samples arange(0, 575, stride): patch 575 never, also where the stride divides 575.
    assert plus_samples(576, 200).tolist() == list(range(575))  # stride clamped to 1 above 192 outliers
    assert plus_samples(576, 0).tolist() == [0, 192, 384]  # k = 0 handled like k = 1
    assert plus_samples(576, 32).tolist() == list(range(0, 576, 6))
    for outliers, stride in ((36, 5), (33, 5), (38, 5), (97, 1), (144, 1)):
        samples = plus_samples(576, outliers).tolist()
        assert samples == list(range(0, 575, stride)) and 575 not in samples, outliers


# --- inside the tiny models ----------------------------------------------------------------

QUESTIONS = ["Hi?", "What colour is the large square on the left?", "Count the shapes."]


def recipe_for(model, selector=None, schedule=None) -> Recipe:
    ref = ModelRef(model.args.family, model.source.name, model.args.config_hash())
    return Recipe(name="test", model=ref, selector=selector, schedule=schedule)


def schedules(model, n):
    layers = model.args.text.num_layers
    drop = [0] * layers
    drop[1], drop[2] = n // 3, n // 4
    return {
        "fitprune": ScheduleSpec("fitprune", drop=tuple(drop), visual_tokens=n),
        "pyramiddrop": ScheduleSpec("pyramiddrop", layers=(1, 2, 3), ratio=0.5),
        "fastv": ScheduleSpec("fastv", layer=2, ratio=0.5),
    }


KEEP_ALL = {
    "fitprune": lambda n, layers: ScheduleSpec("fitprune", drop=(0,) * layers, visual_tokens=n),
    "pyramiddrop": lambda n, layers: ScheduleSpec("pyramiddrop", layers=(1, 3), ratio=1.0),
    "fastv": lambda n, layers: ScheduleSpec("fastv", layer=1, ratio=0.0),
}


def run_prefill(model, recipe, images, questions, replay=None, extra_suffix=None):
    batch = prepare(model, images, questions, max_new_tokens=20, recipe=recipe)
    suffix_ids, suffix_mask = batch.suffix_ids, batch.suffix_mask
    if extra_suffix is not None:
        suffix_ids = torch.cat([suffix_ids, extra_suffix], dim=1)
        suffix_mask = torch.cat([suffix_mask, torch.ones_like(extra_suffix)], dim=1)
    with torch.no_grad():
        return batch, model.graph.prefill(
            batch.prefix_ids,
            batch.image_embeds,
            suffix_ids,
            batch.prefix_mask,
            batch.image_mask,
            suffix_mask,
            recipe.schedule if recipe else None,
            replay,
        )


@pytest.mark.parametrize("name", ["tiny-llava-1.5", "tiny-llava-next"])
@pytest.mark.parametrize("method", sorted(KEEP_ALL))
def test_keep_everything_schedules_give_identical_logits(tiny_models, name, method):
    model = tiny_models[name]
    image = random_image(60, 90)
    _, reference = run_prefill(model, None, [image], ["What?"])
    n = len(reference.image_ids[0][0])
    recipe = recipe_for(model, schedule=KEEP_ALL[method](n, model.args.text.num_layers))
    _, pruned = run_prefill(model, recipe, [image], ["What?"])
    assert torch.equal(pruned.logits, reference.logits)


def test_keep_everything_selector_matches_unpruned(tiny_models):
    model = tiny_models["tiny-llava-1.5"]
    image = random_image(60, 90)
    _, reference = run_prefill(model, None, [image], ["What?"])
    _, pruned = run_prefill(model, recipe_for(model, SelectorSpec("fopru-rank", ratio=1.0)), [image], ["What?"])
    # The probe computes its probabilities beside the fused attention: the same features, bit for bit.
    torch.testing.assert_close(pruned.logits, reference.logits, atol=0, rtol=0)


SELECTORS = {
    "fopru-rank": SelectorSpec("fopru-rank", ratio=0.25),
    "fopru-row": SelectorSpec("fopru-row", ratio=0.5),
    "prumerge": SelectorSpec("prumerge"),
    "prumerge-fixed": SelectorSpec("prumerge", tokens=8),
    "prumerge+": SelectorSpec("prumerge+"),
}


@pytest.mark.parametrize("selector", sorted(SELECTORS))
def test_selectors_keep_the_planned_count_and_batch_like_single(tiny_models, selector):
    model = tiny_models["tiny-llava-1.5"]
    spec = SELECTORS[selector]
    recipe = recipe_for(model, spec)
    images = [random_image(60, 90, 1), random_image(40, 40, 2), random_image(64, 50, 3)]
    batch, out = run_prefill(model, recipe, images, QUESTIONS)
    planned = spec.output_tokens(model.args.vision.num_patches, model.args.vision.grid_size)
    if planned is not None:
        assert batch.num_image_tokens == [planned] * 3
    for i, (image, question) in enumerate(zip(images, QUESTIONS, strict=True)):
        _, alone = run_prefill(model, recipe, [image], [question])
        torch.testing.assert_close(out.logits[i], alone.logits[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["fitprune", "pyramiddrop", "fastv"])
def test_schedules_batch_like_single(tiny_models, method):
    model = tiny_models["tiny-llava-1.5"]
    images = [random_image(60, 90, 1), random_image(40, 40, 2), random_image(64, 50, 3)]
    recipe = recipe_for(model, schedule=schedules(model, model.args.vision.num_patches)[method])
    _, out = run_prefill(model, recipe, images, QUESTIONS)
    for i, (image, question) in enumerate(zip(images, QUESTIONS, strict=True)):
        _, alone = run_prefill(model, recipe, [image], [question])
        torch.testing.assert_close(out.logits[i], alone.logits[0], atol=1e-5, rtol=0)
        for layer in range(model.args.text.num_layers):
            assert torch.equal(out.image_ids[layer][i], alone.image_ids[layer][0])


@pytest.mark.parametrize("name", ["tiny-llava-1.5", "tiny-llava-next"])
@pytest.mark.parametrize("method", ["fitprune", "pyramiddrop", "fastv"])
def test_schedule_token_counts_follow_the_recipe(tiny_models, name, method):
    model = tiny_models[name]
    _, reference = run_prefill(model, None, [random_image(60, 90)], ["What?"])
    n = len(reference.image_ids[0][0])
    schedule = schedules(model, n)[method]
    _, out = run_prefill(model, recipe_for(model, schedule=schedule), [random_image(60, 90)], ["What?"])
    plan = schedule.tokens_per_layer(n, model.args.text.num_layers)
    assert [ids.shape[1] for ids in out.image_ids] == [entering for entering, _ in plan]


@pytest.mark.parametrize("name", ["tiny-llava-1.5", "tiny-llava-next"])
@pytest.mark.parametrize("method", ["fitprune", "pyramiddrop", "fastv"])
def test_cached_decoding_equals_full_pruned_reruns(tiny_models, name, method):
    """20 greedy tokens with per-layer KV caches equal re-running the whole pruned prefill
    (same kept tokens, same position policy) with the generated tokens appended."""
    model = tiny_models[name]
    image = random_image(60, 90)
    _, reference = run_prefill(model, None, [image], ["Describe it."])
    recipe = recipe_for(model, schedule=schedules(model, len(reference.image_ids[0][0]))[method])
    batch, first = run_prefill(model, recipe, [image], ["Describe it."])
    cached = greedy_generate(model, batch, 20, stop_token_ids=(), recipe=recipe)[0]
    rerun = [int(first.logits.argmax(-1))]
    while len(rerun) < 20:
        _, out = run_prefill(model, recipe, [image], ["Describe it."], first.kept_ids, torch.tensor([rerun]))
        rerun.append(int(out.logits.argmax(-1)))
    assert cached == rerun


@pytest.mark.parametrize(
    "schedule",
    [
        ScheduleSpec("pyramiddrop", layers=(3,), ratio=0.5),  # boundary at the last layer
        ScheduleSpec("fastv", layer=1, ratio=1.0),  # keep nothing (k = 0)
        ScheduleSpec("fitprune", drop=(0, 36, 0, 0), visual_tokens=36),  # drop every token at once
    ],
    ids=["last-layer-boundary", "fastv-k0", "fitprune-all"],
)
def test_schedule_edge_cases_run_and_decode(tiny_models, schedule):
    model = tiny_models["tiny-llava-1.5"]
    recipe = recipe_for(model, schedule=schedule)
    batch = prepare(model, [random_image(60, 90)], ["What?"], 5, recipe)
    assert len(greedy_generate(model, batch, 5, stop_token_ids=(), recipe=recipe)[0]) == 5


def test_prumerge_with_zero_tokens_keeps_only_the_merged_token(tiny_models):
    model = tiny_models["tiny-llava-1.5"]
    batch = prepare(model, [random_image(60, 90)], ["What?"], 5, recipe_for(model, SelectorSpec("prumerge", tokens=0)))
    assert batch.num_image_tokens == [1]
