"""FitPrune inference scoring (Ye et al.): which visual tokens a layer drops.

After the layer's attention: reduce the softmax probabilities over heads with max, then
score_j = (attention mass text rows give to j) * (mean attention visual rows give to j).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .ops import image_part, masked_scores, text_part


def fitprune_scores(probs: Tensor, image_start: int, image_len: int, key_mask: Tensor) -> Tensor:
    """Scores [B, n] of the image tokens.

    probs [B, H, S, S] (fp32) of the layer; the sequence is [prefix | image (n) | text];
    key_mask [B, S] marks real tokens. Text rows are the tokens after the image.
    """
    reduced = probs.amax(dim=1)  # [B, S, S]
    to_image = image_part(reduced, 2, image_start, image_len)  # [B, S, n]
    image_valid = image_part(key_mask, 1, image_start, image_len).to(probs.dtype)
    text_valid = text_part(key_mask, 1, image_start, image_len).to(probs.dtype)
    text_mass = (text_part(to_image, 1, image_start, image_len) * text_valid[..., None]).sum(dim=1)
    visual_rows = (image_part(to_image, 1, image_start, image_len) * image_valid[..., None]).sum(dim=1)
    visual_mean = visual_rows / image_valid.sum(dim=1, keepdim=True).clamp(min=1)
    return masked_scores(text_mass * visual_mean, image_valid)


def materialised_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """Attention with the fp32 probabilities returned: output [B, H, S, Dh], probs [B, H, S, Sk]."""
    scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5 + bias.float()
    probs = torch.softmax(scores, dim=-1)
    return probs.to(v.dtype) @ v, probs
