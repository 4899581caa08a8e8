"""Vision and language sub-configs (transformers config objects) -> our architecture arguments,
shared by every family's declaration."""

from __future__ import annotations

from transformers import PretrainedConfig

from ..errors import UserError
from ..graph.args import TextArgs, VisionArgs


def _rope_theta(text_config: PretrainedConfig) -> float:
    params = getattr(text_config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type != "default":
        raise UserError(f"RoPE scaling {rope_type!r} is not supported yet (only the default RoPE)")
    theta = params.get("rope_theta", getattr(text_config, "rope_theta", None))
    return float(theta if theta is not None else 10000.0)


def clip_args(v: PretrainedConfig) -> VisionArgs:
    """A CLIP vision config -> our VisionArgs."""
    if v.model_type != "clip_vision_model":
        raise UserError(f"vision tower {v.model_type!r} is not supported (only CLIP)")
    return VisionArgs(
        image_size=v.image_size,
        patch_size=v.patch_size,
        hidden_size=v.hidden_size,
        intermediate_size=v.intermediate_size,
        num_layers=v.num_hidden_layers,
        num_heads=v.num_attention_heads,
        layer_norm_eps=v.layer_norm_eps,
        hidden_act=v.hidden_act,
        num_channels=v.num_channels,
    )


def text_args(t: PretrainedConfig, tie_word_embeddings: bool) -> TextArgs:
    """A Llama / Mistral config -> our TextArgs."""
    if t.model_type not in ("llama", "mistral"):
        raise UserError(f"language model {t.model_type!r} is not supported (only Llama and Mistral)")
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    return TextArgs(
        vocab_size=t.vocab_size,
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_layers=t.num_hidden_layers,
        num_heads=t.num_attention_heads,
        num_kv_heads=t.num_key_value_heads or t.num_attention_heads,
        head_dim=head_dim,
        rms_norm_eps=t.rms_norm_eps,
        rope_theta=_rope_theta(t),
        max_position_embeddings=t.max_position_embeddings,
        sliding_window=getattr(t, "sliding_window", None),
        tie_word_embeddings=tie_word_embeddings,
        hidden_act=t.hidden_act,
    )
