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

from .ops import gather_tokens, iqr_outliers, topk_ascending

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


def plus_samples(num_tokens: int, outliers: int) -> Tensor:
    """PruMerge+'s spatially uniform samples for `outliers` outliers (stride clamped to >= 1)."""
    stride = max(1, (num_tokens // max(outliers, 1)) // 3)
    return torch.arange(0, num_tokens, stride)


def merge(features: Tensor, patch_keys: Tensor, scores: Tensor, kept: Tensor) -> Tensor:
    """Token supplement: each kept token absorbs its nearest neighbours, plus one remainder token.

    features [B, N, C] (CLS dropped), patch_keys [B, N, C], scores a [B, N], kept [B, k].
    For kept i: y_i = x_i + sum over its 32 most key-similar other patches j of a_j x_j (raw a,
    as coded in the reference). z = sum over the pruned j of a_j x_j is appended: [B, k + 1, C].
    """
    b, n, _ = features.shape
    keys = F.normalize(patch_keys.float(), dim=-1)
    similarity = gather_tokens(keys, kept) @ keys.transpose(-1, -2)  # [B, k, N]
    similarity = similarity.scatter(-1, kept[..., None], float("-inf"))  # never its own neighbour
    neighbours = torch.topk(similarity, min(NEIGHBOURS, n - 1), dim=-1).indices  # [B, k, K]
    weights = torch.gather(scores[:, None].expand(-1, kept.shape[1], -1), 2, neighbours)
    neighbour_x = gather_tokens(features, neighbours.flatten(1)).view(*neighbours.shape, features.shape[-1])
    merged = gather_tokens(features, kept) + (weights[..., None].to(features.dtype) * neighbour_x).sum(dim=2)
    pruned = torch.ones(b, n, dtype=scores.dtype, device=scores.device).scatter(1, kept, 0.0)
    remainder = ((scores * pruned)[..., None].to(features.dtype) * features).sum(dim=1, keepdim=True)
    return torch.cat([merged, remainder], dim=1)
