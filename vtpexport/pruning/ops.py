"""Selection primitives shared by every method: static-count top-k in raster order, and
the IQR outlier fence (numpy.percentile 'linear' semantics) written with sort + gather so
it exports to standard ONNX ops."""

from __future__ import annotations

import torch
from torch import Tensor


def topk_ascending(scores: Tensor, k: int) -> Tensor:
    """Indices [..., k] of the k largest scores, re-sorted ascending (raster order)."""
    return torch.sort(torch.topk(scores, k, dim=-1).indices, dim=-1).values


def masked_scores(scores: Tensor, valid: Tensor) -> Tensor:
    """Padding positions score lowest, so they are the first dropped."""
    return scores.masked_fill(~valid.bool(), torch.finfo(scores.dtype).min)


def quantile_linear(values: Tensor, q: float) -> Tensor:
    """numpy.percentile(values, 100*q, axis=-1) with linear interpolation; values [B, N]."""
    ordered = torch.sort(values, dim=-1).values
    n = values.shape[-1]
    position = q * (n - 1)
    low = int(position)
    high = min(low + 1, n - 1)
    fraction = position - low
    return ordered[..., low] + (ordered[..., high] - ordered[..., low]) * fraction


def iqr_outliers(values: Tensor) -> Tensor:
    """Mask [B, N] of values above Q3 + 1.5 (Q3 - Q1), per row."""
    q1, q3 = quantile_linear(values, 0.25), quantile_linear(values, 0.75)
    return values > (q3 + 1.5 * (q3 - q1))[..., None]


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """x [B, N, ...] rows at index [B, k] -> [B, k, ...]."""
    expanded = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:])
    return torch.gather(x, 1, expanded)


def image_part(x: Tensor, dim: int, image_start: int, image_len: int) -> Tensor:
    """The image segment of a [prefix | image | text] axis.

    An index_select over an arange, not a slice: its length is the arange's, an exact symbolic
    expression, whereas the exporter may give a slice with symbolic bounds a data-dependent size.
    """
    return x.index_select(dim, torch.arange(image_start, image_start + image_len, device=x.device))


def text_part(x: Tensor, dim: int, image_start: int, image_len: int) -> Tensor:
    """The text segment after the image on the same axis."""
    return x.index_select(dim, torch.arange(image_start + image_len, x.shape[dim], device=x.device))
