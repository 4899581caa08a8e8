"""FastV (Chen et al.), the baseline: after layer K, keep the image tokens layer K-1's last
query attended to most (mean over heads); original position ids."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .ops import image_part, masked_scores
from .prefill import ImageDropHook
from .registry import OneDropSchedule, ScheduleSpec, ratio, register

if TYPE_CHECKING:
    from ..graph.decoder import Decoder, LayerAttention, Sequence


def fastv_scores(last_row_probs: Tensor, image_start: int, image_len: int, key_mask: Tensor) -> Tensor:
    """last_row_probs [B, H, S] of the last query -> scores [B, n] (mean over heads)."""
    image = image_part(last_row_probs.mean(dim=1), 1, image_start, image_len)
    return masked_scores(image, image_part(key_mask, 1, image_start, image_len))


def fastv_keep(spec: ScheduleSpec, n: int) -> int:
    """round(n * (1 - R)), half rounding up."""
    r = 1 - ratio(spec.ratio)
    return (2 * n * r.numerator + r.denominator) // (2 * r.denominator)


class FastVHook(ImageDropHook):
    def after_layer(self, decoder: Decoder, index: int, seq: Sequence, attention: LayerAttention) -> Sequence:
        if index != self.spec.layer - 1:
            return seq

        def scores() -> Tensor:
            # This layer's last-row attention: the q, k and bias of the layer just run.
            attn = decoder.layers[index].self_attn
            logits = attn.logits(attention.q[:, :, -1:], attention.k, attention.bias[:, :, -1:])
            return fastv_scores(torch.softmax(logits, dim=-1)[:, :, 0], seq.image_start, seq.image_len, seq.key_mask)

        return self.drop(index, seq, fastv_keep(self.spec, self.image_len), scores)[0]


@register
class FastV(OneDropSchedule):
    name = "fastv"
    summary = "after layer K, keep round(N (1 - R)) image tokens by the last query's attention"
    # R = 1 keeps only the text, a tested edge case.

    def kept(self, spec: ScheduleSpec, n: int) -> int:
        return fastv_keep(spec, n)

    def prefill_hook(self, spec: ScheduleSpec, image_len: int, replay=None) -> FastVHook:
        return FastVHook(spec, image_len, replay)
