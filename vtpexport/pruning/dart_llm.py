"""DART in the LLM (Wen et al., EMNLP 2025, "Stop Looking for Important Tokens in Multimodal
Language Models: Duplication Matters More"; ZichenWen1/DART): before layer K (2 for
LLaVA-1.5), keep pivot tokens and the image tokens that duplicate them least.

Pivots are the 4 image and the 4 question tokens (those after the image) of largest L1 norm of
layer K-1's keys (post-RoPE, all key heads flattened). In turn (image pivots, then question
pivots, each by descending norm), each pivot takes the `per_pivot` image tokens, not yet kept,
least cosine-similar to it in layer K-1's output after the final RMSNorm. The image pivots and
every pick are kept; positions keep their original values. No attention probabilities: every
layer's attention stays one fused kernel.

Every count is shape arithmetic: one TopK for each pivot kind, one per pivot for its picks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from .ops import gather_tokens, image_part, text_part
from .prefill import ImageDropHook
from .registry import OneDropSchedule, ScheduleSpec, ratio, register

if TYPE_CHECKING:
    from ..graph.decoder import Decoder, LayerAttention, Sequence

IMAGE_PIVOTS = 4  # the reference's pivot_image_token for LLaVA
TEXT_PIVOTS = 4  # its pivot_text_token


def image_pivot_count(n: int) -> int:
    return torch.sym_min(IMAGE_PIVOTS, n)


def per_pivot(spec: ScheduleSpec, n: int) -> int:
    """Image tokens each of the 8 pivots takes: floor(n (1 - R) / 8), as the reference's
    TOKEN_TOPK, capped so that the picks fit among the n - (image pivots) other tokens."""
    r = 1 - ratio(spec.ratio)
    by_ratio = n * r.numerator // ((IMAGE_PIVOTS + TEXT_PIVOTS) * r.denominator)
    return torch.sym_min(by_ratio, (n - image_pivot_count(n)) // (IMAGE_PIVOTS + TEXT_PIVOTS))


def dart_kept(spec: ScheduleSpec, n: int) -> int:
    """Image tokens kept of n: the image pivots and 8 pivots' picks."""
    return image_pivot_count(n) + (IMAGE_PIVOTS + TEXT_PIVOTS) * per_pivot(spec, n)


def l1_norm(x: Tensor) -> Tensor:
    """L1 norm [B, m] of x [B, m, C] in fp32. Reduced with one zero token appended, then dropped:
    ONNX Runtime returns an empty [B, 0, C] unreduced (ReduceSum) or refuses it (MatMul), and the
    generation phase has no image tokens."""
    padded = torch.cat([x, x.new_zeros(x.shape[0], 1, x.shape[2])], dim=1).float().abs().sum(dim=-1)
    return padded.index_select(1, torch.arange(x.shape[1], device=x.device))


def _padded_slots(norm: Tensor, hidden: Tensor, slots: int) -> tuple[Tensor, Tensor, Tensor]:
    """The `slots` tokens of largest norm [B, m] as pivots: (index [B, slots], real [B, slots],
    unit hidden [B, slots, D]). The segment is padded with `slots` missing tokens (norm -inf,
    hidden 0), so every slot exists whatever m is; a slot past the real tokens is not `real`."""
    b = norm.shape[0]
    padded = torch.cat([norm, norm.new_full((b, slots), float("-inf"))], dim=1)
    top = torch.topk(padded, slots, dim=-1)
    unit = F.normalize(torch.cat([hidden, hidden.new_zeros(b, slots, hidden.shape[-1])], dim=1), dim=-1)
    return top.indices, top.values > float("-inf"), gather_tokens(unit, top.indices)


def dart_prefill_keep(
    image_keys: Tensor,
    text_keys: Tensor,
    text_valid: Tensor,
    image_hidden: Tensor,
    text_hidden: Tensor,
    per_pivot: int,
) -> Tensor:
    """Kept image indices [B, min(4, n) + 8 per_pivot], ascending.

    image_keys [B, n, C] / text_keys [B, t, C]: the layer's keys of the image and of the text
    after it (text_valid [B, t]: real tokens, not padding); image_hidden [B, n, D] / text_hidden
    [B, t, D]: the layer's output after the final norm. A question pivot slot with no real token
    left (fewer than 4) takes the tokens of largest key norm instead.
    """
    n = image_keys.shape[1]
    image_norm, text_norm = l1_norm(image_keys), l1_norm(text_keys).masked_fill(~text_valid, float("-inf"))
    image_hidden, text_hidden = image_hidden.float(), text_hidden.float()
    image_unit = F.normalize(image_hidden, dim=-1)
    image_pivots = torch.topk(image_norm, image_pivot_count(n), dim=-1).indices  # the kept pivots
    # Every slot exists, so the loop below is the same at any n (the generation phase has n = 0).
    _, image_real, image_pivot_unit = _padded_slots(image_norm, image_hidden, IMAGE_PIVOTS)
    _, text_real, text_pivot_unit = _padded_slots(text_norm, text_hidden, TEXT_PIVOTS)
    pivot_unit = torch.cat([image_pivot_unit, text_pivot_unit], dim=1)  # [B, 8, D]
    real = torch.cat([image_real, text_real], dim=1)  # [B, 8]
    kept = torch.zeros_like(image_norm, dtype=torch.bool).scatter(1, image_pivots, True)
    picks = [image_pivots]
    for slot in range(IMAGE_PIVOTS + TEXT_PIVOTS):
        dissimilarity = -(pivot_unit[:, slot : slot + 1] @ image_unit.transpose(-1, -2))[:, 0]  # [B, n]
        score = torch.where(real[:, slot : slot + 1], dissimilarity, image_norm)
        pick = torch.topk(score.masked_fill(kept, float("-inf")), per_pivot, dim=-1).indices
        kept = kept.scatter(1, pick, True)
        picks.append(pick)
    return torch.sort(torch.cat(picks, dim=-1), dim=-1).values


class DartHook(ImageDropHook):
    def after_layer(self, decoder: Decoder, index: int, seq: Sequence, attention: LayerAttention) -> Sequence:
        if index != self.spec.layer - 1:
            return seq

        def choose() -> Tensor:
            length, start, n = seq.x.shape[1], seq.image_start, seq.image_len
            # This layer's keys of the sequence (not of a past cache), heads flattened: [B, S, H_kv Dh].
            total = attention.k.shape[2]
            keys = attention.k.index_select(2, torch.arange(total - length, total, device=seq.x.device))
            keys = keys.transpose(1, 2).flatten(2)
            hidden = decoder.norm(seq.x)
            return dart_prefill_keep(
                image_part(keys, 1, start, n),
                text_part(keys, 1, start, n),
                text_part(seq.key_mask, 1, start, n).bool(),
                image_part(hidden, 1, start, n),
                text_part(hidden, 1, start, n),
                per_pivot(self.spec, self.image_len),
            )

        return self.drop_chosen(index, seq, choose)[0]


@register
class DartLlm(OneDropSchedule):
    name = "dart-llm"
    summary = "before layer K, keep 4 image pivots and 8 pivots' least-duplicate image tokens (DART in the LLM)"
    # Each of the 8 pivots takes floor(N (1 - R) / 8) image tokens.
    at_full_ratio = "R = 1 keeps the 4 image pivots and still runs layers 0..{last} on every visual token"

    def kept(self, spec: ScheduleSpec, n: int) -> int:
        return dart_kept(spec, n)

    def prefill_hook(self, spec: ScheduleSpec, image_len: int, replay=None) -> DartHook:
        return DartHook(spec, image_len, replay)
