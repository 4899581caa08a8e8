"""CDPruner (Zhang et al., NeurIPS 2025; Theia-4869/CDPruner): a conditional DPP over the patches.

The kernel L = diag(r) S diag(r) conditions the similarity S of the projected visual tokens
(cosine, the LLM's input embeddings) on each patch's relevance r to the question: the cosine
between the question's CLIP text embedding and the patch's CLIP embedding (the feature
layer, through post_layernorm and visual_projection, as the reference projects it), negated
as the reference's LLaVA code does, then min-max normalised per image. Greedy MAP inference
of the DPP picks `tokens` patches with the incremental Cholesky update of Chen et al. (2018,
"fast greedy MAP"): each step takes the patch of largest marginal gain d_j^2, the conditional
variance of j given the picks, then downdates every gain by that pick's new Cholesky row.

The loop is unrolled over the recipe's `tokens` steps (argmax, gathers and a growing stack of
Cholesky rows): every shape follows from the recipe, and no TopK is needed.

On LLaVA-NeXT tiles (`SelectorInputs.valid`), each tile runs its own DPP over the patches
unpadding keeps, as the reference runs one per tile (its batch is the image's tiles), with the
relevance min-max normalised over the whole image's kept patches, as the reference normalises
over its batch. Patches outside `valid` are never picked while valid ones remain and take no part
in the valid picks: the picks are those of the DPP on the valid patches alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .ops import gather_tokens, masked_scores
from .recover import patch_text_relevance
from .registry import CountSelector, Selection, SelectorInputs, SelectorSpec, VisionProbe, register

# The reference's offset in the min-max normalisation: the least relevant patch keeps a
# small positive weight instead of 0.
RELEVANCE_OFFSET = 1e-6
# A gain is a conditional variance, >= 0 in exact arithmetic; rounding can take it to or
# below 0 once the picks span the kernel (more tokens than its rank), where the reference's
# square root turns to NaN. The floor keeps the Cholesky rows finite.
MIN_GAIN = 1e-12


def question_relevance(text_embeds: Tensor, patch_embeds: Tensor, valid: Tensor | None = None) -> Tensor:
    """r [B, N] in (0, 1]: each patch's negated CLIP cosine with its row's question, min-max
    normalised over the row's patches. With `valid` [B, N] (the rows are one image's tiles), min
    and max are over the valid patches of every row, and the others get 0: their kernel rows
    vanish, so filling a budget beyond the valid patches takes no square root of a negative gain."""
    negated = -patch_text_relevance(text_embeds, patch_embeds)
    if valid is None:
        low, high = negated.amin(dim=-1, keepdim=True), negated.amax(dim=-1, keepdim=True)
    else:  # one min and max for the image, as the reference takes them over its batch
        low = negated.masked_fill(~valid, float("inf")).amin(dim=(0, 1))
        high = negated.masked_fill(~valid, float("-inf")).amax(dim=(0, 1))
    relevance = (negated - low + RELEVANCE_OFFSET) / (high - low).clamp_min(RELEVANCE_OFFSET)
    return relevance if valid is None else relevance.masked_fill(~valid, 0.0)


def conditional_kernel(projected: Tensor, relevance: Tensor) -> Tensor:
    """L [B, N, N] = r_i cos(y_i, y_j) r_j for the projected tokens y [B, N, D] (fp32 at least)."""
    y = F.normalize(projected.to(torch.promote_types(projected.dtype, torch.float32)), dim=-1)
    r = relevance.to(y.dtype)
    return r[..., :, None] * (y @ y.transpose(-1, -2)) * r[..., None, :]


def dpp_greedy_picks(kernel: Tensor, tokens: int, valid: Tensor | None = None) -> Tensor:
    """Greedy MAP picks [B, tokens] of the DPP with kernel [B, N, N], in selection order.

    With `valid` [B, N], the picks are those of the DPP on the valid patches alone (a pick's
    Cholesky row and gain read only the kernel between it and earlier, valid, picks); once they
    are all picked, the invalid ones follow in index order (distinct, so the picks never repeat)."""
    gains = torch.diagonal(kernel, dim1=-2, dim2=-1)
    picked = torch.zeros_like(gains, dtype=torch.bool)
    picks, factors = [], None  # factors [B, t, N]: the picks' Cholesky rows so far
    for _ in range(tokens):
        allowed = gains if valid is None else masked_scores(gains, valid)  # below every valid gain, above a pick's
        pick = allowed.masked_fill(picked, float("-inf")).argmax(dim=-1)
        picks.append(pick)
        residual = gather_tokens(kernel, pick[:, None])[:, 0]  # L[pick, :]
        if factors is not None:
            at_pick = torch.gather(factors, 2, pick[:, None, None].expand(-1, factors.shape[1], 1))
            residual = residual - (at_pick * factors).sum(dim=1)
        gain = torch.gather(gains, 1, pick[:, None]).clamp_min(MIN_GAIN)
        factor = residual / gain.sqrt()
        factors = factor[:, None] if factors is None else torch.cat([factors, factor[:, None]], dim=1)
        gains = gains - factor.square()
        picked = picked.scatter(1, pick[:, None], True)
    return torch.stack(picks, dim=1)


@register
class CDPruner(CountSelector):
    name = "cdpruner"
    summary = "keep `tokens` projected tokens by greedy MAP of a DPP conditioned on the question (CDPruner)"
    fields = CountSelector.fields
    probe = VisionProbe(question=True, question_layer="feature", projected=True)
    tiles_refusal = None

    def select(self, spec: SelectorSpec, inputs: SelectorInputs) -> Selection:
        projected, valid = inputs.projected, inputs.valid
        keep = self.output_tokens(spec, projected.shape[1], inputs.grid_size)
        kernel = conditional_kernel(projected, question_relevance(inputs.text_embeds, inputs.patch_embeds, valid))
        kept = torch.sort(dpp_greedy_picks(kernel, keep, valid), dim=-1).values
        return Selection(gather_tokens(projected, kept), kept)
