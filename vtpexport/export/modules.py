"""The graphs we export, as thin modules over our one LlavaGraph with the recipe bound.

Inputs and outputs are flat tensors in the order `spec.py` declares, bound by its names; nothing here
computes anything the eager reference does not compute through the same methods.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..graph.decoder import LayerCache
from ..graph.llava import LlavaGraph
from ..graph.text_encoder import ClipTextEncoder
from ..recipe import Recipe
from .spec import (
    IMAGE_EMBEDS,
    LOGITS,
    PAST,
    PREFIX_IDS,
    PREFIX_MASK,
    PRESENT,
    SUFFIX_IDS,
    SUFFIX_MASK,
    GraphSpec,
    cache_name,
    stage_of_layer,
)


class TextEncoderGraph(nn.Module):
    """CLIP text tower: question ids [B, S] -> text_embeds [B, P] (text-guided selectors)."""

    def __init__(self, encoder: ClipTextEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.encoder(input_ids)


class AnyresVisionGraph(nn.Module):
    """LLaVA-NeXT: tiles [T, C, H, W] and packing_index [n] -> image_embeds [1, n, D]."""

    def __init__(self, llava: LlavaGraph):
        super().__init__()
        self.llava = llava

    def forward(self, pixel_values: Tensor, packing_index: Tensor) -> Tensor:
        return self.llava.pack_tiles(self.llava.tile_features(pixel_values), packing_index)[None]


class AnyresSelectedVisionGraph(nn.Module):
    """LLaVA-NeXT with a selector per tile: tiles [T, C, H, W], patch_position [T, P],
    newline_position [R], packing_index [m] (and text_embeds [1, P] for a text-guided selector)
    -> image_embeds [1, m, D]."""

    def __init__(self, llava: LlavaGraph, recipe: Recipe, visual_projection: nn.Module | None = None):
        super().__init__()
        self.llava = llava
        self.selector = recipe.selector
        self.visual_projection = visual_projection

    def forward(
        self,
        pixel_values: Tensor,
        patch_position: Tensor,
        newline_position: Tensor,
        packing_index: Tensor,
        text_embeds: Tensor | None = None,
    ):
        inputs = (patch_position, newline_position, packing_index, text_embeds, self.visual_projection)
        return self.llava.select_tile_tokens(pixel_values, self.selector, *inputs).embeds


class VisionGraph(nn.Module):
    """LLaVA-1.5: pixels [B, C, H, W] (and text_embeds [B, P] for a text-guided selector)
    -> (image_embeds [B, k, D], patch_index [B, k])."""

    def __init__(self, llava: LlavaGraph, recipe: Recipe | None, visual_projection: nn.Module | None = None):
        super().__init__()
        self.llava = llava
        self.selector = recipe.selector if recipe else None
        self.visual_projection = visual_projection

    def forward(self, pixel_values: Tensor, text_embeds: Tensor | None = None):
        if self.selector is not None:
            tokens = self.llava.select_image_tokens(pixel_values, self.selector, text_embeds, self.visual_projection)
            return tokens.embeds, tokens.patch_index
        embeds = self.llava.tile_features(pixel_values)
        index = torch.arange(embeds.shape[1], device=embeds.device)[None].expand(embeds.shape[0], -1)
        return embeds, index


def vision_graph(llava: LlavaGraph, recipe: Recipe | None, text_encoder: ClipTextEncoder | None) -> nn.Module:
    visual_projection = text_encoder.visual_projection if text_encoder is not None else None
    if llava.args.layout.tiled:
        if recipe is not None and recipe.selector is not None:
            return AnyresSelectedVisionGraph(llava, recipe, visual_projection)
        return AnyresVisionGraph(llava)
    return VisionGraph(llava, recipe, visual_projection)


class LlmGraph(nn.Module):
    """Both LLM phases (see `spec.llm_spec`): the prompt segment after per-stage past caches.
    Inputs and outputs are bound by their names in `spec`, positionally in its order."""

    def __init__(self, llava: LlavaGraph, recipe: Recipe | None, spec: GraphSpec):
        super().__init__()
        self.llava = llava
        self.schedule = recipe.schedule if recipe else None
        self.stages = stage_of_layer(self.schedule, llava.args.text.num_layers)
        self.input_names = [t.name for t in spec.inputs]
        self.output_names = [t.name for t in spec.outputs]

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        feeds = dict(zip(self.input_names, inputs, strict=True))
        caches = [
            LayerCache(
                feeds[cache_name(PAST, "key", i)],
                feeds[cache_name(PAST, "value", i)],
                feeds[cache_name(PAST, "mask", stage)],
                feeds[cache_name(PAST, "positions", stage)],
            )
            for i, stage in enumerate(self.stages)
        ]
        image_embeds, prefix_mask = feeds[IMAGE_EMBEDS], feeds[PREFIX_MASK]
        image_mask = torch.ones(image_embeds.shape[:2], dtype=prefix_mask.dtype, device=prefix_mask.device)
        out = self.llava.prefill(
            feeds[PREFIX_IDS],
            image_embeds,
            feeds[SUFFIX_IDS],
            prefix_mask,
            image_mask,
            feeds[SUFFIX_MASK],
            self.schedule,
            past=caches,
        )
        outputs = {LOGITS: out.logits.float()}
        for i, (stage, cache) in enumerate(zip(self.stages, out.caches, strict=True)):
            outputs[cache_name(PRESENT, "key", i)], outputs[cache_name(PRESENT, "value", i)] = cache.key, cache.value
            # A stage's mask and positions are those of its first layer (every layer of it has the same).
            outputs.setdefault(cache_name(PRESENT, "mask", stage), cache.key_mask)
            outputs.setdefault(cache_name(PRESENT, "positions", stage), cache.key_positions)
        return tuple(outputs[name] for name in self.output_names)
