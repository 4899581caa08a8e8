"""PyramidDrop scoring (Xing et al.): at a stage boundary, the last prompt token's attention
over the image, computed with the next layer's norm and q/k projections."""

from __future__ import annotations

import torch
from torch import Tensor

from .ops import image_part, masked_scores


def pyramiddrop_scores(
    q_last: Tensor, k: Tensor, bias_last: Tensor, image_start: int, image_len: int, key_mask: Tensor
) -> Tensor:
    """Scores [B, n]: softmax over all keys of one query, mean over heads, image columns.

    q_last [B, H, 1, Dh] (RoPE applied), k [B, H, S, Dh] (all keys: the softmax normalises
    over every key, so they are all projected), bias_last [B, 1, 1, S].
    """
    logits = (q_last @ k.transpose(-1, -2)).float() * q_last.shape[-1] ** -0.5 + bias_last.float()
    probs = torch.softmax(logits, dim=-1).mean(dim=1)[:, 0]  # [B, S]
    image = image_part(probs, 1, image_start, image_len)
    return masked_scores(image, image_part(key_mask, 1, image_start, image_len))
