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
from ..pruning.ops import gather_tokens, iqr_outliers
from ..pruning.prumerge import adaptive_count, merge, plus_samples, prumerge_scores, select_outliers
from ..recipe import ScheduleSpec, SelectorSpec
from .args import LlavaArgs
from .decoder import Decoder, LayerCache, Sequence
from .vision import Projector, VisionTower


@dataclass
class ImageTokens:
    embeds: Tensor  # [B, k, D_text] visual tokens entering the LLM
    patch_index: Tensor  # [B, k] raster index of each token's patch (-1: PruMerge's merged token)


@dataclass
class PrefillOutput:
    logits: Tensor  # [B, V] at the last position
    caches: list[LayerCache]
    image_ids: list[Tensor]  # per layer, original indices of the image tokens it attended
    kept_ids: dict[int, Tensor]  # layer of each drop -> original indices of the tokens kept there


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
        return self.projector(self._select_strategy(out.features))

    def _select_strategy(self, features: Tensor) -> Tensor:
        return features[:, 1:] if self.args.vision_feature_select_strategy == "default" else features

    def select_image_tokens(self, pixel_values: Tensor, selector: SelectorSpec) -> ImageTokens:
        """LLaVA-1.5 images [B, C, H, W] -> the selector's visual tokens, projected.

        Adaptive PruMerge counts are per image, so those run one image at a time (B = 1).
        """
        a = self.args
        feature_layer = a.feature_layer_index
        method = selector.method
        out = self.vision(
            pixel_values,
            feature_layer=feature_layer,
            attn_layer=feature_layer if method.startswith("fopru") else None,
            qk_layer=feature_layer + 1 if method.startswith("prumerge") else None,
        )
        patches = out.features[:, 1:]  # selectors score patches; CLS never enters the LLM
        n, grid = a.vision.num_patches, a.vision.grid_size
        if method.startswith("fopru"):
            significance = fopru_significance(out.attn_probs)
            keep = selector.output_tokens(n, grid)
            kept = (
                fopru_rank(significance, keep)
                if method == "fopru-rank"
                else fopru_row(significance, grid, keep // grid)
            )
            return ImageTokens(self.projector(gather_tokens(patches, kept)), kept)
        scores = prumerge_scores(out.query, out.key)
        if selector.tokens is not None:
            kept = select_outliers(scores, min(selector.tokens, n), selector.order)
        else:
            outliers = int(adaptive_count(scores)[0])
            if method == "prumerge":
                kept = select_outliers(scores, outliers, selector.order)
            else:
                chosen = iqr_outliers(scores)
                chosen[:, plus_samples(n, outliers)] = True
                kept = chosen[0].nonzero().flatten()[None]
        merged = merge(patches, out.key[:, 1:], scores, kept)
        index = torch.cat([kept, torch.full_like(kept[:, :1], -1)], dim=1)
        return ImageTokens(self.projector(merged), index)

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
        schedule: ScheduleSpec | None = None,
        replay: dict[int, Tensor] | None = None,
    ) -> PrefillOutput:
        """prefix/suffix ids [B, P] / [B, T], image_embeds [B, N, D]; masks 1 = real token.

        Positions count real tokens only, so padding anywhere leaves the answer unchanged.
        replay: `kept_ids` of an earlier prefill, to keep the same image tokens again.
        """
        dtype = self.decoder.embed_tokens.weight.dtype
        embeds = torch.cat([self.embed(prefix_ids), image_embeds.to(dtype), self.embed(suffix_ids)], dim=1)
        key_mask = torch.cat([prefix_mask, image_mask, suffix_mask], dim=1).long()
        positions = (key_mask.cumsum(-1) - 1).clamp(min=0)
        n = image_embeds.shape[1]
        image_ids = torch.arange(n, device=embeds.device)[None].expand(embeds.shape[0], n)
        seq = Sequence(embeds, key_mask, positions, image_ids, prefix_ids.shape[1], n)
        result = self.decoder.prefill(seq, schedule, replay)
        return PrefillOutput(self.logits(result.hidden), result.caches, result.image_ids, result.kept_ids)

    def decode(self, token_ids: Tensor, caches: list[LayerCache]) -> PrefillOutput:
        """One step: token_ids [B, 1] after the caches of a prefill (or of earlier steps)."""
        hidden, caches = self.decoder.decode(self.embed(token_ids), caches)
        return PrefillOutput(self.logits(hidden), caches, [], {})
