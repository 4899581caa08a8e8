"""Selection primitives shared by every method: static-count top-k in raster order, and
the IQR outlier fence (numpy.percentile 'linear' semantics) in ops that export to standard
ONNX ops (torch.quantile; over a per-row subset, sort + gather)."""

from __future__ import annotations

import torch
from torch import Tensor


def topk_ascending(scores: Tensor, k: int) -> Tensor:
    """Indices [..., k] of the k largest scores, re-sorted ascending (raster order)."""
    return torch.sort(torch.topk(scores, k, dim=-1).indices, dim=-1).values


def masked_scores(scores: Tensor, valid: Tensor) -> Tensor:
    """Padding positions score lowest, so they are the first dropped."""
    return scores.masked_fill(~valid.bool(), torch.finfo(scores.dtype).min)


def masked_quantile_linear(values: Tensor, among: Tensor, q: float) -> Tensor:
    """numpy.percentile(values, 100*q) with linear interpolation over the entries where `among`
    [B, N] is True, per row; their number varies by row, so the interpolation positions are
    tensors (no data-dependent shape). Not torch.nanquantile over NaN-filled values: ONNX Runtime
    gives it wrong values."""
    ordered = torch.sort(values.masked_fill(~among, float("inf")), dim=-1).values
    count = among.sum(dim=-1, keepdim=True)
    position = q * (count - 1).clamp(min=0).to(values.dtype)
    low = position.floor().long()
    high = torch.minimum(low + 1, (count - 1).clamp(min=0))
    below, above = torch.gather(ordered, -1, low), torch.gather(ordered, -1, high)
    return (below + (above - below).nan_to_num(0.0) * (position - low))[..., 0]


def iqr_outliers(values: Tensor, among: Tensor | None = None) -> Tensor:
    """Mask [B, N] of values above Q3 + 1.5 (Q3 - Q1), per row; with `among`, the quartiles and
    the outliers are those of the entries `among` marks."""
    if among is None:  # torch.quantile exports to sort + lerp; ONNX Runtime gives its values
        q1, q3 = torch.quantile(values, 0.25, dim=-1), torch.quantile(values, 0.75, dim=-1)
        return values > (q3 + 1.5 * (q3 - q1))[..., None]
    q1, q3 = masked_quantile_linear(values, among, 0.25), masked_quantile_linear(values, among, 0.75)
    return among & (values > (q3 + 1.5 * (q3 - q1))[..., None])


def data_dependent_count(count: Tensor, upper: int) -> int:
    """A count computed from tensor values (a 0-d tensor) as an int: a plain int when eager, a
    symbol bounded to [0, upper] under export (adaptive selectors; ONNX Runtime only)."""
    value = count.item()
    torch._check(value >= 0)
    torch._check(value <= upper)
    return value


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
