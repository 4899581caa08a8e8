"""FitPrune inference scoring (Ye et al.): which visual tokens a layer drops.

After the layer's attention: reduce the softmax probabilities over heads with max, then
score_j = (attention mass text rows give to j) * (mean attention visual rows give to j).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .ops import masked_scores


def fitprune_scores(probs: Tensor, image_start: int, image_len: int, key_mask: Tensor) -> Tensor:
    """Scores [B, n] of the image tokens.

    probs [B, H, S, S] (fp32) of the layer; the sequence is [prefix | image (n) | text];
    key_mask [B, S] marks real tokens. Text rows are the tokens after the image.
    """
    image_end = image_start + image_len
    reduced = probs.amax(dim=1)  # [B, S, S]
    to_image = reduced[:, :, image_start:image_end]  # [B, S, n]
    text_valid = key_mask[:, image_end:].to(probs.dtype)
    image_valid = key_mask[:, image_start:image_end].to(probs.dtype)
    text_mass = (to_image[:, image_end:] * text_valid[..., None]).sum(dim=1)
    visual_rows = (to_image[:, image_start:image_end] * image_valid[..., None]).sum(dim=1)
    visual_mean = visual_rows / image_valid.sum(dim=1, keepdim=True).clamp(min=1)
    return masked_scores(text_mass * visual_mean, key_mask[:, image_start:image_end])


def materialised_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """Attention with the fp32 probabilities returned: output [B, H, S, Dh], probs [B, H, S, Sk]."""
    scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5 + bias.float()
    probs = torch.softmax(scores, dim=-1)
    return probs.to(v.dtype) @ v, probs
