"""Attention of every layer whose probabilities nobody reads, in the network's dtype.

Eagerly it is PyTorch's fused kernel; exported, it is the form TensorRT fuses into one
multi-head-attention kernel (see `export/attention.py`): no fp32 Cast island around the
softmax, since the fused kernels accumulate the softmax in fp32 already. Pruning scores,
which do read probabilities, compute only the rows they need in fp32 with `score_probs`,
beside the layer's own fused attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def repeat_kv(x: Tensor, groups: int) -> Tensor:
    """[B, H_kv, S, Dh] -> [B, H_kv * groups, S, Dh] for grouped-query attention."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def fused_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
    """softmax(q k^T / sqrt(Dh) + bias) v: q [B, H, Sq, Dh], k / v [B, H_kv, Sk, Dh], bias
    broadcast to [B, H, Sq, Sk] (additive); output [B, H, Sq, Dh] in q's dtype."""
    groups = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, repeat_kv(k, groups), repeat_kv(v, groups), attn_mask=bias)


def score_logits(q: Tensor, k: Tensor, bias: Tensor | None = None) -> Tensor:
    """fp32 logits [B, H, Sq, Sk] of the query rows q [B, H, Sq, Dh] over keys k [B, H_kv, Sk, Dh]."""
    logits = (q @ repeat_kv(k, q.shape[1] // k.shape[1]).transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    return logits if bias is None else logits + bias.float()


def score_probs(q: Tensor, k: Tensor, bias: Tensor | None = None) -> Tensor:
    """fp32 probabilities [B, H, Sq, Sk] of the query rows q: what pruning scores read."""
    return torch.softmax(score_logits(q, k, bias), dim=-1)


def causal_bias(length: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Additive mask [S, S] hiding future keys (CLIP's text tower), finite so no row is all -inf."""
    future = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
    return torch.zeros(length, length, dtype=dtype, device=device).masked_fill(future, torch.finfo(dtype).min)
