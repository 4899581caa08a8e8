"""DART (Wen et al., EMNLP 2025; ZichenWen1/DART), pre-LLM variant: keep pivots and what
duplicates them least.

The reference prunes inside the LLM after layer K = 2: pivots are the image tokens (and
question tokens) of largest L1 key norm, and each pivot in turn takes, from the image tokens
not yet kept, those least cosine-similar to it in the layer's normed hidden states. Before the
LLM there are no keys and no question tokens, so this variant reads the projected visual
tokens (the LLM's input embeddings) for both: the `PIVOTS` tokens of largest L1 norm are the
pivots, and the rest of the `tokens` budget is split among them as evenly as it divides.

Every count follows from the recipe: one TopK for the pivots, one per pivot for its picks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .ops import gather_tokens, masked_scores
from .registry import CountSelector, Selection, SelectorInputs, SelectorSpec, VisionProbe, register

# The reference's default pivots for LLaVA are 4 image + 4 question tokens; before the LLM
# all 8 are image tokens.
PIVOTS = 8


def pivot_quotas(tokens: int, pivots: int) -> list[int]:
    """Tokens each pivot adds beside itself: tokens - pivots split evenly, the pivots of
    largest norm taking the remainder."""
    spare, extra = divmod(tokens - pivots, pivots)
    return [spare + (rank < extra) for rank in range(pivots)]


def dart_keep(features: Tensor, tokens: int, valid: Tensor | None = None) -> Tensor:
    """Kept indices [B, tokens] (tokens <= N) of features [B, N, C], in raster order.

    With `valid` [B, N], pivots and picks are the valid tokens' (invalid ones only fill a budget
    larger than the valid tokens, never repeating a pick)."""
    x = features.to(torch.promote_types(features.dtype, torch.float32))
    pivots = min(PIVOTS, tokens)

    def allowed(scores: Tensor) -> Tensor:  # invalid tokens below every valid one, above a pick
        return scores if valid is None else masked_scores(scores, valid)

    pivot_index = torch.topk(allowed(x.abs().sum(dim=-1)), pivots, dim=-1).indices  # largest L1 norm first
    kept = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device).scatter(1, pivot_index, True)
    unit = F.normalize(x, dim=-1)
    picks = [pivot_index]
    for rank, quota in enumerate(pivot_quotas(tokens, pivots)):
        if quota == 0:  # the quotas fall with rank: the rest are 0 too (a TopK of K = 0 is no op to ship)
            break
        pivot = gather_tokens(unit, pivot_index[:, rank : rank + 1])  # [B, 1, C]
        dissimilarity = -(pivot @ unit.transpose(-1, -2))[:, 0]
        pick = torch.topk(allowed(dissimilarity).masked_fill(kept, float("-inf")), quota, dim=-1).indices
        kept = kept.scatter(1, pick, True)
        picks.append(pick)
    return torch.sort(torch.cat(picks, dim=-1), dim=-1).values


@register
class Dart(CountSelector):
    name = "dart"
    summary = "keep 8 pivot tokens of largest L1 norm and the tokens least cosine-similar to them (DART, pre-LLM)"
    probe = VisionProbe(projected=True)
    tiles_refusal = None

    def select(self, spec: SelectorSpec, inputs: SelectorInputs) -> Selection:
        projected = inputs.projected
        kept = dart_keep(projected, self.output_tokens(spec, projected.shape[1], inputs.grid_size), inputs.valid)
        return Selection(gather_tokens(projected, kept), kept)
