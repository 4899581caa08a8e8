"""FLOPs: the papers' convention against their published numbers, and the exact whole-model
count against hand-computed numbers and against torch's FlopCounterMode over our graph."""

from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vtpexport.errors import UserError
from vtpexport.flops import (
    attention_pairs,
    cache_lengths,
    exact_decode_macs,
    exact_prefill_macs,
    paper_flops,
    paper_layer_macs,
    visual_plan,
)
from vtpexport.graph.args import LlavaArgs, TextArgs, VisionArgs
from vtpexport.models.loader import architecture, meta_graph
from vtpexport.recipe import ModelRef, Recipe, ScheduleSpec, SelectorSpec

PYRAMIDDROP = ScheduleSpec(method="pyramiddrop", layers=(8, 16, 24), ratio=0.5)
FASTV = ScheduleSpec(method="fastv", layer=2, ratio=0.5)


def recipe_for(args: LlavaArgs, schedule=None, selector=None) -> Recipe:
    return Recipe("test", ModelRef(args.family, "test", args.config_hash()), selector=selector, schedule=schedule)


def tera(macs: int, digits: int) -> float:
    return round(macs / 1e12, digits)


# Published "TFLOPs" (really MACs) of FastV / PyramidDrop for the LLM over visual tokens.
@pytest.mark.parametrize(
    "model, n, schedule, expected, digits",
    [
        ("llava-1.5-7b", 576, None, 3.82, 2),
        ("llava-1.5-7b", 576, PYRAMIDDROP, 1.78, 2),
        ("llava-1.5-7b", 576, FASTV, 2.01, 2),
        ("llava-next-7b", 2880, None, 20.8, 1),
        ("llava-next-7b", 2880, PYRAMIDDROP, 9.5, 1),
        ("llava-next-7b", 2880, FASTV, 10.6, 1),
    ],
)
def test_paper_convention_matches_published_tflops(model, n, schedule, expected, digits):
    args = architecture(model)
    report = paper_flops(args, recipe_for(args, schedule) if schedule else None, n)
    assert tera(report.total, digits) == expected
    assert tera(report.unpruned, digits) == tera(paper_flops(args, None, n).total, digits)


def test_paper_convention_unpruned_llava_15_is_3_817_t():
    report = paper_flops(architecture("llava-1.5-7b"), None, 576)
    assert report.total == report.unpruned == 32 * (4 * 576 * 4096**2 + 2 * 576**2 * 4096 + 3 * 576 * 4096 * 11008)
    assert tera(report.total, 3) == 3.817 and report.cut == 0


def test_paper_layer_splits_attention_and_mlp_at_the_drop():
    text = TextArgs(hidden_size=4, intermediate_size=8, num_layers=2, num_kv_heads=1)  # GQA ignored
    # n=10 entering, 6 after the drop: 3*10*16 + 2*100*4 + 6*16 + 3*6*4*8
    assert paper_layer_macs(text, 10, 6) == 480 + 800 + 96 + 576
    assert paper_layer_macs(text, 10, 10) == 4 * 10 * 16 + 2 * 100 * 4 + 3 * 10 * 4 * 8


def test_fitprune_plan_drops_within_the_layer_and_scales_with_n():
    args = architecture("tiny-llava-1.5")  # 4 layers
    recipe = recipe_for(args, ScheduleSpec(method="fitprune", drop=(2, 0, 4, 1), visual_tokens=36))
    assert visual_plan(args, recipe, 36) == [(36, 34), (34, 34), (34, 30), (30, 29)]
    assert visual_plan(args, recipe, 18) == [(18, 17), (17, 17), (17, 15), (15, 15)]  # n * drop // 36
    report = paper_flops(args, recipe, 36)
    text = args.text
    assert [row.macs for row in report.layers] == [
        paper_layer_macs(text, a, b) for a, b in visual_plan(args, recipe, 36)
    ]
    assert report.mean_tokens == (36 + 34 + 34 + 30) / 4


def test_selector_sets_n_for_the_schedule_and_counts_against_the_full_image():
    args = architecture("llava-1.5-7b")
    recipe = recipe_for(args, PYRAMIDDROP, SelectorSpec(method="fopru-rank", ratio=0.5))
    report = paper_flops(args, recipe, 576)
    assert [row.tokens for row in report.layers[::8]] == [288, 144, 72, 36]
    assert report.unpruned == paper_flops(args, None, 576).total


def test_adaptive_selector_has_no_flops():
    args = architecture("llava-1.5-7b")
    recipe = recipe_for(args, selector=SelectorSpec(method="prumerge"))
    with pytest.raises(UserError, match="data-dependent number of tokens, so its FLOPs are unknown"):
        paper_flops(args, recipe, 576)
    with pytest.raises(UserError, match="FLOPs are unknown"):
        exact_prefill_macs(args, recipe, 576, 5, 5)
    fixed = recipe_for(args, selector=SelectorSpec(method="prumerge", tokens=64))
    assert paper_flops(args, fixed, 576).layers[0].tokens == 65  # + the merged remainder token


def test_causal_attention_pairs():
    assert attention_pairs(4) == 1 + 2 + 3 + 4
    assert attention_pairs(6, window=3) == 1 + 2 + 3 + 3 + 3 + 3
    assert attention_pairs(3, window=8) == 6


# A tiny config small enough to count by hand.
HAND = LlavaArgs(
    family="llava-1.5",
    vision=VisionArgs(image_size=4, patch_size=2, hidden_size=4, intermediate_size=8, num_layers=3, num_heads=2),
    text=TextArgs(
        vocab_size=10, hidden_size=8, intermediate_size=12, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=4
    ),
)


def test_exact_prefill_by_hand():
    # Vision: 4 patches, 5 tokens; feature layer -2 of 3 -> layers 0 and 1 run.
    conv = 4 * (3 * 2 * 2) * 4  # 192
    clip_linear = 4 * 5 * 4 * 4 + 2 * 5 * 4 * 8  # q,k,v,out + fc1,fc2 = 320 + 320
    clip_attention = 2 * 5 * 5 * 4  # 200
    projector = 4 * (4 * 8 + 8 * 8)  # 4 tokens: 384
    # LLM: P=2, n=4, T=3 -> 9 tokens; q is 8 wide, k and v 4 wide (one KV head).
    llm_layer = 9 * 8 * (8 + 4 + 4) + 9 * 8 * 8 + 3 * 9 * 8 * 12  # 1152 + 576 + 2592
    llm_attention = 2 * 8 * 45  # 45 causal pairs of 9 tokens
    got = exact_prefill_macs(HAND, None, 4, 2, 3)
    assert got.vision == conv + 2 * clip_linear
    assert got.projector == projector
    assert got.llm == 2 * llm_layer
    assert got.attention == 2 * clip_attention + 2 * llm_attention
    assert got.lm_head == 8 * 10
    assert got.total == conv + 2 * clip_linear + projector + 2 * llm_layer + 2 * clip_attention + 2 * llm_attention + 80


def test_exact_prefill_with_fitprune_drop_by_hand():
    recipe = recipe_for(HAND, ScheduleSpec(method="fitprune", drop=(2, 1), visual_tokens=4))
    got = exact_prefill_macs(HAND, recipe, 4, 2, 3)
    # Layer 0: 9 tokens in (q/k/v, attention), 7 after (o_proj, MLP); layer 1: 7 in, 6 after.
    layer0 = 9 * 8 * 16 + 7 * 8 * 8 + 3 * 7 * 8 * 12
    layer1 = 7 * 8 * 16 + 6 * 8 * 8 + 3 * 6 * 8 * 12
    assert got.llm == layer0 + layer1
    assert got.attention == 2 * (2 * 5 * 5 * 4) + 2 * 8 * (45 + 28)  # CLIP unchanged; 9 and 7 tokens attend
    assert cache_lengths(HAND, recipe, 4, 2, 3) == [9, 7]


def test_exact_decode_by_hand():
    got = exact_decode_macs(HAND, [9, 7])
    per_layer = 8 * 16 + 8 * 8 + 3 * 8 * 12
    assert got.llm == 2 * per_layer
    assert got.attention == 2 * 8 * (10 + 8)  # the new token meets its cache plus itself
    assert got.total == 2 * per_layer + 2 * 8 * 18 + 80
    windowed = replace(HAND, text=replace(HAND.text, sliding_window=4))
    assert exact_decode_macs(windowed, [9, 7]).attention == 2 * 8 * (4 + 4)
    with pytest.raises(UserError, match="one past length per layer"):
        exact_decode_macs(HAND, [9])


def test_bad_lengths_are_user_errors():
    with pytest.raises(UserError, match="lengths must be >= 0"):
        exact_prefill_macs(HAND, None, 4, -1, 3)
    with pytest.raises(UserError, match="at least one tile"):
        exact_prefill_macs(HAND, None, 4, 1, 3, tiles=0)


# Brute force: torch's FlopCounterMode over our own graph, on the meta device (shapes only).
# What it can check: the linear layers and the patch conv (aten.mm / addmm / convolution)
# exactly. What it cannot: attention. On CPU, scaled_dot_product_attention counts 0; on meta
# it decomposes into dense bmm over the full S x S square (masked, not skipped), while our
# count is causal. So attention is checked against its dense form only for the unpruned
# model, and the causal count itself by hand above.
LINEAR_OPS = ("aten.mm", "aten.addmm", "aten.convolution")


def counted(mode: FlopCounterMode) -> tuple[int, int]:
    """(linear + conv MACs, bmm MACs) seen by FlopCounterMode (which counts 2 FLOPs per MAC)."""
    flops = {str(op): n for op, n in mode.get_flop_counts()["Global"].items()}
    assert set(flops) <= {*LINEAR_OPS, "aten.bmm"}, flops
    return sum(flops.get(op, 0) for op in LINEAR_OPS) // 2, flops.get("aten.bmm", 0) // 2


def dense_attention(args: LlavaArgs, lengths: list[int], tiles: int) -> int:
    v, t = args.vision, args.text
    clip = tiles * (args.feature_layer_index + 1) * 2 * (1 + v.num_patches) ** 2 * v.hidden_size
    return clip + sum(2 * t.num_heads * t.head_dim * s * s for s in lengths)


@pytest.mark.parametrize(
    "model, tiles, method",
    [
        (model, tiles, method)
        for model, tiles in (("tiny-llava-1.5", 1), ("tiny-llava-next", 3))
        for method in (None, "fitprune", "fastv")
    ]
    + [("tiny-llava-1.5", 1, "fopru-rank")],  # selectors run on LLaVA-1.5 images
)
def test_exact_count_equals_flop_counter_over_our_graph(model, tiles, method):
    args = architecture(model)
    n = tiles * args.tokens_per_tile  # anyres packing only gathers rows: no FLOPs, so tiles are just concatenated
    schedule = {
        "fitprune": ScheduleSpec(method="fitprune", drop=(3, 0, 5, 2), visual_tokens=n),
        "fastv": ScheduleSpec(method="fastv", layer=1, ratio=0.5),
    }.get(method)
    selector = SelectorSpec(method="fopru-rank", ratio=0.5) if method == "fopru-rank" else None
    recipe = recipe_for(args, schedule, selector) if method else None
    prefix_len, suffix_len = 5, 7
    graph = meta_graph(args)
    with torch.device("meta"), FlopCounterMode(display=False) as prefill_mode:
        pixels = torch.empty(tiles, args.vision.num_channels, args.vision.image_size, args.vision.image_size)
        if selector:
            embeds = graph.select_image_tokens(pixels, selector).embeds
        else:
            embeds = graph.tile_features(pixels).reshape(1, n, -1)
        k = embeds.shape[1]
        ids = lambda length: torch.zeros(1, length, dtype=torch.long)  # noqa: E731
        ones = lambda length: torch.ones(1, length, dtype=torch.long)  # noqa: E731
        out = graph.prefill(
            ids(prefix_len), embeds, ids(suffix_len), ones(prefix_len), ones(k), ones(suffix_len), schedule=schedule
        )
    with torch.device("meta"), FlopCounterMode(display=False) as decode_mode:
        graph.decode(ids(1), out.caches)

    exact = exact_prefill_macs(args, recipe, n, prefix_len, suffix_len, tiles)
    linear, bmm = counted(prefill_mode)
    assert linear == exact.total - exact.attention
    lengths = cache_lengths(args, recipe, n, prefix_len, suffix_len)
    assert [cache.key.shape[2] for cache in out.caches] == lengths
    if recipe is None:
        assert bmm == dense_attention(args, lengths, tiles)

    decode = exact_decode_macs(args, lengths)
    linear, bmm = counted(decode_mode)
    assert linear == decode.total - decode.attention
    assert bmm == decode.attention  # one query row: nothing to mask, dense == causal
