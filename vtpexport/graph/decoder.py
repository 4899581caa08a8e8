"""A Llama / Mistral-style decoder: RMSNorm, RoPE at arbitrary positions, GQA, SwiGLU.

KV caches are plain tensors, one (key, value) pair per layer, each [B, H_kv, S, Dh].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .args import TextArgs
from .vision import activation

KVCache = list[tuple[Tensor, Tensor]]


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

    def project(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q [B, H, S, Dh], k and v [B, H_kv, S, Dh], RoPE applied."""
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
        """Attention output before o_proj, [B, S, H * Dh]."""
        groups = self.num_heads // self.num_kv_heads
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return y.transpose(1, 2).flatten(2)


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

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, bias: Tensor, past: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        q, k, v = self.self_attn.project(self.input_layernorm(x), cos, sin)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        x = x + self.self_attn.o_proj(self.self_attn.attend(q, k, v, bias))
        return x + self.mlp(self.post_attention_layernorm(x)), (k, v)


class Decoder(nn.Module):
    def __init__(self, args: TextArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(args) for _ in range(args.num_layers))
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def forward(
        self,
        inputs_embeds: Tensor,
        position_ids: Tensor,
        key_mask: Tensor,
        key_positions: Tensor,
        past: KVCache | None = None,
    ) -> tuple[Tensor, KVCache]:
        """Run all layers; return the final-normed hidden states [B, S, D] and the present KV.

        key_mask / key_positions [B, S_past + S] describe every key (past then new).
        """
        a = self.args
        cos, sin = rope_cos_sin(position_ids, a.head_dim, a.rope_theta, inputs_embeds.dtype)
        bias = attention_bias(key_mask, position_ids, key_positions, a.sliding_window, inputs_embeds.dtype)
        x = inputs_embeds
        present: KVCache = []
        for index, layer in enumerate(self.layers):
            x, kv = layer(x, cos, sin, bias, None if past is None else past[index])
            present.append(kv)
        return self.norm(x), present
