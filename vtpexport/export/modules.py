"""The graphs we export, as thin modules over our one LlavaGraph with the recipe bound.

Inputs and outputs are flat tensors in the order `spec.py` declares; nothing here
computes anything the eager reference does not compute through the same methods.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..graph.decoder import LayerCache
from ..graph.llava import LlavaGraph
from ..graph.text_encoder import ClipTextEncoder
from ..recipe import Recipe
from .spec import stage_of_layer


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
    newline_position [R] and packing_index [m] -> image_embeds [1, m, D]."""

    def __init__(self, llava: LlavaGraph, recipe: Recipe):
        super().__init__()
        self.llava = llava
        self.selector = recipe.selector

    def forward(self, pixel_values: Tensor, patch_position: Tensor, newline_position: Tensor, packing_index: Tensor):
        inputs = (patch_position, newline_position, packing_index)
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
    if llava.args.layout.tiled:
        if recipe is not None and recipe.selector is not None:
            return AnyresSelectedVisionGraph(llava, recipe)
        return AnyresVisionGraph(llava)
    return VisionGraph(llava, recipe, text_encoder.visual_projection if text_encoder is not None else None)


def _stage_outputs(caches: list[LayerCache], stages: list[int]) -> list[Tensor]:
    first_layers = [stages.index(s) for s in range(stages[-1] + 1)]
    out = []
    for layer in first_layers:
        out += [caches[layer].key_mask, caches[layer].key_positions]
    return out


class LlmGraph(nn.Module):
    """Both LLM phases (see `spec.llm_spec`): the prompt segment after per-stage past caches."""

    def __init__(self, llava: LlavaGraph, recipe: Recipe | None):
        super().__init__()
        self.llava = llava
        self.schedule = recipe.schedule if recipe else None
        self.stages = stage_of_layer(self.schedule, llava.args.text.num_layers)

    def forward(self, prefix_ids, prefix_mask, image_embeds, suffix_ids, suffix_mask, *past: Tensor):
        num_stages = self.stages[-1] + 1
        masks, positions = past[0 : 2 * num_stages : 2], past[1 : 2 * num_stages : 2]
        kv = past[2 * num_stages :]
        caches = [
            LayerCache(kv[2 * i], kv[2 * i + 1], masks[stage], positions[stage]) for i, stage in enumerate(self.stages)
        ]
        image_mask = torch.ones(image_embeds.shape[:2], dtype=prefix_mask.dtype, device=prefix_mask.device)
        out = self.llava.prefill(
            prefix_ids, image_embeds, suffix_ids, prefix_mask, image_mask, suffix_mask, self.schedule, past=caches
        )
        kv_out = [t for cache in out.caches for t in (cache.key, cache.value)]
        return (out.logits.float(), *kv_out, *_stage_outputs(out.caches, self.stages))
