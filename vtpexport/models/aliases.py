"""Aliases of the real checkpoints, with their architectures built in (as their config.json
on the Hugging Face Hub states them) so that FLOPs, schedules and dry runs need no weights."""

from __future__ import annotations

from dataclasses import dataclass, field

_CLIP_L_336 = {
    "model_type": "clip_vision_model",
    "hidden_size": 1024,
    "image_size": 336,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "patch_size": 14,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
_VICUNA_7B = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "vocab_size": 32064,
}
_VICUNA_13B = {
    **_VICUNA_7B,
    "hidden_size": 5120,
    "intermediate_size": 13824,
    "num_hidden_layers": 40,
    "num_attention_heads": 40,
    "num_key_value_heads": 40,
}
_MISTRAL_7B = {
    "model_type": "mistral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-5,
    "rope_theta": 1_000_000.0,
    "sliding_window": None,
    "vocab_size": 32064,
}
_ANYRES_336 = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def _llava(text: dict) -> dict:
    return {
        "model_type": "llava",
        "vision_config": _CLIP_L_336,
        "text_config": text,
        "image_token_index": 32000,
        "pad_token_id": 32001,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": False,
    }


def _llava_next(text: dict, image_token_index: int) -> dict:
    return {
        **_llava(text),
        "model_type": "llava_next",
        "image_grid_pinpoints": _ANYRES_336,
        "image_token_index": image_token_index,
        "use_image_newline_parameter": True,
    }


def _llava_hr(text: dict, slow_tower: str) -> dict:
    """An original-LLaVA config.json of LLaVA-HR (Llama keys at the top, towers named, not described)."""
    llama = {k: v for k, v in text.items() if k != "model_type"}
    return {
        **llama,
        "model_type": "llava",
        "architectures": ["LlavaLlamaForCausalLM"],
        "vocab_size": 32000,  # original LLaVA adds no image token
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "vision_tower_slow": slow_tower,
        "is_multipath_encoder": True,
        "input_image_size": 1024,
        "freeze_vision": False,
        "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": 1024,
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "image_aspect_ratio": "pad",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "tie_word_embeddings": False,
    }


_LLAVA_HR_7B = _llava_hr(_VICUNA_7B, "convnext_large_mlp.clip_laion2b_ft_320")


@dataclass(frozen=True)
class Alias:
    name: str
    repo_id: str  # where the weights come from on the Hub (we never download them)
    config: dict = field(repr=False)


ALIASES = {
    a.name: a
    for a in (
        Alias("llava-1.5-7b", "llava-hf/llava-1.5-7b-hf", _llava(_VICUNA_7B)),
        Alias("llava-1.5-13b", "llava-hf/llava-1.5-13b-hf", _llava(_VICUNA_13B)),
        Alias("llava-next-7b", "llava-hf/llava-v1.6-vicuna-7b-hf", _llava_next(_VICUNA_7B, 32000)),
        Alias("llava-next-vicuna-7b", "llava-hf/llava-v1.6-vicuna-7b-hf", _llava_next(_VICUNA_7B, 32000)),
        Alias("llava-next-mistral-7b", "llava-hf/llava-v1.6-mistral-7b-hf", _llava_next(_MISTRAL_7B, 32000)),
        Alias("llava-hr-7b", "favor123/llava-hr-7b-sft-1024", _LLAVA_HR_7B),
        Alias("llava-hr", "favor123/llava-hr-7b-sft-1024", _LLAVA_HR_7B),
        Alias(
            "llava-hr-x-13b",
            "favor123/llava-hr-13b-x-sft-1024",
            _llava_hr(_VICUNA_13B, "convnext_xxlarge.clip_laion2b_soup"),
        ),
    )
}
