"""PruMerge and PruMerge+ (Shang et al.): CLS-attention outliers, then merge the rest in.

Deliberate differences from the reference code (named in the recipe and the docs):
kept tokens come out in raster order (`order: raster`; `order: score` reproduces the
reference's descending-score order); PruMerge+'s sampling stride is clamped to >= 1 (the
reference crashes above 192 outliers) and k = 0 is handled (the reference divides by zero).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..schema import Field
from .ops import data_dependent_count, gather_tokens, iqr_outliers, topk_ascending
from .registry import NULLABLE_COUNT, ORDER, Selection, Selector, SelectorInputs, SelectorSpec, VisionProbe, register

NEIGHBOURS = 32


def prumerge_scores(query: Tensor, key: Tensor) -> Tensor:
    """a [B, N]: single-head CLS attention over the patches from raw q/k projections [B, 1 + N, C]."""
    logits = (query[:, :1].float() @ key.float().transpose(-1, -2)) * key.shape[-1] ** -0.5
    return torch.softmax(logits, dim=-1)[:, 0, 1:]


def adaptive_count(scores: Tensor) -> Tensor:
    """Number of IQR outliers per row [B] (data-dependent)."""
    return iqr_outliers(scores).sum(dim=-1)


def select_outliers(scores: Tensor, keep: int, order: str = "raster") -> Tensor:
    """The `keep` highest-scoring tokens [B, keep], in raster or descending-score order."""
    if order == "score":
        return torch.topk(scores, keep, dim=-1).indices
    return topk_ascending(scores, keep)


def uniform_grid(num_tokens: int, stride: int, device=None) -> Tensor:
    """Every `stride`-th token from 0, as the reference draws them: `arange(0, N - 1, stride)`,
    which never samples the last token (patch 575 of 576), whatever the stride."""
    return torch.arange(0, num_tokens - 1, stride, device=device)


def plus_samples(num_tokens: int, outliers: int) -> Tensor:
    """PruMerge+'s spatially uniform samples for `outliers` outliers (stride clamped to >= 1,
    where the reference's stride of 0 above N/3 outliers would fail)."""
    return uniform_grid(num_tokens, max(1, (num_tokens // max(outliers, 1)) // 3))


def plus_fixed_budget(scores: Tensor, budget: int) -> Tensor:
    """Fixed-budget PruMerge+ [B, budget], raster order: a static count for TensorRT.

    PruMerge+ keeps about three uniform samples per outlier, so the uniform grid is the one the
    reference would draw for budget // 4 outliers (stride widened until it fits the budget);
    the highest-scoring tokens outside the grid fill the rest of the budget.
    """
    n = scores.shape[-1]
    if budget == 0:
        return scores.new_zeros(scores.shape[0], 0, dtype=torch.long)
    stride = max((n // max(budget // 4, 1)) // 3, -(-n // budget), 1)
    samples = uniform_grid(n, stride, scores.device)
    on_grid = torch.zeros(n, dtype=torch.bool, device=scores.device).index_fill(0, samples, True)
    fill = torch.topk(scores.masked_fill(on_grid, float("-inf")), budget - samples.numel(), dim=-1).indices
    grid = samples[None].expand(scores.shape[0], -1)
    return torch.sort(torch.cat([grid, fill], dim=-1), dim=-1).values


def merge(
    features: Tensor,
    patch_keys: Tensor,
    scores: Tensor,
    kept: Tensor,
    pool: Tensor | None = None,
    affinity_bonus: Tensor | None = None,
) -> Tensor:
    """Token supplement: each kept token absorbs its nearest neighbours, plus one remainder token.

    features [B, N, C] (CLS dropped), patch_keys [B, N, C], scores a [B, N], kept [B, k].
    For kept i: y_i = x_i + sum over its 32 most key-similar other patches j of a_j x_j (raw a,
    as coded in the reference). z = sum over the pruned j of a_j x_j is appended: [B, k + 1, C].
    pool [B, N] (default: every patch) limits both the neighbours and z to those patches;
    affinity_bonus [B, N] is added to the key similarity when ranking neighbours.
    """
    b, n, _ = features.shape
    if pool is None:
        pool = torch.ones(b, n, dtype=torch.bool, device=features.device)
    keys = F.normalize(patch_keys.float(), dim=-1)
    similarity = gather_tokens(keys, kept) @ keys.transpose(-1, -2)  # [B, k, N]
    if affinity_bonus is not None:
        similarity = similarity + affinity_bonus[:, None].float()
    candidates = pool[:, None].expand(-1, kept.shape[1], -1).scatter(-1, kept[..., None], False)
    similarity = similarity.masked_fill(~candidates, float("-inf"))  # never its own neighbour
    neighbours = torch.topk(similarity, min(NEIGHBOURS, n - 1), dim=-1).indices  # [B, k, K]
    # When the pool holds fewer than K candidates, the extra picks are masked ones: weight 0.
    weights = torch.gather(scores[:, None].expand(-1, kept.shape[1], -1) * candidates, 2, neighbours)
    neighbour_x = gather_tokens(features, neighbours.flatten(1)).view(*neighbours.shape, features.shape[-1])
    merged = gather_tokens(features, kept) + (weights[..., None].to(features.dtype) * neighbour_x).sum(dim=2)
    pruned = pool.to(scores.dtype).scatter(1, kept, 0.0)
    remainder = ((scores * pruned)[..., None].to(features.dtype) * features).sum(dim=1, keepdim=True)
    return torch.cat([merged, remainder], dim=1)


def merged_selection(inputs: SelectorInputs, scores: Tensor, kept: Tensor) -> Selection:
    """Kept tokens merged with their neighbours, then the remainder token (patch index -1)."""
    merged = merge(inputs.patches, inputs.key[:, 1:], scores, kept)
    return Selection(merged, torch.cat([kept, torch.full_like(kept[:, :1], -1)], dim=1))


class _PruMerge(Selector):
    # tokens: a fixed count kept (none: adaptive, the IQR outliers); order: raster (ours) or score (reference).
    fields = {"tokens": Field(NULLABLE_COUNT, required=False), "order": Field(ORDER, required=False)}
    probe = VisionProbe(cls_qk=True, cls_token=True)
    tiles_refusal = (
        "merges every patch of one whole CLIP image into its kept tokens, and its fixed form samples a grid "
        "over all of the image's patches; on LLaVA-NeXT's tiles, which unpadding cuts, neither is defined"
    )

    def adaptive(self, spec: SelectorSpec) -> bool:
        return spec.tokens is None

    def output_tokens(self, spec: SelectorSpec, num_patches: int, grid_size: int) -> int | None:
        return None if spec.tokens is None else min(spec.tokens, num_patches) + 1  # + the merged remainder


@register
class PruMerge(_PruMerge):
    name = "prumerge"
    summary = "keep the CLS-attention outliers (or the top `tokens`), merge the rest into them, +1 remainder"

    def select(self, spec: SelectorSpec, inputs: SelectorInputs) -> Selection:
        scores = prumerge_scores(inputs.query, inputs.key)
        n = scores.shape[-1]
        count = min(spec.tokens, n) if spec.tokens is not None else data_dependent_count(adaptive_count(scores)[0], n)
        return merged_selection(inputs, scores, select_outliers(scores, count, spec.order))


@register
class PruMergePlus(_PruMerge):
    name = "prumerge+"
    summary = "PruMerge plus spatially uniform samples (about three per outlier), raster order"
    fields = {"tokens": Field(NULLABLE_COUNT, required=False)}

    def select(self, spec: SelectorSpec, inputs: SelectorInputs) -> Selection:
        scores = prumerge_scores(inputs.query, inputs.key)
        n = scores.shape[-1]
        if spec.tokens is not None:
            return merged_selection(inputs, scores, plus_fixed_budget(scores, min(spec.tokens, n)))
        outliers = data_dependent_count(adaptive_count(scores)[0], n)
        chosen = iqr_outliers(scores)
        chosen[:, plus_samples(n, outliers)] = True
        return merged_selection(inputs, scores, chosen[0].nonzero().flatten()[None])
