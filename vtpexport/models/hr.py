"""LLaVA-HR (luogen1996/LLaVA-HR) in its original-LLaVA checkpoint layout: config -> our
architecture, preprocessing, and a random-weight model written in that layout.

The model is not in transformers. Its config.json is a Llama config plus original LLaVA's
mm_* keys and LLaVA-HR's own (`is_multipath_encoder`, `vision_tower_slow`,
`input_image_size`, `freeze_vision`); it *names* the two vision towers (`mm_vision_tower`, a
CLIP checkpoint; `vision_tower_slow`, a timm ConvNeXt) rather than describing them. We know
the towers LLaVA-HR uses by name; a model with other towers (our tiny built-in) describes
them in two keys of ours, `fast_vision_config` (CLIP vision config fields) and
`slow_vision_config` (`depths`, `dims`, `norm_eps`).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from transformers import CLIPVisionConfig, LlamaConfig, LlavaImageProcessorPil, PretrainedConfig

from ..errors import UserError
from ..graph.args import ConvNextArgs, LlavaArgs, MultiPathArgs
from .config_args import clip_args, text_args

# Fast towers by checkpoint name (the last path component of mm_vision_tower).
CLIP_TOWERS = {
    "clip-vit-large-patch14-336": {
        "image_size": 336,
        "patch_size": 14,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    },
}
# Slow towers by timm model name (before the ".pretrained_tag"), as the authors' convnext.py defines them.
CONVNEXT_TOWERS = {
    "convnext_large_mlp": ConvNextArgs(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536), layer_norm_eps=1e-6),
    "convnext_xxlarge": ConvNextArgs(depths=(3, 4, 30, 3), dims=(384, 768, 1536, 3072), layer_norm_eps=1e-5),
}


def hr_config(data: dict) -> PretrainedConfig:
    """An original-layout config.json as a config object (Llama defaults filled in)."""
    return LlamaConfig(**{k: v for k, v in data.items() if k != "model_type"})


def _fast_tower(config: PretrainedConfig) -> CLIPVisionConfig:
    explicit = getattr(config, "fast_vision_config", None)
    if explicit:
        return CLIPVisionConfig(**explicit)
    name = str(config.mm_vision_tower).rstrip("/").split("/")[-1]
    if name not in CLIP_TOWERS:
        raise UserError(
            f"unknown LLaVA-HR fast vision tower {config.mm_vision_tower!r} (known: {', '.join(CLIP_TOWERS)}); "
            "describe it in config.json as fast_vision_config"
        )
    return CLIPVisionConfig(**CLIP_TOWERS[name])


def _slow_tower(config: PretrainedConfig) -> ConvNextArgs:
    explicit = getattr(config, "slow_vision_config", None)
    if explicit:
        return ConvNextArgs(
            depths=tuple(explicit["depths"]),
            dims=tuple(explicit["dims"]),
            layer_norm_eps=explicit.get("norm_eps", 1e-6),
        )
    name = str(getattr(config, "vision_tower_slow", "")).split(".")[0]
    if name not in CONVNEXT_TOWERS:
        raise UserError(
            f"unknown LLaVA-HR slow vision tower {name!r} (known: {', '.join(CONVNEXT_TOWERS)}); "
            "describe it in config.json as slow_vision_config"
        )
    return CONVNEXT_TOWERS[name]


def llava_hr_args(config: PretrainedConfig) -> LlavaArgs:
    """Our architecture from an original-layout LLaVA-HR config."""
    projector = getattr(config, "mm_projector_type", "linear")
    if projector != "mlp2x_gelu":
        raise UserError(f"LLaVA-HR projector {projector!r} is not supported (only mlp2x_gelu)")
    size = getattr(config, "input_image_size", None)
    if not size:
        raise UserError("LLaVA-HR config.json has no input_image_size")
    clip = _fast_tower(config)
    slow = _slow_tower(config)
    if clip.num_hidden_layers % 4:
        raise UserError(f"LLaVA-HR puts adapters at quarters of the ViT; {clip.num_hidden_layers} layers do not split")
    quarter = clip.num_hidden_layers // 4
    # The authors' fast input: max(S / 32 * 14, 336) for CLIP-L/14 at 336 and a stride-32 ConvNeXt.
    fast_size = max(size // slow.stride * clip.patch_size, clip.image_size)
    if fast_size // clip.patch_size != size // slow.stride:
        raise UserError(
            f"input_image_size {size}: the ConvNeXt map ({size // slow.stride}) and the ViT grid "
            f"({fast_size // clip.patch_size}) differ; only sizes where they match are supported"
        )
    vision = clip_args(clip)
    if getattr(config, "mm_hidden_size", vision.hidden_size) != vision.hidden_size:
        raise UserError(f"mm_hidden_size {config.mm_hidden_size} is not the fast tower's width {vision.hidden_size}")
    return LlavaArgs(
        family="llava-hr",
        vision=replace(vision, image_size=fast_size),
        text=text_args(config, bool(getattr(config, "tie_word_embeddings", False))),
        vision_feature_layer=-1,  # every ViT layer runs; the fused last-layer tokens enter the projector
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        projector_bias=True,
        image_token_id=None,
        multipath=MultiPathArgs(
            slow=slow,
            image_size=size,
            position_image_size=clip.image_size,
            # freeze_vision disables the MR-adapters in the authors' code (enable_adapter = not freeze_vision).
            adapter_layers=() if getattr(config, "freeze_vision", False) else tuple(quarter * i - 1 for i in (1, 2, 3)),
        ),
    )


def pad_to_square_processor(size: int) -> LlavaImageProcessorPil:
    """LLaVA-HR's preprocessing (image_aspect_ratio "pad"): pad to a square with the mean colour
    (original LLaVA's expand2square), then CLIP's resize (shortest edge, bicubic), centre crop
    and normalisation at `size`."""
    return LlavaImageProcessorPil(do_pad=True, size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def write_config(data: dict, folder: Path) -> None:
    (folder / "config.json").write_text(json.dumps(data, indent=2) + "\n")
