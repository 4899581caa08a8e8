"""How an image becomes the visual tokens of a prompt: one fixed tile (LLaVA-1.5, LLaVA-HR) or
LLaVA-NeXT's anyres tiles. `LlavaArgs.layout` picks one from the architecture; everything that
counts, tiles, packs, exports or feeds image tokens asks it instead of naming a family.

The packing (which tile feature goes where, where image_newline goes) depends only on the image
size, so it is computed on the host as an index; the graph just gathers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from transformers.image_processing_utils import select_best_resolution

from ..pruning.registry import Selector

if TYPE_CHECKING:
    from .args import LlavaArgs


class ImageLayout:
    """What every layout answers, for the architecture it was made for."""

    rule: str  # the manifest's image_tokens.rule
    tiled: bool  # the vision graph takes one image's tiles and a packing index, not a batch of images

    def __init__(self, args: LlavaArgs):
        self.args = args


class SingleTile(ImageLayout):
    """The whole image is one square tile of the vision tower's input; its token count is fixed,
    so images batch together and token selectors apply."""

    rule = "fixed"
    tiled = False

    def reference_size(self) -> tuple[int, int]:
        """(height, width) budgets and `inspect` count at by default: the native input."""
        return (self.args.input_image_size,) * 2

    def num_tiles(self, image_size: tuple[int, int]) -> int:
        return 1

    def typical_size(self) -> tuple[int, int]:
        """The image size of `token_range`'s opt."""
        return self.reference_size()

    def packing_index(self, image_size: tuple[int, int]) -> np.ndarray:
        return np.arange(self.args.tokens_per_tile, dtype=np.int64)

    def num_tokens(self, image_size: tuple[int, int]) -> int:
        """Placeholders an image of (height, width) takes in the prompt."""
        return self.args.tokens_per_tile

    def selected_tokens(self, image_size: tuple[int, int], keep: int, selector: Selector | None = None) -> int:
        """Visual tokens of an image after a selector keeping `keep` patches of the tile."""
        return keep

    def token_range(self, keep: int | None = None, selector: Selector | None = None) -> tuple[int, int, int]:
        """(min, opt, max) visual tokens of an image: unpruned, or a selector's `keep` per tile."""
        return (self.args.tokens_per_tile if keep is None else keep,) * 3

    def max_tiles(self) -> int:
        return 1

    def tracing_size(self) -> tuple[int, int]:
        """An image size for export tracing."""
        return self.reference_size()

    def vision_inputs(
        self, tiles: Tensor, image_size: tuple[int, int], keep: int | None = None, selector: Selector | None = None
    ) -> tuple[Tensor, ...]:
        """The vision graph's inputs for one image's tiles [T, C, H, W]: unpruned, or with a
        selector (its declaration, `selector`) returning `keep` tokens per tile."""
        return (tiles,)

    def image_embeddings(self, graph, tiles: Tensor, image_size: tuple[int, int]) -> Tensor:
        """The image's visual tokens [n, D] in prompt order (`graph`: a LlavaGraph)."""
        return graph.tile_features(tiles)[0]


class AnyresTiles(ImageLayout):
    """LLaVA-NeXT: the base image plus a grid of high-resolution tiles picked from the grid
    pinpoints, unpadded and packed with one image_newline per row; one image per vision call.

    A selector runs per tile, on the tile's patches that survive unpadding, and keeps
    min(keep, those patches) of each (the budget rule `per_tile`: the same count for the base
    tile and every high-resolution tile), or what its declaration's `tile_counts` says (`pool`:
    the windows that hold such a patch). Every image_newline is kept, and counted: the pruned
    sequence is the unpruned one with the unselected patch tokens taken out, so each kept token
    keeps its place relative to the rows (a pooled token takes its window's first patch's
    place). Counts are functions of the image size only. `selector`: the selector's
    declaration (None: the default rule, min(keep, those patches)).
    """

    rule = "anyres"
    tiled = True

    def reference_size(self) -> tuple[int, int]:
        """The largest tiling, as `vtpexport inspect` counts by default."""
        return max((tuple(p) for p in self.args.image_grid_pinpoints), key=lambda hw: (hw[0] * hw[1], hw))

    def tile_grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(rows, cols) of high-resolution tiles for an image of (height, width)."""
        pinpoints = [list(p) for p in self.args.image_grid_pinpoints]
        height, width = select_best_resolution(list(image_size), pinpoints)
        return height // self.args.vision.image_size, width // self.args.vision.image_size

    def num_tiles(self, image_size: tuple[int, int]) -> int:
        """Tiles the vision tower sees: the grid plus the downscaled base image."""
        rows, cols = self.tile_grid(image_size)
        return rows * cols + 1

    def packing_index(self, image_size: tuple[int, int]) -> np.ndarray:
        """Rows of cat(tile_features.flatten(0, 1), image_newline) in the image's token order.

        Order (as LLaVA-NeXT): the base tile's tokens, then the unpadded high-resolution grid
        row by row with one image_newline after each row.
        """
        args = self.args
        per_tile = args.tokens_per_tile
        newline = self.num_tiles(image_size) * per_tile
        side = args.vision.grid_size
        rows, cols = self.tile_grid(image_size)
        r0, r1, c0, c1 = _unpadded_window(image_size, rows * side, cols * side)
        y, x = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
        tile = (y // side) * cols + (x // side)
        within = (y % side) * side + (x % side)
        grid = (1 + tile) * per_tile + within
        grid = np.concatenate([grid, np.full((r1 - r0, 1), newline)], axis=1)
        return np.concatenate([np.arange(per_tile), grid.reshape(-1)]).astype(np.int64)

    def num_tokens(self, image_size: tuple[int, int]) -> int:
        return len(self.packing_index(image_size))

    def patch_position(self, image_size: tuple[int, int]) -> np.ndarray:
        """[T, P]: where each tile patch sits in the unpruned token sequence; -1 where unpadding drops it."""
        index = self.packing_index(image_size)
        tile_rows = self.num_tiles(image_size) * self.args.tokens_per_tile
        position = np.full(tile_rows + 1, -1, dtype=np.int64)  # the last row: image_newline, not a patch
        position[index] = np.arange(len(index))
        return position[:tile_rows].reshape(-1, self.args.tokens_per_tile)

    def newline_position(self, image_size: tuple[int, int]) -> np.ndarray:
        """[R]: where each image_newline sits in the unpruned token sequence (one per grid row)."""
        index = self.packing_index(image_size)
        return np.flatnonzero(index == self.num_tiles(image_size) * self.args.tokens_per_tile).astype(np.int64)

    def kept_per_tile(self, image_size: tuple[int, int], keep: int, selector: Selector | None = None) -> np.ndarray:
        """[T]: tokens a selector returning `keep` per tile keeps of each tile (by default fewer
        only where unpadding left fewer patches)."""
        candidates = self.patch_position(image_size) >= 0
        rule = selector if selector is not None else Selector()  # the base declaration: the default rule
        return np.asarray(rule.tile_counts(candidates, keep, self.args.vision.grid_size))

    def selected_packing_index(
        self, image_size: tuple[int, int], keep: int, selector: Selector | None = None
    ) -> np.ndarray:
        """Rows of cat(kept tokens [T * keep] (per tile, those of unpadded patches first), one
        image_newline per grid row [R]) that make the pruned image, before they are put in the
        unpruned sequence's order: each tile's first `kept_per_tile`, then every newline."""
        counts = self.kept_per_tile(image_size, keep, selector)
        tiles = [t * keep + np.arange(count) for t, count in enumerate(counts)]
        tile_rows = self.num_tiles(image_size) * keep
        newlines = tile_rows + np.arange(len(self.newline_position(image_size)))
        return np.concatenate([*tiles, newlines]).astype(np.int64)

    def selected_tokens(self, image_size: tuple[int, int], keep: int, selector: Selector | None = None) -> int:
        return len(self.selected_packing_index(image_size, keep, selector))

    def covering_sizes(self) -> list[tuple[int, int]]:
        """Image sizes whose counts bound every image's: aspect ratios from 1:10 to 10:1 cover
        every tile grid and unpadding the pinpoints allow."""
        side = self.args.vision.image_size
        sizes = [(side * 10, side * w // 10 or 1) for w in range(10, 101)]
        return sizes + [(side * h // 10 or 1, side * 10) for h in range(10, 101)]

    def token_range(self, keep: int | None = None, selector: Selector | None = None) -> tuple[int, int, int]:
        def count(size: tuple[int, int]) -> int:
            return self.num_tokens(size) if keep is None else self.selected_tokens(size, keep, selector)

        counts = [count(size) for size in self.covering_sizes()]
        return min(counts), count(self.typical_size()), max(counts)

    def typical_size(self) -> tuple[int, int]:
        """The image size of `token_range`'s opt: a 2x2 tile grid."""
        return (self.args.vision.image_size * 2,) * 2

    def grid_rows_range(self) -> tuple[int, int, int]:
        """(min, opt, max) image_newline tokens (unpadded high-resolution feature rows) of an image."""
        rows = [len(self.newline_position(size)) for size in self.covering_sizes()]
        return min(rows), len(self.newline_position(self.typical_size())), max(rows)

    def max_tiles(self) -> int:
        tile = self.args.vision.image_size
        return max((h // tile) * (w // tile) for h, w in self.args.image_grid_pinpoints) + 1

    def tracing_size(self) -> tuple[int, int]:
        side = self.args.vision.image_size
        return (side * 2, side)  # a 2x1 tile grid: tiles and image tokens both vary

    def vision_inputs(
        self, tiles: Tensor, image_size: tuple[int, int], keep: int | None = None, selector: Selector | None = None
    ) -> tuple[Tensor, ...]:
        if keep is None:
            return (tiles, torch.from_numpy(self.packing_index(image_size)))
        return (
            tiles,
            torch.from_numpy(self.patch_position(image_size)),
            torch.from_numpy(self.newline_position(image_size)),
            torch.from_numpy(self.selected_packing_index(image_size, keep, selector)),
        )

    def image_embeddings(self, graph, tiles: Tensor, image_size: tuple[int, int]) -> Tensor:
        index = torch.from_numpy(self.packing_index(image_size)).to(tiles.device)
        return graph.pack_tiles(graph.tile_features(tiles), index)


def _unpadded_window(image_size: tuple[int, int], grid_h: int, grid_w: int) -> tuple[int, int, int, int]:
    """Rows [r0, r1) and cols [c0, c1) of the padded feature grid that hold the image."""
    orig_h, orig_w = image_size
    if orig_w / orig_h > grid_w / grid_h:
        new_h = int(round(orig_h * (grid_w / orig_w), 7))
        pad = (grid_h - new_h) // 2
        return pad, grid_h - pad, 0, grid_w
    new_w = int(round(orig_w * (grid_h / orig_h), 7))
    pad = (grid_w - new_w) // 2
    return 0, grid_h, pad, grid_w - pad
