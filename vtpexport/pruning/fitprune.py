"""FitPrune (Ye et al.): a per-layer recipe of drop counts, calibrated from data (calibrate.py).

Inference: after a layer's attention, reduce the softmax probabilities over heads with max, then
score_j = (attention mass text rows give to j) * (mean attention visual rows give to j), and drop
the lowest; the dropped rows leave before o_proj, the layer's cache keeps every token, position
ids keep their original values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..schema import Field, Int, ListOf
from .ops import image_part, masked_scores, text_part
from .prefill import ImageDropHook
from .registry import COUNT, Schedule, ScheduleSpec, register

if TYPE_CHECKING:
    from ..graph.decoder import Decoder, LayerAttention, Sequence


def scored_rows_probs(decoder: Decoder, index: int, seq: Sequence, attention: LayerAttention) -> Tensor:
    """fp32 probabilities [B, H, S - image_start, S] of the image and text queries over every key:
    the only rows FitPrune's scores (and its calibration) read, computed beside the layer's fused
    attention rather than instead of it, so the prefix rows never enter fp32."""
    rows = torch.arange(seq.image_start, attention.q.shape[2], device=attention.q.device)
    q, bias = attention.q.index_select(2, rows), attention.bias.index_select(2, rows)
    return torch.softmax(decoder.layers[index].self_attn.logits(q, attention.k, bias), dim=-1)


def fitprune_scores(rows_probs: Tensor, image_start: int, image_len: int, key_mask: Tensor) -> Tensor:
    """Scores [B, n] of the image tokens.

    rows_probs [B, H, n + T, S] (fp32): the image (n) and text (T) rows of the layer's
    probabilities over the sequence [prefix | image (n) | text]; key_mask [B, S] marks real tokens.
    """
    reduced = rows_probs.amax(dim=1)  # [B, n + T, S]
    to_image = image_part(reduced, 2, image_start, image_len)  # [B, n + T, n]
    image_valid = image_part(key_mask, 1, image_start, image_len).to(rows_probs.dtype)
    text_valid = text_part(key_mask, 1, image_start, image_len).to(rows_probs.dtype)
    text_mass = (text_part(to_image, 1, 0, image_len) * text_valid[..., None]).sum(dim=1)
    visual_rows = (image_part(to_image, 1, 0, image_len) * image_valid[..., None]).sum(dim=1)
    visual_mean = visual_rows / image_valid.sum(dim=1, keepdim=True).clamp(min=1)
    return masked_scores(text_mass * visual_mean, image_valid)


def fitprune_kept(spec: ScheduleSpec, layer: int, n: int) -> int:
    """Tokens left after `layer`'s drop, for an image that entered the LLM with n.

    One floor of the cumulative drop per layer (not a sum of per-layer floors), so that the
    count is a single simple expression of n inside an exported graph.
    """
    return n - n * sum(spec.drop[: layer + 1]) // spec.visual_tokens


class FitPruneHook(ImageDropHook):
    def after_attention(
        self, decoder: Decoder, index: int, seq: Sequence, attention: LayerAttention
    ) -> tuple[Sequence, Tensor | None]:
        if self.spec.drop[index] == 0:
            return seq, None
        keep = fitprune_kept(self.spec, index, self.image_len)

        def scores() -> Tensor:
            probs = scored_rows_probs(decoder, index, seq, attention)
            return fitprune_scores(probs, seq.image_start, seq.image_len, seq.key_mask)

        return self.drop(index, seq, keep, scores)


def _drops_within_tokens(record: dict) -> str | None:
    if sum(record["drop"]) > record["visual_tokens"]:
        return f"drop sums to {sum(record['drop'])}, more than the {record['visual_tokens']} visual_tokens"
    return None


@register
class FitPrune(Schedule):
    name = "fitprune"
    summary = "drop[l] image tokens after layer l's attention, by head-max text x visual attention"
    # drop[l]: tokens dropped at layer l, for `visual_tokens` entering the LLM (scaled to other counts).
    fields = {"drop": Field(ListOf(COUNT, min_length=1)), "visual_tokens": Field(Int(1))}
    rules = (_drops_within_tokens,)
    position_policy = "original"
    calibration = "data"

    def check_depth(self, spec: ScheduleSpec, num_layers: int) -> None:
        if len(spec.drop) != num_layers:
            raise self.error(f"recipe has {len(spec.drop)} layers, the model has {num_layers}")

    def stage_starts(self, spec: ScheduleSpec, num_layers: int) -> list[int]:
        return [0] + [layer + 1 for layer in range(num_layers - 1) if spec.drop[layer] > 0]

    def tokens_per_layer(self, spec: ScheduleSpec, n: int, num_layers: int) -> list[tuple[int, int]]:
        plan, current = [], n
        for layer in range(num_layers):
            after = fitprune_kept(spec, layer, n)
            plan.append((current, after))
            current = after
        return plan

    def prefill_hook(self, spec: ScheduleSpec, image_len: int, replay=None) -> FitPruneHook:
        return FitPruneHook(spec, image_len, replay)
