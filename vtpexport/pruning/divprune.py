"""DivPrune (Alvar et al., CVPR 2025; vbdi/divprune): keep the most diverse visual tokens.

A max-min diversity problem over the cosine distance d(i, j) = 1 - cos(x_i, x_j) of the
projected visual tokens (the LLM's input embeddings, where the reference selects), solved
greedily as the reference does: the first pick is the token whose nearest other token is
farthest; each next pick is the token whose nearest picked token is farthest. Ties go to the
lowest index (argmax). Kept tokens enter the LLM in raster order, as the reference sorts them.

The fixed `tokens` count unrolls the greedy loop into that many steps of argmax and row
gathers: every shape follows from the recipe, and no TopK is needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .ops import gather_tokens, masked_scores
from .registry import CountSelector, Selection, SelectorInputs, SelectorSpec, VisionProbe, register


def cosine_distance(features: Tensor) -> Tensor:
    """d [B, N, N] = 1 - cosine similarity of the tokens [B, N, C], in fp32 at least."""
    x = F.normalize(features.to(torch.promote_types(features.dtype, torch.float32)), dim=-1)
    return 1.0 - x @ x.transpose(-1, -2)


def divprune_picks(features: Tensor, tokens: int, valid: Tensor | None = None) -> Tensor:
    """The greedy max-min picks [B, tokens] (tokens >= 1) of features [B, N, C], in selection order.

    With `valid` [B, N], the problem is that of the valid tokens alone; once they are all picked,
    the invalid ones follow (distinct, so the picks never repeat)."""
    distance = cosine_distance(features)
    itself = torch.eye(distance.shape[-1], dtype=torch.bool, device=distance.device)
    others = itself if valid is None else itself | ~valid[:, :, None]
    # First: column j's smallest distance to another token (the reference takes its
    # second-smallest entry, the smallest being the ~0 self-distance).
    score = distance.masked_fill(others, float("inf")).amin(dim=-2)
    nearest = torch.full_like(score, float("inf"))  # each token's distance to its nearest pick
    picked = torch.zeros_like(score, dtype=torch.bool)
    picks = []
    for _ in range(tokens):
        if valid is not None:  # below every valid score, above a pick's
            score = masked_scores(score, valid)
        # A pick is never picked again (the reference relies on its ~0 self-distance for that).
        pick = score.masked_fill(picked, float("-inf")).argmax(dim=-1)
        picks.append(pick)
        picked = picked.scatter(1, pick[:, None], True)
        nearest = torch.minimum(nearest, gather_tokens(distance, pick[:, None])[:, 0])
        score = nearest
    return torch.stack(picks, dim=1)


@register
class DivPrune(CountSelector):
    name = "divprune"
    summary = "keep `tokens` projected tokens by greedy max-min cosine diversity (DivPrune), raster order"
    probe = VisionProbe(projected=True)
    tiles_refusal = None

    def select(self, spec: SelectorSpec, inputs: SelectorInputs) -> Selection:
        projected = inputs.projected
        keep = self.output_tokens(spec, projected.shape[1], inputs.grid_size)
        kept = torch.sort(divprune_picks(projected, keep, inputs.valid), dim=-1).values
        return Selection(gather_tokens(projected, kept), kept)
