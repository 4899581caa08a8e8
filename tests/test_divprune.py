"""DivPrune against a max-min diversity oracle written from the paper's greedy rule, and its
export (ONNX Runtime == eager, TensorRT lint) on the families a selector applies to."""

import json

import numpy as np
import pytest
import torch

from vtpexport.flops import exact_prefill_macs
from vtpexport.models.loader import architecture
from vtpexport.pruning.divprune import divprune_picks
from vtpexport.recipe import ModelRef, Recipe, SelectorSpec
from vtpexport.verify import verify_export


def max_min_oracle(x: np.ndarray, k: int) -> list[int]:
    """Greedy max-min diversity with cosine distance, one candidate at a time in plain loops:
    start from the token farthest from its nearest other token, then add the token farthest
    from its nearest chosen one; the first of equals wins."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(x)
    distance = [[1.0 - float(unit[i] @ unit[j]) for j in range(n)] for i in range(n)]
    best, chosen = -np.inf, []
    for i in range(n):
        nearest = min(distance[j][i] for j in range(n) if j != i)
        if nearest > best:
            best, chosen = nearest, [i]
    while len(chosen) < k:
        best, pick = -np.inf, None
        for i in range(n):
            if i not in chosen:
                nearest = min(distance[s][i] for s in chosen)
                if nearest > best:
                    best, pick = nearest, i
        chosen.append(pick)
    return chosen


def test_divprune_picks_equal_the_oracle_over_200_random_trials():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n, c = int(rng.integers(2, 24)), int(rng.integers(2, 10))
        k = int(rng.integers(1, n + 1))
        x = rng.standard_normal((n, c))
        if trial % 4 == 0:  # clustered tokens: near-duplicates, as neighbouring patches are
            x = x[rng.integers(0, max(n // 3, 1), n)] + 0.05 * rng.standard_normal((n, c))
        ours = divprune_picks(torch.from_numpy(x)[None], k)[0].tolist()
        assert ours == max_min_oracle(x, k), (trial, n, c, k)


def test_divprune_batches_rows_independently():
    x = torch.randn(3, 20, 6, generator=torch.Generator().manual_seed(1))
    together = divprune_picks(x, 7)
    for b in range(3):
        assert together[b].tolist() == divprune_picks(x[b : b + 1], 7)[0].tolist()


def test_divprune_keeps_projected_tokens_in_raster_order(tiny_models):
    model = tiny_models["tiny-llava-1.5"]
    pixels = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    spec = SelectorSpec("divprune", tokens=12)
    with torch.no_grad():
        kept = model.graph.select_image_tokens(pixels, spec)
        projected = model.graph.tile_features(pixels)
    for b in range(2):
        index = kept.patch_index[b].tolist()
        assert index == sorted(divprune_picks(projected[b : b + 1], 12)[0].tolist())
        torch.testing.assert_close(kept.embeds[b], projected[b, index], atol=1e-6, rtol=0)
    assert spec.output_tokens(36, 6) == 12 and SelectorSpec("divprune", tokens=99).output_tokens(36, 6) == 36


@pytest.mark.parametrize(("model_name", "trt_target"), [("tiny-llava-1.5", 11), ("tiny-llava-hr", 10)])
def test_divprune_export_matches_eager_and_lints_for_tensorrt(exports, model_name, trt_target):
    """tiny-llava-1.5 at --trt-target 10 is test_export's SELECTORS; the build lints for TensorRT."""
    folder = exports(model_name, "divprune-k12", selector=SelectorSpec("divprune", tokens=12), trt_target=trt_target)
    report = verify_export(folder, max_new_tokens=12)
    assert report.passed, report
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["trt_target"]["major"] == trt_target
    assert manifest["dims"]["image_tokens"] == {"min": 0, "opt": 12, "max": 12}


def test_flops_count_the_projector_on_every_patch():
    """DivPrune compares projected tokens, so the projector runs on all 36 patches, not the 12 kept."""
    args = architecture("tiny-llava-1.5")
    ref = ModelRef(args.family, "tiny-llava-1.5", args.config_hash())
    diverse = exact_prefill_macs(args, Recipe("d", ref, SelectorSpec("divprune", tokens=12)), 36, 5, 7)
    subset = exact_prefill_macs(args, Recipe("r", ref, SelectorSpec("random", tokens=12)), 36, 5, 7)
    assert diverse.projector == 3 * subset.projector and diverse.llm == subset.llm
