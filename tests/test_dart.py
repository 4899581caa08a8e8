"""DART's pre-LLM variant against an oracle written from the paper's pivot rule in plain loops,
and its export (ONNX Runtime == eager, TensorRT lint) on the families a selector applies to."""

import json

import numpy as np
import pytest
import torch

from vtpexport.pruning.dart import PIVOTS, dart_keep, pivot_quotas
from vtpexport.recipe import SelectorSpec
from vtpexport.verify import verify_export


def pivot_oracle(x: np.ndarray, k: int) -> list[int]:
    """Pivots: the min(8, k) tokens of largest L1 norm. Then each pivot, largest norm first,
    adds its share of the other k - pivots tokens (an even split, the first pivots taking the
    remainder): those of the tokens not yet kept whose cosine with it is lowest."""
    n = len(x)
    norms = [float(np.abs(x[i]).sum()) for i in range(n)]
    pivots = sorted(range(n), key=lambda i: -norms[i])[: min(PIVOTS, k)]
    kept = list(pivots)
    spare = k - len(pivots)
    for rank, pivot in enumerate(pivots):
        share = spare // len(pivots) + (1 if rank < spare % len(pivots) else 0)
        cosine = {
            j: float(x[pivot] @ x[j]) / (np.linalg.norm(x[pivot]) * np.linalg.norm(x[j]))
            for j in range(n)
            if j not in kept
        }
        kept += sorted(cosine, key=cosine.get)[:share]
    return sorted(kept)


def test_dart_keeps_what_the_oracle_keeps_over_200_random_trials():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n, c = int(rng.integers(2, 48)), int(rng.integers(2, 10))
        k = int(rng.integers(1, n + 1))
        x = rng.standard_normal((n, c)) * rng.uniform(0.5, 2.0, (n, 1))  # norms that differ
        ours = dart_keep(torch.from_numpy(x)[None], k)[0].tolist()
        assert ours == pivot_oracle(x, k), (trial, n, c, k)


def test_pivot_quotas_split_the_budget_exactly():
    assert pivot_quotas(64, 8) == [7] * 8
    assert pivot_quotas(67, 8) == [8, 8, 8, 7, 7, 7, 7, 7]
    assert pivot_quotas(5, 5) == [0] * 5
    for tokens in range(PIVOTS, 200):
        assert PIVOTS + sum(pivot_quotas(tokens, PIVOTS)) == tokens


def test_dart_batches_rows_independently_and_keeps_projected_tokens(tiny_models):
    x = torch.randn(3, 30, 6, generator=torch.Generator().manual_seed(1))
    together = dart_keep(x, 17)
    for b in range(3):
        assert together[b].tolist() == dart_keep(x[b : b + 1], 17)[0].tolist()
    model = tiny_models["tiny-llava-1.5"]
    pixels = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        kept = model.graph.select_image_tokens(pixels, SelectorSpec("dart", tokens=12))
        projected = model.graph.tile_features(pixels)
    assert kept.patch_index.tolist() == dart_keep(projected, 12).tolist()
    for b in range(2):
        torch.testing.assert_close(kept.embeds[b], projected[b, kept.patch_index[b]], atol=1e-6, rtol=0)


@pytest.mark.parametrize(("model_name", "trt_target"), [("tiny-llava-1.5", 11), ("tiny-llava-hr", 10)])
def test_dart_export_matches_eager_and_lints_for_tensorrt(exports, model_name, trt_target):
    """tiny-llava-1.5 at --trt-target 10 is test_export's SELECTORS; the build lints for TensorRT."""
    folder = exports(model_name, "dart-k12", selector=SelectorSpec("dart", tokens=12), trt_target=trt_target)
    report = verify_export(folder, max_new_tokens=12)
    assert report.passed, report
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["trt_target"]["major"] == trt_target
    assert manifest["dims"]["image_tokens"] == {"min": 0, "opt": 12, "max": 12}
