"""PyramidDrop (Xing et al.): stages end at layers [8, 16, 24] (scaled); stage s keeps
floor(N * lambda^s) image tokens, scored at each boundary by the last prompt token's attention
computed with the next layer's norm and q/k projections; positions renumbered after each drop."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..errors import UserError
from ..schema import Field, Int, ListOf
from .ops import image_part, masked_scores
from .prefill import ImageDropHook
from .registry import PARAMETER_STEPS, RATIO, Schedule, ScheduleSpec, ratio, register

if TYPE_CHECKING:
    from ..graph.decoder import Decoder, Sequence


def pyramiddrop_scores(
    q_last: Tensor, k: Tensor, bias_last: Tensor, image_start: int, image_len: int, key_mask: Tensor
) -> Tensor:
    """Scores [B, n]: softmax over all keys of one query, mean over heads, image columns.

    q_last [B, H, 1, Dh] (RoPE applied), k [B, H, S, Dh] (all keys: the softmax normalises
    over every key, so they are all projected), bias_last [B, 1, 1, S].
    """
    logits = (q_last @ k.transpose(-1, -2)).float() * q_last.shape[-1] ** -0.5 + bias_last.float()
    return _image_scores(logits, image_start, image_len, key_mask)


def _image_scores(logits: Tensor, image_start: int, image_len: int, key_mask: Tensor) -> Tensor:
    probs = torch.softmax(logits, dim=-1).mean(dim=1)[:, 0]  # [B, S]
    image = image_part(probs, 1, image_start, image_len)
    return masked_scores(image, image_part(key_mask, 1, image_start, image_len))


def stage_keep(spec: ScheduleSpec, stage: int, n: int) -> int:
    """Tokens kept in stage `stage` (>= 1) of an image with n tokens: floor(n * lambda^stage)."""
    r = ratio(spec.ratio)
    return n * r.numerator**stage // r.denominator**stage


class PyramidDropHook(ImageDropHook):
    def before_layer(self, decoder: Decoder, index: int, seq: Sequence) -> Sequence:
        if index not in self.spec.layers:
            return seq

        def scores() -> Tensor:
            # One query (the last prompt token) against every key, with this layer's norm and
            # q/k projections at the current positions: only that one query row is projected.
            layer = decoder.layers[index]
            h = layer.input_layernorm(seq.x)
            cos, sin, bias = decoder.sequence_rope_and_bias(seq)
            q_last = layer.self_attn.query(h[:, -1:], cos[:, -1:], sin[:, -1:])
            k = layer.self_attn.key(h, cos, sin)
            logits = layer.self_attn.logits(q_last, k, bias[:, :, -1:])
            return _image_scores(logits, seq.image_start, seq.image_len, seq.key_mask)

        keep = stage_keep(self.spec, self.spec.layers.index(index) + 1, self.image_len)
        return self.drop(index, seq, keep, scores)[0]


def default_stage_layers(num_layers: int) -> tuple[int, ...]:
    """PyramidDrop's [8, 16, 24] of 32 layers, scaled: L/4, L/2, 3L/4 rounded half up."""
    layers = sorted({(num_layers * k + 2) // 4 for k in (1, 2, 3)} & set(range(1, num_layers)))
    if not layers:
        raise UserError(f"pyramiddrop needs 2 or more LLM layers to place a stage boundary, the model has {num_layers}")
    return tuple(layers)


def solve_pyramiddrop(budget, layers: tuple[int, ...]) -> ScheduleSpec:
    """The largest lambda on the 0.001 grid of (0, 1] whose schedule meets the budget.

    `budget` is calibrate's `Budget` (meets / unreachable / args)."""

    def schedule(k: int) -> ScheduleSpec:
        return ScheduleSpec("pyramiddrop", layers=layers, ratio=k / PARAMETER_STEPS)

    schedule(1).validate(budget.args.text.num_layers)
    if not budget.meets(schedule(1)):
        raise budget.unreachable("pyramiddrop", schedule(1), f"lambda = 0.001 with stages at layers {list(layers)}")
    # FLOPs never decrease as lambda grows: bisect for the last k that meets.
    lo, hi = 1, PARAMETER_STEPS + 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if budget.meets(schedule(mid)) else (lo, mid)
    return schedule(lo)


def _increasing_layers(record: dict) -> str | None:
    layers = list(record["layers"])
    return None if layers == sorted(set(layers)) else f"layers must be strictly increasing, got {layers}"


@register
class PyramidDrop(Schedule):
    name = "pyramiddrop"
    summary = "stages end at `layers`; stage s keeps floor(N lambda^s) image tokens (lambda = ratio)"
    # layers: where stages 1, 2, ... start (each drops before it runs); ratio: lambda, kept per stage.
    fields = {"layers": Field(ListOf(Int(1), min_length=1)), "ratio": Field(RATIO)}
    rules = (_increasing_layers,)
    position_policy = "renumbered"
    calibration = "analytic"

    def check_depth(self, spec: ScheduleSpec, num_layers: int) -> None:
        if spec.layers[-1] >= num_layers:
            raise self.error(f"stage layer {spec.layers[-1]} is past the model's {num_layers} layers")

    def stage_starts(self, spec: ScheduleSpec, num_layers: int) -> list[int]:
        return [0, *spec.layers]

    def tokens_per_layer(self, spec: ScheduleSpec, n: int, num_layers: int) -> list[tuple[int, int]]:
        plan = []
        for layer in range(num_layers):
            stage = sum(1 for boundary in spec.layers if boundary <= layer)
            kept = stage_keep(spec, stage, n) if stage else n
            plan.append((kept, kept))
        return plan

    def prefill_hook(self, spec: ScheduleSpec, image_len: int, replay=None) -> PyramidDropHook:
        return PyramidDropHook(spec, image_len, replay)

    def solve(self, budget, fixed: dict) -> tuple[ScheduleSpec, str]:
        layers = fixed.get("layers") or default_stage_layers(budget.args.text.num_layers)
        schedule = solve_pyramiddrop(budget, tuple(layers))
        return schedule, f"lambda = {schedule.ratio:g}, the largest on the 0.001 grid meeting the budget"
