"""CLIP's text tower and its two projections into the joint image-text space.

Recoverable Compression scores each image patch by its similarity to the question in CLIP's
joint space. LLaVA checkpoints carry only the vision tower, so the text tower, its
`text_projection` and the vision side's `visual_projection` come from the CLIP checkpoint the
LLaVA vision tower was taken from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .vision import LayerNorm, VisionBlock


@dataclass(frozen=True)
class ClipTextArgs:
    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    max_position_embeddings: int = 77
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    projection_dim: int = 768
    vision_hidden_size: int = 1024  # width of the vision tower `visual_projection` reads
    # transformers' pooling rule: eos_token_id == 2 marks old configs, whose EOS is the
    # highest id in the sequence; otherwise the first occurrence of eos_token_id.
    eos_token_id: int = 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


class ClipTextEncoder(nn.Module):
    def __init__(self, args: ClipTextArgs):
        super().__init__()
        self.args = args
        d = args.hidden_size
        self.token_embedding = nn.Embedding(args.vocab_size, d)
        self.position_embedding = nn.Embedding(args.max_position_embeddings, d)
        self.layers = nn.ModuleList(VisionBlock(args, causal=True) for _ in range(args.num_layers))
        self.final_layer_norm = LayerNorm(d, eps=args.layer_norm_eps)
        self.text_projection = nn.Linear(d, args.projection_dim, bias=False)
        self.visual_projection = nn.Linear(args.vision_hidden_size, args.projection_dim, bias=False)

    def forward(self, input_ids: Tensor) -> Tensor:
        """Token ids [B, S] (right-padded, each row holding its EOS) -> text embeddings [B, P]."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.token_embedding(input_ids) + self.position_embedding(positions)
        for layer in self.layers:
            x, _ = layer(x)
        x = self.final_layer_norm(x)
        if self.args.eos_token_id == 2:
            eos = input_ids.argmax(dim=-1)
        else:
            eos = (input_ids == self.args.eos_token_id).int().argmax(dim=-1)
        pooled = x[torch.arange(x.shape[0], device=x.device), eos]
        return self.text_projection(pooled)
