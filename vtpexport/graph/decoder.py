"""A Llama / Mistral-style decoder: RMSNorm, RoPE at arbitrary positions, GQA, SwiGLU.

The prefill runs each layer through a `PrefillHook` (pruning/prefill.py): a schedule's hook
scores and drops image tokens at the points its method declares; calibration and training
use the same hook points. KV caches are plain tensors. With pruning each layer keeps its
own cache length, so every layer's cache carries its own key mask and RoPE positions.

A prefill may continue after past caches: a decode step is the prefill of a one-token
sequence after them, so one exported graph serves both the prompt and every step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from ..pruning.ops import gather_tokens
from ..pruning.prefill import PrefillHook
from ..pruning.registry import ScheduleSpec
from .args import TextArgs
from .attention import fused_attention, score_logits
from .vision import activation


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in fp32 whatever the model dtype, as the reference implementation does.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_cos_sin(position_ids: Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos/sin tables [B, S, Dh] for integer positions [B, S], computed in fp32."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=position_ids.device).float() / head_dim
    inv_freq = 1.0 / (theta**exponent)
    freqs = position_ids.float()[..., None] * inv_freq  # [B, S, Dh/2]
    angles = torch.cat([freqs, freqs], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [B, H, S, Dh]; cos/sin [B, S, Dh]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def attention_bias(
    key_mask: Tensor, query_positions: Tensor, key_positions: Tensor, sliding_window: int | None, dtype: torch.dtype
) -> Tensor:
    """Additive mask [B, 1, Sq, Sk]: a query sees valid keys at positions <= its own.

    key_mask [B, Sk] (1 = real token); positions are the RoPE positions of queries [B, Sq]
    and keys [B, Sk]. Using positions rather than indices lets pruned sequences with gaps
    keep causality.
    """
    allowed = key_positions[:, None, :] <= query_positions[:, :, None]
    if sliding_window is not None:
        allowed = allowed & (query_positions[:, :, None] - key_positions[:, None, :] < sliding_window)
    allowed = allowed & key_mask[:, None, :].bool()
    # A finite minimum keeps fully masked (padding) query rows free of NaN.
    bias = torch.zeros(allowed.shape, dtype=dtype, device=key_mask.device)
    return bias.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


class Attention(nn.Module):
    def __init__(self, args: TextArgs):
        super().__init__()
        self.num_heads = args.num_heads
        self.num_kv_heads = args.num_kv_heads
        self.head_dim = args.head_dim
        d = args.hidden_size
        self.q_proj = nn.Linear(d, args.num_heads * args.head_dim, bias=False)
        self.k_proj = nn.Linear(d, args.num_kv_heads * args.head_dim, bias=False)
        self.v_proj = nn.Linear(d, args.num_kv_heads * args.head_dim, bias=False)
        self.o_proj = nn.Linear(args.num_heads * args.head_dim, d, bias=False)

    def heads(self, x: Tensor, num_heads: int) -> Tensor:
        b, s, _ = x.shape  # [B, S, H * Dh] -> [B, H, S, Dh]
        return x.view(b, s, num_heads, self.head_dim).transpose(1, 2)

    def query(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """q [B, H, S, Dh] of the rows x [B, S, D], RoPE applied (cos/sin of those rows)."""
        return apply_rope(self.heads(self.q_proj(x), self.num_heads), cos, sin)

    def key(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """k [B, H_kv, S, Dh] of the rows x [B, S, D], RoPE applied."""
        return apply_rope(self.heads(self.k_proj(x), self.num_kv_heads), cos, sin)

    def project(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q [B, H, S, Dh], k and v [B, H_kv, S, Dh], RoPE applied."""
        return self.query(x, cos, sin), self.key(x, cos, sin), self.heads(self.v_proj(x), self.num_kv_heads)

    def logits(self, q: Tensor, k: Tensor, bias: Tensor) -> Tensor:
        """fp32 attention logits [B, H, Sq, Sk] of queries q [B, H, Sq, Dh] over keys k [B, H_kv, Sk, Dh]
        (pruning scores: only the rows they read, beside the layer's fused attention)."""
        return score_logits(q, k, bias)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
        """Attention output before o_proj [B, S, H * Dh], fused, in the network's dtype."""
        return fused_attention(q, k, v, bias).transpose(1, 2).flatten(2)


class FeedForward(nn.Module):
    def __init__(self, args: TextArgs):
        super().__init__()
        self.gate_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.up_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.hidden_size, bias=False)
        self.act = activation(args.hidden_act)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, args: TextArgs):
        super().__init__()
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.self_attn = Attention(args)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.mlp = FeedForward(args)

    def finish(self, x: Tensor, attn: Tensor) -> Tensor:
        """Residual add of o_proj(attention), then the MLP block."""
        x = x + self.self_attn.o_proj(attn)
        return x + self.mlp(self.post_attention_layernorm(x))


@dataclass
class LayerCache:
    """One layer's KV cache and what each cached key is."""

    key: Tensor  # [B, H_kv, S_l, Dh]
    value: Tensor
    key_mask: Tensor  # [B, S_l], 1 = real token
    key_positions: Tensor  # [B, S_l], RoPE position


@dataclass
class Sequence:
    """The prefill sequence [prefix | image (image_len) | text] as it moves through layers."""

    x: Tensor  # [B, S, D]
    key_mask: Tensor  # [B, S]
    positions: Tensor  # [B, S]
    image_ids: Tensor  # [B, image_len]: index of each remaining image token in the original image
    image_start: int
    image_len: int

    def keep_image(self, kept: Tensor, renumber: bool) -> tuple[Sequence, Tensor]:
        """Keep image tokens `kept` [B, k] (ascending); return the new sequence and the row index."""
        b, s = self.key_mask.shape
        end = self.image_start + self.image_len
        prefix = torch.arange(self.image_start, device=kept.device)[None].expand(b, -1)
        text = torch.arange(end, s, device=kept.device)[None].expand(b, -1)
        rows = torch.cat([prefix, kept + self.image_start, text], dim=1)
        key_mask = torch.gather(self.key_mask, 1, rows)
        positions = (key_mask.cumsum(-1) - 1).clamp(min=0) if renumber else torch.gather(self.positions, 1, rows)
        image_ids = torch.gather(self.image_ids, 1, kept)
        sequence = Sequence(
            gather_tokens(self.x, rows), key_mask, positions, image_ids, self.image_start, kept.shape[1]
        )
        return sequence, rows


@dataclass
class LayerAttention:
    """One prefill layer's attention, as the hook's `after_attention` / `after_layer` see it."""

    q: Tensor  # [B, H, S, Dh], RoPE applied
    k: Tensor  # [B, H_kv, S, Dh], RoPE applied
    v: Tensor  # [B, H_kv, S, Dh]
    bias: Tensor  # [B, 1, S, S]
    output: Tensor  # [B, S, H * Dh] before o_proj


@dataclass
class PrefillResult:
    hidden: Tensor  # [B, D] final-normed hidden state of the last position
    caches: list[LayerCache]
    image_ids: list[Tensor]  # per layer, [B, n_l]: original indices of the image tokens it attended
    kept_ids: dict[int, Tensor]  # layer of each drop -> original indices of the image tokens kept there


@dataclass
class PrefillOutput:
    logits: Tensor  # [B, V] at the last position
    caches: list[LayerCache]
    image_ids: list[Tensor]  # per layer, original indices of the image tokens it attended
    kept_ids: dict[int, Tensor]  # layer of each drop -> original indices of the tokens kept there


class Decoder(nn.Module):
    def __init__(self, args: TextArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(args) for _ in range(args.num_layers))
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def prompt_sequence(
        self,
        prefix_ids: Tensor,
        image_embeds: Tensor,
        suffix_ids: Tensor,
        prefix_mask: Tensor,
        image_mask: Tensor,
        suffix_mask: Tensor,
    ) -> Sequence:
        """The [prefix | image | suffix] sequence entering the first layer.

        prefix/suffix ids [B, P] / [B, T], image_embeds [B, N, D]; masks 1 = real token.
        Positions count real tokens only, so padding anywhere leaves the answer unchanged.
        """
        dtype = self.embed_tokens.weight.dtype
        embeds = torch.cat([self.embed_tokens(prefix_ids), image_embeds.to(dtype), self.embed_tokens(suffix_ids)], 1)
        key_mask = torch.cat([prefix_mask, image_mask, suffix_mask], dim=1).long()
        positions = (key_mask.cumsum(-1) - 1).clamp(min=0)
        n = image_embeds.shape[1]
        image_ids = torch.arange(n, device=embeds.device)[None].expand(embeds.shape[0], n)
        return Sequence(embeds, key_mask, positions, image_ids, prefix_ids.shape[1], n)

    def prefill_prompt(
        self,
        prefix_ids: Tensor,
        image_embeds: Tensor,
        suffix_ids: Tensor,
        prefix_mask: Tensor,
        image_mask: Tensor,
        suffix_mask: Tensor,
        schedule: ScheduleSpec | None = None,
        replay: dict[int, Tensor] | None = None,
        past: list[LayerCache] | None = None,
    ) -> PrefillOutput:
        """Prefill of a prompt (see `prompt_sequence`) with the schedule's pruning.

        replay: `kept_ids` of an earlier prefill, to keep the same image tokens again.
        past: per-layer caches the prompt follows (a decode step: a one-token suffix, no image).
        """
        seq = self.prompt_sequence(prefix_ids, image_embeds, suffix_ids, prefix_mask, image_mask, suffix_mask)
        result = self.prefill(seq, schedule, replay, past=past)
        return PrefillOutput(self.lm_head(result.hidden), result.caches, result.image_ids, result.kept_ids)

    def decode_step(self, token_ids: Tensor, caches: list[LayerCache]) -> PrefillOutput:
        """One step: token_ids [B, 1] after the caches of a prefill (or of earlier steps)."""
        hidden, caches = self.decode(self.embed_tokens(token_ids), caches)
        return PrefillOutput(self.lm_head(hidden), caches, [], {})

    def rope_and_bias(self, positions: Tensor, key_mask: Tensor, key_positions: Tensor, dtype: torch.dtype):
        """cos/sin [B, Sq, Dh] of the query positions and the additive bias [B, 1, Sq, Sk]."""
        a = self.args
        cos, sin = rope_cos_sin(positions, a.head_dim, a.rope_theta, dtype)
        return cos, sin, attention_bias(key_mask, positions, key_positions, a.sliding_window, dtype)

    def sequence_rope_and_bias(self, seq: Sequence):
        """`rope_and_bias` of a prefill sequence attending to itself."""
        return self.rope_and_bias(seq.positions, seq.key_mask, seq.positions, seq.x.dtype)

    def prefill(
        self,
        seq: Sequence,
        schedule: ScheduleSpec | None = None,
        replay: dict[int, Tensor] | None = None,
        hook: PrefillHook | None = None,
        past: list[LayerCache] | None = None,
    ) -> PrefillResult:
        """Run every layer over the prompt, pruning image tokens as `schedule` says.

        replay: the `kept_ids` of an earlier prefill; the same image tokens are kept at the same
        layers instead of being scored again (to check decoding against full re-runs).
        hook: run these per-layer callbacks instead of the schedule's (calibration, training).
        past: per-layer caches the sequence follows (see `prefill_layer`); the caches returned
        hold them too.
        """
        if hook is None:
            hook = schedule.declaration.prefill_hook(schedule, seq.image_len, replay) if schedule else PrefillHook()
        caches, image_ids = [], []
        for index in range(len(self.layers)):
            seq, cache, attended = self.prefill_layer(index, seq, hook, past[index] if past else None)
            caches.append(cache)
            image_ids.append(attended)
        return PrefillResult(self.norm(seq.x[:, -1]), caches, image_ids, dict(hook.kept_ids))

    def run_layers(self, seq: Sequence, hook: PrefillHook) -> Sequence:
        """Every layer over `seq` with the hook's callbacks; the sequence leaving the last layer
        (every position, before the final norm) and no caches (calibration statistics, training)."""
        for index in range(len(self.layers)):
            seq, _, _ = self.prefill_layer(index, seq, hook)
        return seq

    def prefill_layer(
        self, index: int, seq: Sequence, hook: PrefillHook, past: LayerCache | None = None
    ) -> tuple[Sequence, LayerCache, Tensor]:
        """Layer `index` of the prefill with the hook's callbacks; `seq` is not modified.

        past: this layer's cache the sequence follows. Its tokens take the positions right after
        the cache's last one (each layer its own: renumbered stages have their own offsets) and
        attend to the cached keys too; the hook's scores see only the sequence, so a sequence
        after a past carries no image (a decode step).

        Returns the sequence leaving the layer, the layer's cache (the past, then every token that
        entered its attention) and the original indices of the image tokens that attention saw.
        """
        seq, attention, cache = self.layer_attention(index, seq, hook, past)
        attended = seq.image_ids
        seq, rows = hook.after_attention(self, index, seq, attention)
        seq = self.finish_layer(index, seq, attention.output, rows)
        return hook.after_layer(self, index, seq, attention), cache, attended

    def layer_attention(
        self, index: int, seq: Sequence, hook: PrefillHook, past: LayerCache | None = None
    ) -> tuple[Sequence, LayerAttention, LayerCache]:
        """The first half of `prefill_layer`: the sequence entering layer `index` (after the
        hook's `before_layer`), its attention (output before o_proj) and the layer's cache."""
        layer = self.layers[index]
        seq = hook.before_layer(self, index, seq)
        positions, key_mask, key_positions = seq.positions, seq.key_mask, seq.positions
        if past is not None:
            positions = positions + next_position(past.key_positions)
            key_mask = torch.cat([past.key_mask, key_mask], dim=1)
            key_positions = torch.cat([past.key_positions, positions], dim=1)
        cos, sin, bias = self.rope_and_bias(positions, key_mask, key_positions, seq.x.dtype)
        bias = hook.attention_bias(index, seq, bias)
        q, k, v = layer.self_attn.project(layer.input_layernorm(seq.x), cos, sin)
        if past is not None:
            k, v = torch.cat([past.key, k], dim=2), torch.cat([past.value, v], dim=2)
        output = layer.self_attn.attend(q, k, v, bias)
        return seq, LayerAttention(q, k, v, bias, output), LayerCache(k, v, key_mask, key_positions)

    def finish_layer(self, index: int, seq: Sequence, output: Tensor, rows: Tensor | None) -> Sequence:
        """The second half of `prefill_layer`: o_proj and the MLP of layer `index` on `seq`, the
        sequence after any drop after attention, whose rows of the attention `output` (before
        o_proj) are `rows` (None: every row). The cache kept every token; o_proj and the MLP run
        on the rest."""
        output = output if rows is None else gather_tokens(output, rows)
        return replace(seq, x=self.layers[index].finish(seq.x, output))

    def decode(self, embeds: Tensor, caches: list[LayerCache]) -> tuple[Tensor, list[LayerCache]]:
        """One token [B, 1, D] after a (possibly pruned) prefill; returns hidden [B, D] and caches:
        the prefill of that one token after the caches, pruning nothing."""
        b = embeds.shape[0]
        ones = torch.ones(b, 1, dtype=torch.long, device=embeds.device)
        no_image = torch.zeros(b, 0, dtype=torch.long, device=embeds.device)
        seq = Sequence(embeds, ones, ones - 1, no_image, 0, 0)
        result = self.prefill(seq, hook=PrefillHook(), past=caches)
        return result.hidden, result.caches


def next_position(key_positions: Tensor) -> Tensor:
    """[B, 1]: the position after a cache's last one, 0 for an empty cache [B, 0]."""
    before_start = key_positions.new_full((key_positions.shape[0], 1), -1)
    return torch.cat([key_positions, before_start], dim=1).amax(dim=-1, keepdim=True) + 1
