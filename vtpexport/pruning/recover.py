"""Recoverable Compression (Chen et al., banjiuyufen/Recoverable-Compression): text-guided recovery.

1. Visual filter: PruMerge's CLS-attention outliers I_v.
2. Text recovery: among the other patches, the outliers of the question-patch relevance t
   (IQR fence; the reference fits sklearn's LocalOutlierFactor, which cannot run inside a graph)
   are added back: I_t. Selected = I_v u I_t, in raster order.
3. Secondary recovery: the patches left over are merged PruMerge-style into cluster centres (the
   highest-scoring leftovers, their count again an IQR outlier count, in descending score order
   as the reference emits them), neighbours ranked by key cosine plus a text term, and one
   aggregate token of what no centre took; with no centre, no aggregate (as the reference).

The fixed-budget form (`tokens`, `text_tokens`, `merge_tokens`) replaces each outlier count by a
recipe constant, so every shape follows from the recipe (what TensorRT needs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..schema import Field
from .ops import data_dependent_count, gather_tokens, iqr_outliers, topk_ascending
from .prumerge import merge, prumerge_scores
from .registry import (
    NULLABLE_COUNT,
    Selection,
    Selector,
    SelectorInputs,
    SelectorSpec,
    VisionProbe,
    all_or_none,
    register,
)

# The reference ranks a centre's neighbours by key cosine + 50 * (text cosine / sqrt(P)).
TEXT_AFFINITY_SCALE = 50.0


@dataclass
class RecoverSelection:
    selected: Tensor  # [B, k] raster indices of the patches kept as they are (I_v u I_t)
    centres: Tensor  # [B, c] raster indices of the leftover patches that absorb neighbours, by descending score
    leftover: Tensor  # [B, N] bool: patches neither selected (the merge pool)


def patch_text_relevance(text_embeds: Tensor, patch_embeds: Tensor) -> Tensor:
    """Cosine similarity [B, N] of each projected patch [B, N, P] with its row's text [B, P]."""
    text = F.normalize(text_embeds.float(), dim=-1)
    patches = F.normalize(patch_embeds.float(), dim=-1)
    return (patches @ text[..., None])[..., 0]


def text_affinity(relevance: Tensor, projection_dim: int) -> Tensor:
    """The text term added to key cosine when centres pick neighbours."""
    return TEXT_AFFINITY_SCALE * relevance * projection_dim**-0.5


def _outlier_count(values: Tensor, among: Tensor) -> int:
    """IQR outliers of one image's `values` among the entries `among` marks (data-dependent)."""
    return data_dependent_count(iqr_outliers(values, among)[0].sum(), values.shape[-1])


def _top(values: Tensor, allowed: Tensor, count: int) -> Tensor:
    return topk_ascending(values.masked_fill(~allowed, float("-inf")), count)


def _centres(scores: Tensor, leftover: Tensor, count: int) -> Tensor:
    """The `count` highest-scoring leftovers, highest first (the reference's topk order)."""
    return torch.topk(scores.masked_fill(~leftover, float("-inf")), count, dim=-1).indices


def _union(a: Tensor, b: Tensor) -> Tensor:
    return torch.sort(torch.cat([a, b], dim=-1), dim=-1).values


def _mask(indices: Tensor, n: int) -> Tensor:
    return torch.zeros(indices.shape[0], n, dtype=torch.bool, device=indices.device).scatter(1, indices, True)


def recover_adaptive(scores: Tensor, relevance: Tensor) -> RecoverSelection:
    """Reference semantics, counts from the data: one image (B = 1) at a time."""
    n = scores.shape[-1]
    visual_index = topk_ascending(scores, _outlier_count(scores, torch.ones_like(scores, dtype=torch.bool)))
    rest = ~_mask(visual_index, n)
    text_index = _top(relevance, rest, _outlier_count(relevance, rest))
    selected = _union(visual_index, text_index)
    leftover = ~_mask(selected, n)
    centres = _centres(scores, leftover, _outlier_count(scores, leftover))
    return RecoverSelection(selected, centres, leftover)


def fixed_counts(n: int, visual_tokens: int, text_tokens: int, merge_tokens: int) -> tuple[int, int, int]:
    """The fixed budget's three counts on `n` patches, each clamped to what is left."""
    visual_tokens = min(visual_tokens, n)
    text_tokens = min(text_tokens, n - visual_tokens)
    return visual_tokens, text_tokens, min(merge_tokens, n - visual_tokens - text_tokens)


def recover_fixed(
    scores: Tensor, relevance: Tensor, visual_tokens: int, text_tokens: int, merge_tokens: int
) -> RecoverSelection:
    """Fixed budget: the top `visual_tokens` by score, then the `text_tokens` most question-relevant
    others, then `merge_tokens` centres; counts are clamped to what is left at each step."""
    n = scores.shape[-1]
    visual_tokens, text_tokens, merge_tokens = fixed_counts(n, visual_tokens, text_tokens, merge_tokens)
    visual_index = topk_ascending(scores, visual_tokens)
    text_index = _top(relevance, ~_mask(visual_index, n), text_tokens)
    selected = _union(visual_index, text_index)
    leftover = ~_mask(selected, n)
    centres = _centres(scores, leftover, merge_tokens)
    return RecoverSelection(selected, centres, leftover)


@register
class Recover(Selector):
    name = "recover"
    summary = "CLS-attention outliers, then question-relevant patches recovered, the rest merged into centres"
    # Fixed counts of the visual outliers, the question-relevant patches and the merge centres.
    fields = {key: Field(NULLABLE_COUNT, required=False) for key in ("tokens", "text_tokens", "merge_tokens")}
    rules = (all_or_none("tokens", "text_tokens", "merge_tokens"),)
    probe = VisionProbe(cls_qk=True, question=True, cls_token=True)
    tiles_refusal = "starts from PruMerge's CLS outliers and merges over one whole CLIP image (not built per tile)"
    count_field = None  # three counts (outliers, question-relevant, centres), not one

    def adaptive(self, spec: SelectorSpec) -> bool:
        return spec.tokens is None

    def output_tokens(self, spec: SelectorSpec, num_patches: int, grid_size: int) -> int | None:
        if spec.tokens is None:
            return None
        visual, text, centres = fixed_counts(num_patches, spec.tokens, spec.text_tokens, spec.merge_tokens)
        return visual + text + centres + min(centres, 1)  # the aggregate comes with the centres

    def select(self, spec: SelectorSpec, inputs: SelectorInputs) -> Selection:
        """[selected patches | merged centres | aggregate], the aggregate only with a centre."""
        patches, keys = inputs.patches, inputs.key[:, 1:]
        scores = prumerge_scores(inputs.query, inputs.key)
        relevance = patch_text_relevance(inputs.text_embeds, inputs.patch_embeds)
        if spec.tokens is None:
            pick = recover_adaptive(scores, relevance)
        else:
            pick = recover_fixed(scores, relevance, spec.tokens, spec.text_tokens, spec.merge_tokens)
        bonus = text_affinity(relevance, inputs.text_embeds.shape[-1])
        merged = merge(patches, keys, scores, pick.centres, pool=pick.leftover, affinity_bonus=bonus)
        centres = pick.centres.shape[1]
        # sym_min: the adaptive centre count is a symbol under export, where min() would branch on it.
        aggregates = torch.sym_min(centres, 1)
        tokens = torch.cat([gather_tokens(patches, pick.selected), merged[:, : centres + aggregates]], dim=1)
        aggregate_index = pick.centres.new_full((pick.centres.shape[0], aggregates), -1)
        return Selection(tokens, torch.cat([pick.selected, pick.centres, aggregate_index], dim=1))
