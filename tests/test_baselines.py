"""The random and pool baselines against oracles written from their definitions: numpy's own
draw for the subset's properties, and window means computed by explicit loops for the pool."""

import numpy as np
import pytest
import torch

from vtpexport.errors import UserError
from vtpexport.models.loader import load_model
from vtpexport.pruning.registry import SelectorInputs, SelectorSpec


def inputs(batch: int, grid: int, channels: int = 5, seed: int = 0) -> SelectorInputs:
    patches = torch.randn(batch, grid * grid, channels, generator=torch.Generator().manual_seed(seed))
    return SelectorInputs(patches=patches, grid_size=grid, cls_tokens=1)


def test_random_keeps_the_same_distinct_patches_of_every_image_in_raster_order():
    spec = SelectorSpec("random", tokens=12)
    given = inputs(3, 6)
    selection = spec.declaration.select(spec, given)
    kept = selection.patch_index.numpy()
    assert kept.shape == (3, 12) and (kept == kept[0]).all()
    assert len(set(kept[0])) == 12 and list(kept[0]) == sorted(kept[0]) and kept.max() < 36
    expected = np.take_along_axis(given.patches.numpy(), kept[..., None], axis=1)
    np.testing.assert_array_equal(selection.tokens.numpy(), expected)
    # Uniform: over the draws of many seeds, every patch is kept about 12/36 of the time.
    from vtpexport.pruning.baselines import random_patches

    counts = np.bincount(np.concatenate([random_patches(36, 12, seed).numpy() for seed in range(3000)]), minlength=36)
    assert np.abs(counts / 3000 - 12 / 36).max() < 0.04


def test_pool_averages_each_window_of_the_grid_in_raster_order():
    spec = SelectorSpec("pool", tokens=9)
    given = inputs(2, 6)
    selection = spec.declaration.select(spec, given)
    grid = given.patches.numpy().reshape(2, 6, 6, 5)
    windows = [(r, c) for r in range(3) for c in range(3)]
    means = [[grid[b, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2].mean(axis=(0, 1)) for r, c in windows] for b in (0, 1)]
    expected = np.stack(means)
    np.testing.assert_allclose(selection.tokens.numpy(), expected, rtol=1e-6, atol=1e-6)
    assert (selection.patch_index == -1).all() and spec.output_tokens(36, 6) == 9


@pytest.mark.parametrize("tokens", [8, 16, 0])
def test_pool_refuses_counts_that_are_no_window_grid(tokens):
    spec = SelectorSpec("pool", tokens=tokens)
    with pytest.raises(UserError, match=r"m x m with m dividing the 6x6 patch grid: one of 1, 4, 9, 36"):
        spec.output_tokens(36, 6)


@pytest.mark.parametrize("spec", [SelectorSpec("random", tokens=7), SelectorSpec("pool", tokens=4)])
def test_baselines_run_in_the_graph(spec):
    model = load_model("tiny-llava-1.5")
    pixels = torch.randn(2, 3, 48, 48)
    tokens = model.graph.select_image_tokens(pixels, spec)
    assert tokens.embeds.shape == (2, spec.output_tokens(36, 6), model.args.text.hidden_size)
