"""The LLaVA graph: vision tower -> projector -> (anyres packing) -> decoder.

Inputs are split the way the exported graphs take them: prompt tokens before the image
(prefix), image embeddings, prompt tokens after the image (suffix), each with a mask so
that batches of different lengths pad inside each segment.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..pruning.ops import gather_tokens
from ..pruning.registry import SelectorInputs, SelectorSpec
from .args import LlavaArgs
from .decoder import Decoder, LayerCache, PrefillOutput
from .hr_vision import MultiPathVision
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
        if args.layout.tiled:
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
        return self._select(pixel_values, selector, text_embeds, visual_projection)

    def select_tile_tokens(
        self,
        tiles: Tensor,
        selector: SelectorSpec,
        patch_position: Tensor,
        newline_position: Tensor,
        packing_index: Tensor,
        text_embeds: Tensor | None = None,
        visual_projection: nn.Module | None = None,
    ) -> ImageTokens:
        """LLaVA-NeXT: one image's tiles [T, C, H, W] -> its pruned visual tokens [1, m, D_text],
        with the place [1, m] each had in the unpruned token sequence. A text-guided selector
        takes the question's CLIP text embeddings [1, P] (every tile reads the same question).

        The selector runs on each tile (a batch of T), among the patches unpadding keeps
        (patch_position [T, P] >= 0: their place in the unpruned sequence), `keep` per tile. The
        layout's packing_index [m] (host-computed from the image size, `AnyresTiles.
        selected_packing_index`) takes each tile's kept patches and every image_newline
        (newline_position [R]); they enter in the unpruned sequence's order.
        """
        valid = patch_position >= 0
        if text_embeds is not None:
            text_embeds = text_embeds.expand(tiles.shape[0], -1)
        selection = self._select(tiles, selector, text_embeds, visual_projection, valid)  # [T, K, D], [T, K]
        # Sequence positions as float sort keys (exact below 2^24; TensorRT's TopK takes no int64).
        position = patch_position.gather(1, selection.patch_index).float()
        # Each tile's kept patches that unpadding keeps first (in sequence order), then the rest,
        # which packing_index leaves out: a tile with fewer than `keep` such patches gives them all.
        position, order = torch.sort(position.masked_fill(position < 0, float("inf")), dim=-1)
        tokens = gather_tokens(selection.embeds, order).flatten(0, 1)
        newline = self.image_newline[None].to(tokens.dtype).expand(newline_position.shape[0], -1)
        rows = torch.cat([tokens, newline]).index_select(0, packing_index)
        keys = torch.cat([position.flatten(), newline_position.float()]).index_select(0, packing_index)
        keys, order = torch.sort(keys)
        return ImageTokens(rows.index_select(0, order)[None], keys.long()[None])

    def _select(
        self,
        pixel_values: Tensor,
        selector: SelectorSpec,
        text_embeds: Tensor | None = None,
        visual_projection: nn.Module | None = None,
        valid: Tensor | None = None,
    ) -> ImageTokens:
        a = self.args
        method = selector.declaration
        probe = method.probe
        if probe.question and (text_embeds is None or visual_projection is None):
            raise ValueError(f"selector {method.name} needs the question's CLIP text embeddings")
        feature_layer = a.feature_layer_index
        out = self.vision(
            pixel_values,
            feature_layer=feature_layer,
            attn_layer=feature_layer if probe.attention else None,
            qk_layer=feature_layer + 1 if probe.cls_qk else None,
            last_layer=probe.question and probe.question_layer == "last",
        )
        cls_tokens = int(a.cls_token)
        inputs = SelectorInputs(
            patches=out.features[:, cls_tokens:],  # selectors score patches; CLS never enters the LLM
            grid_size=a.vision.grid_size,
            cls_tokens=cls_tokens,
            attn_probs=out.attn_probs,
            query=out.query,
            key=out.key,
            text_embeds=text_embeds,
            valid=valid,
        )
        if probe.question:
            hidden = out.last_hidden if probe.question_layer == "last" else out.features
            inputs.patch_embeds = visual_projection(self.vision.post_layernorm(hidden[:, cls_tokens:]))
        if probe.projected:
            inputs.projected = self.projector(inputs.patches)
        selection = method.select(selector, inputs)
        embeds = selection.tokens if probe.projected else self.projector(selection.tokens)
        return ImageTokens(embeds, selection.patch_index)

    def pack_tiles(self, tile_features: Tensor, layout: Tensor) -> Tensor:
        """LLaVA-NeXT: gather tile features (plus image_newline) into the image's token sequence.

        layout [n] indexes the rows of cat(tile_features.flatten(0, 1), image_newline); it is
        computed on the host from the image size (`graph.layout.AnyresTiles.packing_index`).
        """
        rows = torch.cat([tile_features.flatten(0, 1), self.image_newline[None].to(tile_features.dtype)])
        return rows.index_select(0, layout)

    def prefill(self, *args, **kwargs) -> PrefillOutput:
        """See `Decoder.prefill_prompt`."""
        return self.decoder.prefill_prompt(*args, **kwargs)

    def decode(self, token_ids: Tensor, caches: list[LayerCache]) -> PrefillOutput:
        """See `Decoder.decode_step`."""
        return self.decoder.decode_step(token_ids, caches)
