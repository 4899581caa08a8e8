"""LLaVA-NeXT anyres geometry: tile grid, unpadding and the packing index.

The packing (which tile feature goes where, where image_newline goes) depends only on the
image size, so it is computed here on the host as an index; the graph just gathers.
"""

from __future__ import annotations

import numpy as np
from transformers.image_processing_utils import select_best_resolution

from ..graph.args import LlavaArgs


def tile_grid(image_size: tuple[int, int], args: LlavaArgs) -> tuple[int, int]:
    """(rows, cols) of high-resolution tiles for an image of (height, width)."""
    height, width = select_best_resolution(list(image_size), [list(p) for p in args.image_grid_pinpoints])
    return height // args.vision.image_size, width // args.vision.image_size


def num_tiles(image_size: tuple[int, int], args: LlavaArgs) -> int:
    """Tiles the vision tower sees: the grid plus the downscaled base image."""
    if args.family != "llava-next":
        return 1
    rows, cols = tile_grid(image_size, args)
    return rows * cols + 1


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


def packing_index(image_size: tuple[int, int], args: LlavaArgs) -> np.ndarray:
    """Rows of cat(tile_features.flatten(0, 1), image_newline) in the image's token order.

    Order (as LLaVA-NeXT): the base tile's tokens, then the unpadded high-resolution grid
    row by row with one image_newline after each row.
    """
    per_tile = args.tokens_per_tile
    newline = num_tiles(image_size, args) * per_tile
    if args.family != "llava-next":
        return np.arange(per_tile, dtype=np.int64)
    side = args.vision.grid_size
    rows, cols = tile_grid(image_size, args)
    r0, r1, c0, c1 = _unpadded_window(image_size, rows * side, cols * side)
    y, x = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
    tile = (y // side) * cols + (x // side)
    within = (y % side) * side + (x % side)
    grid = (1 + tile) * per_tile + within
    grid = np.concatenate([grid, np.full((r1 - r0, 1), newline)], axis=1)
    return np.concatenate([np.arange(per_tile), grid.reshape(-1)]).astype(np.int64)


def num_image_tokens(image_size: tuple[int, int], args: LlavaArgs) -> int:
    """Placeholders an image of (height, width) takes in the prompt."""
    return len(packing_index(image_size, args))
