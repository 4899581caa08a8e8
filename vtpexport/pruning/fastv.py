"""FastV scoring (Chen et al.): layer K-1's attention of the last token over the image."""

from __future__ import annotations

from torch import Tensor

from .ops import image_part, masked_scores


def fastv_scores(last_row_probs: Tensor, image_start: int, image_len: int, key_mask: Tensor) -> Tensor:
    """last_row_probs [B, H, S] of the last query -> scores [B, n] (mean over heads)."""
    image = image_part(last_row_probs.mean(dim=1), 1, image_start, image_len)
    return masked_scores(image, image_part(key_mask, 1, image_start, image_len))
