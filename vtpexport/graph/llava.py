"""The LLaVA graph: vision tower -> projector -> (anyres packing) -> decoder.

Inputs are split the way the exported graphs take them: prompt tokens before the image
(prefix), image embeddings, prompt tokens after the image (suffix), each with a mask so
that batches of different lengths pad inside each segment.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .args import LlavaArgs
from .decoder import Decoder, KVCache
from .vision import Projector, VisionTower


@dataclass
class PrefillOutput:
    logits: Tensor  # [B, V] at the last position
    present: KVCache
    key_mask: Tensor  # [B, S] which cached keys are real tokens
    key_positions: Tensor  # [B, S] RoPE position of each cached key


class LlavaGraph(nn.Module):
    def __init__(self, args: LlavaArgs):
        super().__init__()
        self.args = args
        self.vision = VisionTower(args.vision)
        self.projector = Projector(args)
        self.decoder = Decoder(args.text)
        if args.family == "llava-next":
            self.image_newline = nn.Parameter(torch.empty(args.text.hidden_size))

    def tile_features(self, pixel_values: Tensor) -> Tensor:
        """[T, C, H, W] image tiles -> projected features [T, P, D_text]."""
        out = self.vision(pixel_values, feature_layer=self.args.feature_layer_index)
        features = out.features
        if self.args.vision_feature_select_strategy == "default":
            features = features[:, 1:]
        return self.projector(features)

    def pack_tiles(self, tile_features: Tensor, layout: Tensor) -> Tensor:
        """LLaVA-NeXT: gather tile features (plus image_newline) into the image's token sequence.

        layout [n] indexes the rows of cat(tile_features.flatten(0, 1), image_newline); it is
        computed on the host from the image size (`models.anyres.packing_index`).
        """
        rows = torch.cat([tile_features.flatten(0, 1), self.image_newline[None].to(tile_features.dtype)])
        return rows.index_select(0, layout)

    def embed(self, token_ids: Tensor) -> Tensor:
        return self.decoder.embed_tokens(token_ids)

    def logits(self, hidden: Tensor) -> Tensor:
        return self.decoder.lm_head(hidden)

    def prefill(
        self,
        prefix_ids: Tensor,
        image_embeds: Tensor,
        suffix_ids: Tensor,
        prefix_mask: Tensor,
        image_mask: Tensor,
        suffix_mask: Tensor,
    ) -> PrefillOutput:
        """prefix/suffix ids [B, P] / [B, T], image_embeds [B, N, D]; masks 1 = real token.

        Positions count real tokens only, so padding anywhere leaves the answer unchanged.
        """
        embeds = torch.cat(
            [self.embed(prefix_ids), image_embeds.to(self.decoder.embed_tokens.weight.dtype), self.embed(suffix_ids)],
            dim=1,
        )
        key_mask = torch.cat([prefix_mask, image_mask, suffix_mask], dim=1).long()
        positions = (key_mask.cumsum(-1) - 1).clamp(min=0)
        hidden, present = self.decoder(embeds, positions, key_mask, positions)
        return PrefillOutput(self.logits(hidden[:, -1]), present, key_mask, positions)

    def decode(self, token_ids: Tensor, past: KVCache, key_mask: Tensor, key_positions: Tensor) -> PrefillOutput:
        """One step: token_ids [B, 1] after a cache described by key_mask / key_positions."""
        position = key_positions.max(dim=-1, keepdim=True).values + 1  # [B, 1]
        key_mask = torch.cat([key_mask, torch.ones_like(position)], dim=1)
        key_positions = torch.cat([key_positions, position], dim=1)
        hidden, present = self.decoder(self.embed(token_ids), position, key_mask, key_positions, past)
        return PrefillOutput(self.logits(hidden[:, -1]), present, key_mask, key_positions)
