"""Selectors on LLaVA-NeXT anyres images, per tile: against oracles that pick each tile's kept
patches among those the unpruned packing holds (the method's own oracle on that subset) and
take them out of the unpruned token sequence, newlines kept; counts that follow from the
image size alone; refusals that give the reason; export (ONNX Runtime == eager, TensorRT lint)."""

import json
import re

import numpy as np
import pytest
import torch
import yaml
from test_cdpruner import determinant_greedy, oracle_relevance
from test_dart import pivot_oracle
from test_divprune import max_min_oracle
from torch.utils.flop_counter import FlopCounterMode

from vtpexport.errors import UserError
from vtpexport.export.lint import lint_export
from vtpexport.models.loader import architecture
from vtpexport.models.text_encoder import attach_text_encoder
from vtpexport.pruning.fopru import fopru_significance
from vtpexport.recipe import ModelRef, Recipe, SelectorSpec, check_selector
from vtpexport.shipped_recipes import SELECTOR_EXAMPLES
from vtpexport.verify import verify_export

# (height, width): square, wide and tall grids, unpadding of rows and of columns, 1:5 extremes.
SIZES = [(64, 64), (64, 40), (30, 90), (33, 64), (100, 20), (20, 100), (40, 70)]
QUESTION = "What is left of the red car?"


def question_inputs(model, spec: SelectorSpec) -> tuple:
    """What a text-guided selector reads besides the tiles: the question's CLIP text embeddings
    [1, P] and CLIP's visual projection."""
    if not spec.text_guided:
        return ()
    attach_text_encoder(model, None)
    with torch.no_grad():
        return model.text_encoder.embed([QUESTION]), model.text_encoder.module.visual_projection


def dpp_tile_oracle(graph, tiles, tile: int, candidates: list[list[int]], count: int, question: tuple) -> list[int]:
    """CDPruner: relevance normalised over the image's candidates (every tile's), then the
    determinant-greedy DPP on the tile's candidates alone."""
    text_embeds, visual_projection = question
    features = graph.vision(tiles, feature_layer=graph.args.feature_layer_index).features[:, 1:]
    patch_embeds = visual_projection(graph.vision.post_layernorm(features)).double().numpy()
    among = np.zeros(patch_embeds.shape[:2], dtype=bool)
    for t, allowed in enumerate(candidates):
        among[t, allowed] = True
    flat = patch_embeds.reshape(-1, patch_embeds.shape[-1])
    relevance = oracle_relevance(flat, text_embeds[0].double().numpy(), among.reshape(-1)).reshape(among.shape)
    allowed = candidates[tile]
    projected = graph.tile_features(tiles[tile : tile + 1])[0, allowed].double().numpy()
    return determinant_greedy(projected, relevance[tile, allowed], count)


def tile_oracle(
    method: str, graph, tiles, tile: int, candidates: list[list[int]], keep: int, question: tuple
) -> set[int]:
    """The patches of tile `tile` the method keeps when it sees only its candidates (raster
    indices; `candidates` holds every tile's)."""
    allowed = candidates[tile]
    count = min(keep, len(allowed))
    if method == "random":  # the first of the seeded draw order that the tile holds
        order = np.random.default_rng(0).permutation(graph.args.tokens_per_tile)
        return set([p for p in order.tolist() if p in allowed][:count])
    if method == "fopru-rank":  # the tile's significance (its ViT saw the whole tile), ranked among allowed
        layer = graph.args.feature_layer_index
        probs = graph.vision(tiles[tile : tile + 1], feature_layer=layer, attn_layer=layer).attn_probs
        significance = fopru_significance(probs, 1)[0].tolist()
        return set(sorted(allowed, key=lambda p: (-significance[p], p))[:count])
    if method == "cdpruner":
        return {allowed[i] for i in dpp_tile_oracle(graph, tiles, tile, candidates, count, question)}
    features = graph.tile_features(tiles[tile : tile + 1])[0, allowed].double().numpy()
    oracle = {"divprune": max_min_oracle, "dart": pivot_oracle}[method]
    return {allowed[i] for i in oracle(features, count)}


SPECS = {
    "divprune": SelectorSpec("divprune", tokens=6),
    "dart": SelectorSpec("dart", tokens=10),
    "random": SelectorSpec("random", tokens=5),
    "fopru-rank": SelectorSpec("fopru-rank", ratio=0.5),
    "cdpruner": SelectorSpec("cdpruner", tokens=6),
    "pool": SelectorSpec("pool", tokens=4),
}


@pytest.mark.parametrize("method", sorted(SPECS.keys() - {"pool"}))  # pool averages windows: its own test below
def test_per_tile_selection_is_the_unpruned_sequence_less_the_unkept_patches(tiny_models, method):
    model = tiny_models["tiny-llava-next"]
    graph = model.graph
    layout, per_tile = graph.args.layout, graph.args.tokens_per_tile
    spec = SPECS[method]
    keep = spec.output_tokens(per_tile, graph.args.vision.grid_size)
    question = question_inputs(model, spec)
    generator = torch.Generator().manual_seed(3)
    for size in SIZES:
        num_tiles = layout.num_tiles(size)
        tiles = torch.randn(num_tiles, 3, 32, 32, generator=generator)
        packing = layout.packing_index(size).tolist()
        newline_row = num_tiles * per_tile
        with torch.no_grad():
            unpruned = layout.image_embeddings(graph, tiles, size)
            candidates = [
                sorted(row - tile * per_tile for row in packing if row // per_tile == tile < num_tiles)
                for tile in range(num_tiles)
            ]
            kept = set()
            for tile in range(num_tiles):
                picks = tile_oracle(method, graph, tiles, tile, candidates, keep, question)
                kept |= {tile * per_tile + p for p in picks}
            inputs = layout.vision_inputs(tiles, size, keep, spec.declaration)[1:]
            pruned = graph.select_tile_tokens(tiles, spec, *inputs, *question)
        expected = [i for i, row in enumerate(packing) if row == newline_row or row in kept]
        assert pruned.patch_index[0].tolist() == expected, (method, size)
        assert len(expected) == layout.selected_tokens(size, keep, spec.declaration), size
        torch.testing.assert_close(pruned.embeds[0], unpruned[expected], atol=0, rtol=0, msg=f"{method} at {size}")


def test_kept_counts_are_a_function_of_the_image_size_only():
    """min(keep, the tile's patches left by unpadding) per tile, plus every image_newline."""
    args = architecture("tiny-llava-next")
    layout, per_tile = args.layout, args.tokens_per_tile
    for keep in (1, 5, 16):
        for size in SIZES + [(h, w) for h in (17, 45, 96) for w in (13, 64, 95)]:
            packing = layout.packing_index(size)
            rows = int((packing == layout.num_tiles(size) * per_tile).sum())
            patches = np.bincount(packing[packing < layout.num_tiles(size) * per_tile] // per_tile)
            assert layout.selected_tokens(size, keep) == int(np.minimum(keep, patches).sum()) + rows
        low, _, high = layout.token_range(keep)
        assert low == min(layout.selected_tokens(s, keep) for s in layout.covering_sizes())
        assert high == max(layout.selected_tokens(s, keep) for s in layout.covering_sizes())


def pooled_tile_oracle(graph, tiles, size, window: int) -> list[tuple[int, torch.Tensor]]:
    """Pool per tile, from the unpruned packing: each window of a tile that holds a candidate
    patch becomes the projected mean of its candidates, at the place its first candidate (raster
    order) has in the unpruned sequence; then every image_newline at its place. In sequence order."""
    args, layout = graph.args, graph.args.layout
    grid, per_tile = args.vision.grid_size, args.tokens_per_tile
    packing = layout.packing_index(size).tolist()
    place = {row: i for i, row in enumerate(packing)}
    features = graph.vision(tiles, feature_layer=args.feature_layer_index).features[:, 1:]
    entries = []
    for tile in range(len(tiles)):
        for top in range(0, grid, window):
            for left in range(0, grid, window):
                window_patches = [r * grid + c for r in range(top, top + window) for c in range(left, left + window)]
                members = [p for p in window_patches if tile * per_tile + p in place]
                if members:
                    mean = features[tile, members].mean(dim=0)
                    entries.append((place[tile * per_tile + members[0]], graph.projector(mean)))
    newline_row = len(tiles) * per_tile
    entries += [(i, graph.image_newline) for i, row in enumerate(packing) if row == newline_row]
    return sorted(entries, key=lambda entry: entry[0])


def test_pool_per_tile_averages_each_windows_candidates_in_its_first_candidates_place(tiny_models):
    """Unpadding cuts edge tiles mid-window at some sizes (a window keeps some of its patches)
    and drops whole windows at others (the tile keeps fewer than m x m tokens)."""
    graph = tiny_models["tiny-llava-next"].graph
    layout, spec = graph.args.layout, SPECS["pool"]
    keep, window = 4, graph.args.vision.grid_size // 2
    generator = torch.Generator().manual_seed(4)
    for size in SIZES:
        tiles = torch.randn(layout.num_tiles(size), 3, 32, 32, generator=generator)
        with torch.no_grad():
            expected = pooled_tile_oracle(graph, tiles, size, window)
            inputs = layout.vision_inputs(tiles, size, keep, spec.declaration)[1:]
            pruned = graph.select_tile_tokens(tiles, spec, *inputs)
        assert pruned.patch_index[0].tolist() == [place for place, _ in expected], size
        assert len(expected) == layout.selected_tokens(size, keep, spec.declaration), size
        torch.testing.assert_close(pruned.embeds[0], torch.stack([token for _, token in expected]), msg=str(size))


def test_pool_keeps_per_tile_the_windows_that_hold_a_candidate_a_function_of_the_image_size():
    args = architecture("tiny-llava-next")
    layout, per_tile, grid = args.layout, args.tokens_per_tile, args.vision.grid_size
    pool = SPECS["pool"].declaration
    fewer = 0
    for size in SIZES + [(h, w) for h in (17, 45, 96) for w in (13, 64, 95)]:
        packing = layout.packing_index(size)
        tile_rows = layout.num_tiles(size) * per_tile
        windows = {
            (row // per_tile, (row % per_tile) // grid // 2, row % grid // 2) for row in packing[packing < tile_rows]
        }
        rows = int((packing == tile_rows).sum())
        assert layout.selected_tokens(size, 4, pool) == len(windows) + rows, size
        fewer += layout.selected_tokens(size, 4, pool) < layout.selected_tokens(size, 4)
    assert fewer > 0  # sizes where whole windows fall away: not the default min(keep, candidates)
    low, _, high = layout.token_range(4, pool)
    assert low == min(layout.selected_tokens(s, 4, pool) for s in layout.covering_sizes())
    assert high == max(layout.selected_tokens(s, 4, pool) for s in layout.covering_sizes())


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (SelectorSpec("prumerge", tokens=4), "merges every patch of one whole CLIP image"),
        (SelectorSpec("prumerge+", tokens=4), "its fixed form samples a grid over all of the image's patches"),
        (SelectorSpec("fopru-row", ratio=0.5), "keeps whole patch-grid rows"),
        (SelectorSpec("recover", tokens=2, text_tokens=2, merge_tokens=1), "starts from PruMerge's CLS outliers"),
    ],
)
def test_selectors_that_cannot_run_per_tile_are_refused_with_the_reason(spec, reason):
    args = architecture("tiny-llava-next")
    recipe = Recipe("r", ModelRef(args.family, "tiny-llava-next", args.config_hash()), spec)
    with pytest.raises(
        UserError, match=f"selector {re.escape(spec.method)} does not run per tile .*{reason}.*use cdpruner / dart / "
    ):
        recipe.check_model(args, "tiny-llava-next")


@pytest.mark.parametrize("method", ["divprune", "fopru-rank", "cdpruner", "pool"])
def test_per_tile_export_matches_eager_and_lints_for_tensorrt(exports, method):
    """A projected-space selector, an attention-probe one, a text-guided one (the vision graph
    takes the question's CLIP text embeddings) and pool (its own tile counts); the build lints
    for TensorRT."""
    spec = SPECS[method]
    folder = exports("tiny-llava-next", f"{method}-tiles", selector=spec)
    report = verify_export(folder, max_new_tokens=8)
    assert report.passed, report
    args = architecture("tiny-llava-next")
    keep = spec.output_tokens(args.tokens_per_tile, args.vision.grid_size)
    dims = json.loads((folder / "manifest.json").read_text())["dims"]
    assert dims["image_tokens"]["max"] == args.layout.token_range(keep, spec.declaration)[2]
    assert dims["grid_rows"] == dict(zip(("min", "opt", "max"), args.layout.grid_rows_range(), strict=True))
    result = lint_export(folder)
    assert not result.issues, result.summary()
    assert all(g.attention_layers == g.fusable > 0 for g in result.graphs), result.summary()


@pytest.mark.parametrize("method", sorted(SELECTOR_EXAMPLES))
def test_only_a_selector_that_runs_per_tile_states_the_tile_rule(tmp_path, method):
    """On any family: a recipe carries `tiles` exactly when LLaVA-NeXT accepts its selector. An
    older recipe that carries `tiles: per_tile` on another selector still loads, and is written
    back without it; another rule there is refused in one line."""
    spec = SELECTOR_EXAMPLES[method][0]
    args, tiled = architecture("tiny-llava-1.5"), architecture("tiny-llava-next")
    recipe = Recipe("r", ModelRef(args.family, "tiny-llava-1.5", args.config_hash()), spec)
    text = recipe.to_yaml()
    try:
        check_selector(tiled, spec)
        runs_per_tile = True
    except UserError as error:
        runs_per_tile = "does not run per tile" not in str(error)
    assert ("tiles" in yaml.safe_load(text)["selector"]) == runs_per_tile
    if runs_per_tile:
        return
    (tmp_path / "old.yaml").write_text(text.replace("schedule: null", "  tiles: per_tile\nschedule: null"))
    old = Recipe.load(tmp_path / "old.yaml")
    assert old == recipe and old.to_yaml() == text
    (tmp_path / "bad.yaml").write_text(text.replace("schedule: null", "  tiles: proportional\nschedule: null"))
    with pytest.raises(
        UserError, match=f"selector.tiles does not apply to method {re.escape(method)} .*got 'proportional'"
    ):
        Recipe.load(tmp_path / "bad.yaml")


def test_the_recipe_states_the_tile_budget_rule(tmp_path):
    args = architecture("tiny-llava-next")
    ref = ModelRef(args.family, "tiny-llava-next", args.config_hash())
    Recipe("r", ref, SPECS["dart"]).save(tmp_path / "r.yaml")
    text = (tmp_path / "r.yaml").read_text()
    assert "tiles: per_tile" in text
    (tmp_path / "bad.yaml").write_text(text.replace("tiles: per_tile", "tiles: proportional"))
    with pytest.raises(UserError, match="tiles.*per_tile"):
        Recipe.load(tmp_path / "bad.yaml")
    (tmp_path / "old.yaml").write_text(text.replace("  tiles: per_tile\n", ""))  # recipes written before the field
    assert Recipe.load(tmp_path / "old.yaml").selector == SPECS["dart"]


@pytest.mark.parametrize("method", ["divprune", "random", "pool"])
def test_exact_count_equals_flop_counter_per_tile(tiny_models, method):
    """The projector runs on every tile patch for a projected-space selector, on the tokens
    select returns per tile otherwise; the LLM on the kept tokens and every newline (pool keeps
    2 of 4 windows in the edge tiles at this size)."""
    from test_flops import counted

    from vtpexport.flops import exact_prefill_macs

    graph = tiny_models["tiny-llava-next"].graph
    args, size = graph.args, (40, 70)
    spec = SPECS[method]
    keep = spec.output_tokens(args.tokens_per_tile, args.vision.grid_size)
    recipe = Recipe("r", ModelRef(args.family, "tiny-llava-next", args.config_hash()), spec)
    tiles = torch.randn(args.layout.num_tiles(size), 3, 32, 32)
    ids, ones = torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 5, dtype=torch.long)
    with torch.no_grad(), FlopCounterMode(display=False) as mode:
        inputs = args.layout.vision_inputs(tiles, size, keep, spec.declaration)[1:]
        embeds = graph.select_tile_tokens(tiles, spec, *inputs).embeds
        graph.prefill(ids, embeds, ids, ones, torch.ones(1, embeds.shape[1], dtype=torch.long), ones)
    n_image, num_tiles = args.layout.num_tokens(size), args.layout.num_tiles(size)
    exact = exact_prefill_macs(args, recipe, n_image, 5, 5, num_tiles, size)
    assert counted(mode)[0] == exact.total - exact.attention
