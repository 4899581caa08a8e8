"""FastV (Chen et al.), the baseline: after layer K, keep the image tokens layer K-1's last
query attended to most (mean over heads); original position ids."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..schema import Field, Int
from .ops import image_part, masked_scores
from .prefill import ImageDropHook
from .registry import SHARE, Schedule, ScheduleSpec, ratio, register

if TYPE_CHECKING:
    from ..graph.decoder import Decoder, LayerAttention, Sequence

PARAMETER_STEPS = 1000  # R is solved on the grid k / 1000 (recipe ratios have denominators <= 1000)


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


def solve_fastv(budget, layer: int) -> ScheduleSpec:
    """The smallest R on the 0.001 grid of [0, 1] (the most tokens kept) that meets the budget.

    `budget` is calibrate's `Budget` (meets / unreachable / args)."""

    def schedule(k: int) -> ScheduleSpec:
        return ScheduleSpec("fastv", layer=layer, ratio=k / PARAMETER_STEPS)

    schedule(0).validate(budget.args.text.num_layers)
    if not budget.meets(schedule(PARAMETER_STEPS)):
        how = f"R = 1 still runs layers 0..{layer - 1} on every visual token"
        raise budget.unreachable("fastv", schedule(PARAMETER_STEPS), how)
    # FLOPs never increase as R grows: bisect for the first k that meets.
    lo, hi = -1, PARAMETER_STEPS
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if budget.meets(schedule(mid)) else (mid, hi)
    return schedule(hi)


@register
class FastV(Schedule):
    name = "fastv"
    summary = "after layer K, keep round(N (1 - R)) image tokens by the last query's attention"
    # K: tokens drop after layer K; R: the share dropped (1 keeps only the text, a tested edge case).
    fields = {"layer": Field(Int(1)), "ratio": Field(SHARE)}
    position_policy = "original"
    calibration = "analytic"

    def check_depth(self, spec: ScheduleSpec, num_layers: int) -> None:
        if spec.layer >= num_layers:
            raise self.error(f"layer must be in [1, {num_layers}), got {spec.layer}")

    def stage_starts(self, spec: ScheduleSpec, num_layers: int) -> list[int]:
        return [0, spec.layer]

    def tokens_per_layer(self, spec: ScheduleSpec, n: int, num_layers: int) -> list[tuple[int, int]]:
        kept = fastv_keep(spec, n)
        return [(kept, kept) if layer >= spec.layer else (n, n) for layer in range(num_layers)]

    def prefill_hook(self, spec: ScheduleSpec, image_len: int, replay=None) -> FastVHook:
        return FastVHook(spec, image_len, replay)

    def solve(self, budget, fixed: dict) -> tuple[ScheduleSpec, str]:
        schedule = solve_fastv(budget, fixed["layer"])
        return schedule, f"R = {schedule.ratio:g}, the smallest on the 0.001 grid meeting the budget"
