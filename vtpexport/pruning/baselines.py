"""Baselines a pruning table needs beside the methods: a random subset of the patches and
average pooling of the patch grid, at fixed counts. Independent benchmarks find that both, at
the same token count, beat many published selectors; a table without them cannot say whether a
method helps.

Both read only the feature layer's patch tokens (no attention probabilities, no probe), export
to a constant Gather and an AveragePool, and keep counts fixed by the recipe.

On LLaVA-NeXT tiles, where unpadding cuts rows or columns off the edge tiles, a pooled token is
the mean of its window's candidate patches, and a tile keeps the windows that hold one (a count
that follows from the image size, `PooledGrid.tile_counts`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..schema import Field
from .ops import gather_tokens, topk_ascending
from .registry import COUNT, CountSelector, Selection, Selector, SelectorInputs, SelectorSpec, register

RANDOM_SEED = 0


def random_order(num_patches: int, seed: int = RANDOM_SEED) -> np.ndarray:
    """One uniform permutation of the patch indices: the draw order of every random selection.

    One draw, the same for every image: a per-image draw would put a random op in the graph,
    which no serving stack reproduces and `verify` could not compare with the eager reference.
    Drawn with numpy, so the export traces a constant, not a random op."""
    return np.random.default_rng(seed).permutation(num_patches)


def random_patches(num_patches: int, keep: int, seed: int = RANDOM_SEED) -> Tensor:
    """`keep` of `num_patches` patch indices drawn uniformly without replacement, in raster order."""
    return torch.from_numpy(np.sort(random_order(num_patches, seed)[:keep]))


def random_valid_patches(valid: Tensor, keep: int, seed: int = RANDOM_SEED) -> Tensor:
    """[B, keep]: the first `keep` patches of the draw order that `valid` [B, N] allows (then the
    others, in draw order, when fewer are allowed), in raster order."""
    n = valid.shape[1]
    rank = torch.empty(n, dtype=torch.float32)
    rank[torch.from_numpy(random_order(n, seed))] = torch.arange(n, dtype=torch.float32)
    rank = rank.to(valid.device)
    return topk_ascending(torch.where(valid, -rank, -rank - n), keep)


@register
class RandomPatches(CountSelector):
    name = "random"
    summary = "keep `tokens` patches drawn uniformly at random (one seeded draw, the same for every image)"
    fields = CountSelector.fields
    tiles_refusal = None

    def select(self, spec: SelectorSpec, inputs: SelectorInputs) -> Selection:
        patches = inputs.patches
        keep = self.output_tokens(spec, patches.shape[1], inputs.grid_size)
        if inputs.valid is not None:  # a TopK over the draw order, as the allowed patches differ per tile
            kept = random_valid_patches(inputs.valid, keep)
        else:
            kept = random_patches(patches.shape[1], keep).to(patches.device)[None].expand(patches.shape[0], -1)
        return Selection(gather_tokens(patches, kept), kept)


@register
class PooledGrid(Selector):
    name = "pool"
    summary = "average-pool the patch grid into `tokens` = m x m cells (m dividing the grid side)"
    fields = {"tokens": Field(COUNT)}
    tiles_refusal = None

    def output_tokens(self, spec: SelectorSpec, num_patches: int, grid_size: int) -> int:
        side = math.isqrt(spec.tokens)
        if side * side != spec.tokens or side == 0 or grid_size % side:
            sides = [m * m for m in range(1, grid_size + 1) if grid_size % m == 0]
            raise self.error(
                f"tokens must be m x m with m dividing the {grid_size}x{grid_size} patch grid: one of "
                f"{', '.join(map(str, sides))}, got {spec.tokens}"
            )
        return spec.tokens

    def tile_counts(self, candidates: np.ndarray, keep: int, grid_size: int) -> np.ndarray:
        """[T]: the windows that hold a candidate patch, in each tile."""
        side = math.isqrt(keep)
        window = grid_size // side
        return candidates.reshape(-1, side, window, side, window).any(axis=(2, 4)).sum(axis=(1, 2))

    def select(self, spec: SelectorSpec, inputs: SelectorInputs) -> Selection:
        patches, grid = inputs.patches, inputs.grid_size
        b, n, c = patches.shape
        window = grid // math.isqrt(self.output_tokens(spec, grid * grid, grid))
        cells = patches.transpose(1, 2).reshape(b, c, grid, grid)
        if inputs.valid is None:
            pooled = F.avg_pool2d(cells, window).flatten(2).transpose(1, 2)
            # Each token averages a window of patches, not one patch: -1, as for PruMerge's merged token.
            return Selection(pooled, torch.full(pooled.shape[:2], -1, dtype=torch.long, device=patches.device))
        valid = inputs.valid.to(patches.dtype).reshape(b, 1, grid, grid)
        # The mean of the window's candidates: sum(x v) / sum(v), both as window means; a window
        # with none gives 0 (its token is not packed).
        share = F.avg_pool2d(valid, window)
        pooled = (F.avg_pool2d(cells * valid, window) / share.clamp_min(1 / window**2)).flatten(2).transpose(1, 2)
        # Its place is its window's first candidate in raster order (a window with none: its first
        # patch, not a candidate), a min-pool of the raster index, offset by n off the candidates.
        index = torch.arange(n, dtype=torch.float32, device=patches.device).reshape(1, 1, grid, grid)
        key = torch.where(valid > 0, index, index + n)
        first = -F.max_pool2d(-key, window)
        return Selection(pooled, torch.where(first >= n, first - n, first).flatten(1).long())
