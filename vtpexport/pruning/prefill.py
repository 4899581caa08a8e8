"""The decoder prefill's per-layer hook points, and the image-token drop every schedule shares.

`Decoder.prefill_layer` calls, for layer `index`:
  before_layer   -> the sequence entering the layer (a drop before the layer: PyramidDrop)
  attention_bias -> the additive attention bias (a training mask, say)
  after_attention-> (sequence, rows) with rows the kept rows of the attention output, or None
                    (a drop after attention, before o_proj: FitPrune)
  after_layer    -> the sequence leaving the layer (a drop after the layer: FastV)
The objects passed in are the decoder, its `Sequence` and its `LayerAttention`; this module only
calls their methods, so it sits below the graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .ops import topk_ascending

if TYPE_CHECKING:  # annotations only: the graph imports this module, not the reverse
    from ..graph.decoder import Decoder, LayerAttention, Sequence
    from .registry import ScheduleSpec


class PrefillHook:
    """Callbacks of one prefill. This base does nothing: with it the prefill prunes nothing."""

    def __init__(self) -> None:
        self.kept_ids: dict[int, Tensor] = {}  # layer of each drop -> original indices of the kept image tokens

    def before_layer(self, decoder: Decoder, index: int, seq: Sequence) -> Sequence:
        return seq

    def attention_bias(self, index: int, seq: Sequence, bias: Tensor) -> Tensor:
        return bias

    def after_attention(
        self, decoder: Decoder, index: int, seq: Sequence, attention: LayerAttention
    ) -> tuple[Sequence, Tensor | None]:
        return seq, None

    def after_layer(self, decoder: Decoder, index: int, seq: Sequence, attention: LayerAttention) -> Sequence:
        return seq


class ImageDropHook(PrefillHook):
    """A schedule's hook: keeps the top-scoring image tokens at its layers, or, with `replay`
    (an earlier prefill's `kept_ids`), the same tokens again without scoring."""

    def __init__(self, spec: ScheduleSpec, image_len: int, replay: dict[int, Tensor] | None = None):
        super().__init__()
        self.spec = spec
        self.image_len = image_len  # N: image tokens entering the LLM, what kept counts are relative to
        self.replay = replay
        self.renumber = spec.position_policy == "renumbered"

    @property
    def scoring(self) -> bool:
        return self.replay is None

    def drop(self, index: int, seq: Sequence, keep: int, scores: Callable[[], Tensor]) -> tuple[Sequence, Tensor]:
        """Keep `keep` image tokens, the top of `scores()` [B, n] (called only when scoring);
        returns the new sequence and the kept rows of the old one."""
        # No schedule keeps more than the tokens left, but the exporter cannot prove it for counts
        # like PyramidDrop's floor(N lambda^s) after floor(N lambda^(s-1)) at a calibrated lambda
        # (0.577, say) and fails; the minimum, the same number, makes topk's k <= n evident to it.
        keep = torch.sym_min(keep, seq.image_len)
        return self.drop_chosen(index, seq, lambda: topk_ascending(scores(), keep))

    def drop_chosen(self, index: int, seq: Sequence, choose: Callable[[], Tensor]) -> tuple[Sequence, Tensor]:
        """Keep the image tokens `choose()` [B, k] (ascending indices into the image part; called
        only when scoring); returns the new sequence and the kept rows of the old one."""
        if self.scoring:
            kept = choose()
        else:
            kept = torch.searchsorted(seq.image_ids.contiguous(), self.replay[index])
        seq, rows = seq.keep_image(kept, self.renumber)
        self.kept_ids[index] = seq.image_ids
        return seq, rows
