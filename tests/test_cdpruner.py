"""CDPruner against an oracle written from the paper's definition of greedy DPP MAP inference
(each step adds the patch that maximises the kernel's determinant over the picks, computed
directly, no Cholesky updates), on the reference's conditional kernel; and its export."""

import json

import numpy as np
import pytest
import torch

from vtpexport.errors import UserError
from vtpexport.models.loader import architecture
from vtpexport.models.text_encoder import attach_text_encoder
from vtpexport.pruning.cdpruner import conditional_kernel, dpp_greedy_picks, question_relevance
from vtpexport.recipe import ModelRef, Recipe, SelectorSpec
from vtpexport.verify import verify_export


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def oracle_relevance(patch_embeds: np.ndarray, text: np.ndarray, among: np.ndarray | None = None) -> np.ndarray:
    """r = negated cosine(patch CLIP embedding, question), min-max normalised with the
    reference's +1e-6 over the patches `among` marks (all by default)."""
    negated = -(unit(patch_embeds) @ unit(text))
    seen = negated if among is None else negated[among]
    # max - min floored at 1e-6, as docs/methods.md states (the reference divides by 0 there).
    return (negated - seen.min() + 1e-6) / max(seen.max() - seen.min(), 1e-6)


def determinant_oracle(projected: np.ndarray, patch_embeds: np.ndarray, text: np.ndarray, k: int) -> list[int]:
    """L = r_i cos(y_i, y_j) r_j; greedily add the patch maximising det(L_S)."""
    return determinant_greedy(projected, oracle_relevance(patch_embeds, text), k)


def determinant_greedy(projected: np.ndarray, relevance: np.ndarray, k: int) -> list[int]:
    similarity = unit(projected) @ unit(projected).T
    kernel = relevance[:, None] * similarity * relevance[None, :]
    chosen: list[int] = []
    while len(chosen) < k:
        best, pick = -np.inf, None
        for j in range(len(kernel)):
            if j not in chosen:
                subset = chosen + [j]
                value = np.linalg.det(kernel[np.ix_(subset, subset)])
                if value > best:
                    best, pick = value, j
        chosen.append(pick)
    return chosen


def test_cdpruner_picks_equal_the_determinant_oracle_over_200_random_trials():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n, d, p = int(rng.integers(2, 20)), int(rng.integers(2, 12)), int(rng.integers(2, 8))
        k = int(rng.integers(1, min(n, d) + 1))  # within the kernel's rank: every gain stays > 0
        projected, patch_embeds, text = rng.standard_normal((n, d)), rng.standard_normal((n, p)), rng.standard_normal(p)
        relevance = question_relevance(torch.from_numpy(text)[None], torch.from_numpy(patch_embeds)[None])
        kernel = conditional_kernel(torch.from_numpy(projected)[None], relevance)
        ours = dpp_greedy_picks(kernel, k)[0].tolist()
        assert ours == determinant_oracle(projected, patch_embeds, text, k), (trial, n, d, k)


def test_a_tile_picks_as_the_dpp_on_its_valid_patches_alone_over_200_random_trials():
    """One image's tiles, each with patches unpadding drops: relevance normalised over the
    image's valid patches, then each tile's picks are those of the DPP on its valid patches
    alone; past them (a budget over the tile's valid count), the tile adds invalid ones, never
    a valid one twice."""
    rng = np.random.default_rng(1)
    for trial in range(200):
        tiles, n, d, p = int(rng.integers(1, 4)), int(rng.integers(2, 16)), int(rng.integers(2, 12)), 4
        valid = rng.random((tiles, n)) < rng.uniform(0.3, 1.0)
        valid[:, 0] |= ~valid.any(axis=1)  # a tile keeps at least one patch
        k = int(rng.integers(1, min(n, d) + 1))
        projected, patch_embeds = rng.standard_normal((tiles, n, d)), rng.standard_normal((tiles, n, p))
        text = rng.standard_normal(p)
        texts = torch.from_numpy(text)[None].expand(tiles, -1)
        mask = torch.from_numpy(valid)
        relevance = question_relevance(texts, torch.from_numpy(patch_embeds), mask)
        picks = dpp_greedy_picks(conditional_kernel(torch.from_numpy(projected), relevance), k, mask).tolist()
        image_relevance = oracle_relevance(patch_embeds.reshape(-1, p), text, valid.reshape(-1)).reshape(tiles, n)
        for tile in range(tiles):
            allowed = np.flatnonzero(valid[tile])
            count = min(k, len(allowed))
            # Within the kernel's rank among the valid patches, where the determinant is > 0.
            count_in_rank = min(count, d)
            expected = determinant_greedy(projected[tile, allowed], image_relevance[tile, allowed], count_in_rank)
            assert picks[tile][:count_in_rank] == [int(allowed[i]) for i in expected], (trial, tile)
            assert set(picks[tile][:count]) <= set(allowed.tolist()), (trial, tile)
            assert len(set(picks[tile])) == k, (trial, tile)


def test_relevance_is_normalised_per_image():
    text = torch.randn(2, 5, generator=torch.Generator().manual_seed(0))
    patches = torch.randn(2, 9, 5, generator=torch.Generator().manual_seed(1))
    together = question_relevance(text, patches)
    for b in range(2):
        torch.testing.assert_close(together[b], question_relevance(text[b : b + 1], patches[b : b + 1])[0])
    assert together.amax(dim=-1).tolist() == pytest.approx([1.0, 1.0])


def _select(model, pixels, questions, spec):
    with torch.no_grad():
        text = model.text_encoder.embed(questions)
        return model.graph.select_image_tokens(pixels, spec, text, model.text_encoder.module.visual_projection)


def test_cdpruner_in_the_graph_reads_the_feature_layer_and_the_question(tiny_models):
    model = tiny_models["tiny-llava-1.5"]
    attach_text_encoder(model, None)
    pixels = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    spec = SelectorSpec("cdpruner", tokens=10)
    questions = ["What colour is the square?", "How many dogs are on the grass by the lake?"]
    kept = _select(model, pixels, questions, spec)
    graph, encoder = model.graph, model.text_encoder
    with torch.no_grad():
        projected = graph.tile_features(pixels)
        # The reference projects the feature layer's patches (LLaVA's), not the last layer's.
        features = graph.vision(pixels, feature_layer=model.args.feature_layer_index).features[:, 1:]
        patch_embeds = encoder.module.visual_projection(graph.vision.post_layernorm(features))
        relevance = question_relevance(encoder.embed(questions), patch_embeds)
    expected = torch.sort(dpp_greedy_picks(conditional_kernel(projected, relevance), 10), dim=-1).values
    assert kept.patch_index.tolist() == expected.tolist()
    for b in range(2):
        torch.testing.assert_close(kept.embeds[b], projected[b, expected[b]], atol=1e-6, rtol=0)
    swapped = _select(model, pixels, questions[::-1], spec)
    assert swapped.patch_index.tolist() != kept.patch_index.tolist()


@pytest.mark.parametrize(
    ("model_name", "message"),
    [
        ("tiny-llava-hr", "cdpruner compares patches with the question in CLIP's joint space.*use dart / divprune /"),
    ],
)
def test_cdpruner_is_refused_where_its_inputs_do_not_exist(model_name, message):
    args = architecture(model_name)
    recipe = Recipe("r", ModelRef(args.family, model_name, args.config_hash()), SelectorSpec("cdpruner", tokens=8))
    with pytest.raises(UserError, match=message):
        recipe.check_model(args, model_name)


def test_cdpruner_export_at_trt_target_11_matches_eager(exports):
    """--trt-target 10 is test_export's SELECTORS; the build lints for TensorRT."""
    folder = exports("tiny-llava-1.5", "cdpruner-k12", selector=SelectorSpec("cdpruner", tokens=12), trt_target=11)
    report = verify_export(folder, max_new_tokens=12)
    assert report.passed, report
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["trt_target"]["major"] == 11 and "text_encoder" in manifest["graphs"]
