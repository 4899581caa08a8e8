"""FoPru (Jiang et al., arXiv 2411.14164) selection from the vision encoder's attention.

No official code was published; this follows the paper as METHODS.md reads it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..schema import Field
from .ops import gather_tokens, masked_scores, topk_ascending
from .registry import (
    PARAMETER_STEPS,
    RATIO,
    Selection,
    Selector,
    SelectorInputs,
    SelectorSpec,
    VisionProbe,
    ratio,
    register,
)


def fopru_significance(attn_probs: Tensor, cls_tokens: int = 1) -> Tensor:
    """sigma [B, N] from the feature layer's attention [B, H, c + N, c + N] (c CLS tokens first;
    LLaVA-HR's ViT has none).

    CLS row and column are dropped without renormalising; heads are averaged. u (attention
    each token receives) or v (attention it gives), whichever varies more, is the score.
    """
    m = attn_probs[:, :, cls_tokens:, cls_tokens:].float().mean(dim=1)
    received, given = m.mean(dim=1), m.mean(dim=2)
    use_received = received.var(dim=-1, unbiased=False) >= given.var(dim=-1, unbiased=False)
    return torch.where(use_received[:, None], received, given)


def fopru_rank(significance: Tensor, keep: int) -> Tensor:
    """Indices [B, keep] of the most significant tokens, in raster order."""
    return topk_ascending(significance, keep)


def fopru_row(significance: Tensor, grid_size: int, keep_rows: int) -> Tensor:
    """Whole patch-grid rows with the most total significance: indices [B, keep_rows * grid]."""
    b = significance.shape[0]
    rows = topk_ascending(significance.view(b, grid_size, grid_size).sum(dim=-1), keep_rows)
    columns = torch.arange(grid_size, device=significance.device)
    return (rows[..., None] * grid_size + columns).flatten(1)


class _FoPru(Selector):
    fields = {"ratio": Field(RATIO)}  # the share of tokens (rank) or grid rows (row) kept
    probe = VisionProbe(attention=True)
    tiles_refusal = "keeps whole patch-grid rows, and unpadding cuts the rows of LLaVA-NeXT's edge tiles"
    count_field = "ratio"

    def count_settings(self, num_patches: int, grid_size: int) -> list:
        """The ratios of the 0.001 grid of (0, 1]."""
        return [k / PARAMETER_STEPS for k in range(1, PARAMETER_STEPS + 1)]

    def kept(self, significance: Tensor, keep: int, grid_size: int) -> Tensor:
        raise NotImplementedError

    def select(self, spec: SelectorSpec, inputs: SelectorInputs) -> Selection:
        significance = fopru_significance(inputs.attn_probs, inputs.cls_tokens)
        if inputs.valid is not None:  # patches unpadding dropped rank below every kept one
            significance = masked_scores(significance, inputs.valid)
        n, grid = inputs.patches.shape[1], inputs.grid_size
        kept = self.kept(significance, self.output_tokens(spec, n, grid), grid)
        return Selection(gather_tokens(inputs.patches, kept), kept)


@register
class FoPruRank(_FoPru):
    name = "fopru-rank"
    summary = "keep the floor(N ratio) tokens of highest significance (vision-encoder attention)"
    tiles_refusal = None

    def output_tokens(self, spec: SelectorSpec, num_patches: int, grid_size: int) -> int:
        r = ratio(spec.ratio)
        return num_patches * r.numerator // r.denominator

    def kept(self, significance: Tensor, keep: int, grid_size: int) -> Tensor:
        return fopru_rank(significance, keep)


@register
class FoPruRow(_FoPru):
    name = "fopru-row"
    summary = "keep the floor(rows ratio) patch-grid rows of highest total significance, whole"

    def output_tokens(self, spec: SelectorSpec, num_patches: int, grid_size: int) -> int:
        r = ratio(spec.ratio)
        return grid_size * (grid_size * r.numerator // r.denominator)

    def kept(self, significance: Tensor, keep: int, grid_size: int) -> Tensor:
        return fopru_row(significance, grid_size, keep // grid_size)
