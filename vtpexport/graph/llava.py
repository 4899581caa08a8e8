"""The LLaVA graph: vision tower -> projector -> (anyres packing) -> decoder.

Inputs are split the way the exported graphs take them: prompt tokens before the image
(prefix), image embeddings, prompt tokens after the image (suffix), each with a mask so
that batches of different lengths pad inside each segment.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..pruning.fopru import fopru_rank, fopru_row, fopru_significance
from ..pruning.ops import data_dependent_count, gather_tokens, iqr_outliers
from ..pruning.prumerge import (
    adaptive_count,
    merge,
    plus_fixed_budget,
    plus_samples,
    prumerge_scores,
    select_outliers,
)
from ..pruning.recover import recover_adaptive, recover_fixed, text_affinity
from ..recipe import SelectorSpec
from .args import LlavaArgs
from .decoder import Decoder, LayerCache, PrefillOutput
from .hr_vision import MultiPathVision
from .text_encoder import patch_text_relevance
from .vision import Projector, VisionTower


@dataclass
class ImageTokens:
    embeds: Tensor  # [B, k, D_text] visual tokens entering the LLM
    patch_index: Tensor  # [B, k] raster index of each token's patch (-1: PruMerge's merged token)


class LlavaGraph(nn.Module):
    def __init__(self, args: LlavaArgs):
        super().__init__()
        self.args = args
        self.vision = MultiPathVision(args) if args.multipath else VisionTower(args.vision)
        self.projector = Projector(args)
        self.decoder = Decoder(args.text)
        if args.family == "llava-next":
            self.image_newline = nn.Parameter(torch.empty(args.text.hidden_size))

    def tile_features(self, pixel_values: Tensor) -> Tensor:
        """[T, C, H, W] image tiles -> projected features [T, P, D_text]."""
        out = self.vision(pixel_values, feature_layer=self.args.feature_layer_index)
        return self.projector(self._select_strategy(out.features))

    def _select_strategy(self, features: Tensor) -> Tensor:
        drop_cls = self.args.cls_token and self.args.vision_feature_select_strategy == "default"
        return features[:, 1:] if drop_cls else features

    def select_image_tokens(
        self,
        pixel_values: Tensor,
        selector: SelectorSpec,
        text_embeds: Tensor | None = None,
        visual_projection: nn.Module | None = None,
    ) -> ImageTokens:
        """LLaVA-1.5 / LLaVA-HR images [B, C, H, W] -> the selector's visual tokens, projected.

        Adaptive counts are per image, so those run one image at a time (B = 1). Text-guided
        selectors take the question's CLIP text embeddings [B, P] and CLIP's visual projection.
        """
        a = self.args
        feature_layer = a.feature_layer_index
        method = selector.method
        if selector.text_guided and (text_embeds is None or visual_projection is None):
            raise ValueError(f"selector {method} needs the question's CLIP text embeddings")
        out = self.vision(
            pixel_values,
            feature_layer=feature_layer,
            attn_layer=feature_layer if method.startswith("fopru") else None,
            qk_layer=None if method.startswith("fopru") else feature_layer + 1,
            last_layer=selector.text_guided,
        )
        cls_tokens = int(a.cls_token)
        patches = out.features[:, cls_tokens:]  # selectors score patches; CLS never enters the LLM
        n, grid = a.vision.num_patches, a.vision.grid_size
        if method.startswith("fopru"):
            significance = fopru_significance(out.attn_probs, cls_tokens)
            keep = selector.output_tokens(n, grid)
            kept = (
                fopru_rank(significance, keep)
                if method == "fopru-rank"
                else fopru_row(significance, grid, keep // grid)
            )
            return ImageTokens(self.projector(gather_tokens(patches, kept)), kept)
        scores = prumerge_scores(out.query, out.key)
        keys = out.key[:, 1:]
        if method == "recover":
            return self._recover(
                patches, keys, scores, out.last_hidden[:, 1:], text_embeds, visual_projection, selector
            )
        if selector.tokens is not None:
            budget = min(selector.tokens, n)
            kept = (
                select_outliers(scores, budget, selector.order)
                if method == "prumerge"
                else plus_fixed_budget(scores, budget)
            )
        else:
            outliers = data_dependent_count(adaptive_count(scores)[0], n)
            if method == "prumerge":
                kept = select_outliers(scores, outliers, selector.order)
            else:
                chosen = iqr_outliers(scores)
                chosen[:, plus_samples(n, outliers)] = True
                kept = chosen[0].nonzero().flatten()[None]
        merged = merge(patches, keys, scores, kept)
        index = torch.cat([kept, torch.full_like(kept[:, :1], -1)], dim=1)
        return ImageTokens(self.projector(merged), index)

    def _recover(self, patches, keys, scores, last_hidden, text_embeds, visual_projection, selector) -> ImageTokens:
        """Recoverable Compression: [selected patches | merged centres | aggregate], see pruning/recover.py."""
        patch_embeds = visual_projection(self.vision.post_layernorm(last_hidden))
        relevance = patch_text_relevance(text_embeds, patch_embeds)
        if selector.tokens is None:
            pick = recover_adaptive(scores, relevance)
        else:
            pick = recover_fixed(scores, relevance, selector.tokens, selector.text_tokens, selector.merge_tokens)
        bonus = text_affinity(relevance, text_embeds.shape[-1])
        merged = merge(patches, keys, scores, pick.centres, pool=pick.leftover, affinity_bonus=bonus)
        tokens = torch.cat([gather_tokens(patches, pick.selected), merged], dim=1)
        aggregate = torch.full_like(pick.selected[:, :1], -1)
        index = torch.cat([pick.selected, pick.centres, aggregate], dim=1)
        return ImageTokens(self.projector(tokens), index)

    def pack_tiles(self, tile_features: Tensor, layout: Tensor) -> Tensor:
        """LLaVA-NeXT: gather tile features (plus image_newline) into the image's token sequence.

        layout [n] indexes the rows of cat(tile_features.flatten(0, 1), image_newline); it is
        computed on the host from the image size (`models.anyres.packing_index`).
        """
        rows = torch.cat([tile_features.flatten(0, 1), self.image_newline[None].to(tile_features.dtype)])
        return rows.index_select(0, layout)

    def prefill(self, *args, **kwargs) -> PrefillOutput:
        """See `Decoder.prefill_prompt`."""
        return self.decoder.prefill_prompt(*args, **kwargs)

    def decode(self, token_ids: Tensor, caches: list[LayerCache]) -> PrefillOutput:
        """See `Decoder.decode_step`."""
        return self.decoder.decode_step(token_ids, caches)
