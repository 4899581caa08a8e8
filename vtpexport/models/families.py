"""Model families: how a Hugging Face config becomes our `LlavaArgs`, and each family's
prompt conventions. One declaration per family, read by loading, prompting and export."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PretrainedConfig

from ..errors import UserError
from ..graph.args import LlavaArgs, TextArgs, VisionArgs

# Used when a checkpoint ships no chat template; matches the templates the llava-hf
# checkpoints ship for a single user turn with one image.
VICUNA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {{ message['content'][0]['text'] }}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


# Original LLaVA's vicuna_v1 conversation (LLaVA-HR's "--version v1"): a system line first.
VICUNA_V1_TEMPLATE = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions. " + VICUNA_TEMPLATE
)


@dataclass(frozen=True)
class Family:
    name: str
    model_type: str  # config.json "model_type"
    hf_class: str | None  # the transformers class our parity tests compare against (None: not in transformers)
    default_chat_template: str


FAMILIES = {
    f.name: f
    for f in (
        Family("llava-1.5", "llava", "LlavaForConditionalGeneration", VICUNA_TEMPLATE),
        Family("llava-next", "llava_next", "LlavaNextForConditionalGeneration", VICUNA_TEMPLATE),
        # Original-LLaVA layout: a Llama config.json with LLaVA's mm_* keys; told apart by is_multipath_encoder.
        Family("llava-hr", "llava", None, VICUNA_V1_TEMPLATE),
    )
}


def is_llava_hr(config: PretrainedConfig) -> bool:
    return bool(getattr(config, "is_multipath_encoder", False))


def family_for_model_type(model_type: str) -> Family:
    for family in FAMILIES.values():
        if family.model_type == model_type:
            return family
    known = ", ".join(sorted(f.model_type for f in FAMILIES.values()))
    raise UserError(f"unsupported model_type {model_type!r} in config.json (supported: {known})")


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


def args_from_config(config: PretrainedConfig) -> LlavaArgs:
    """Our architecture arguments from a transformers Llava / LlavaNext config object, or from
    an original-layout LLaVA-HR config (see `models.hr`)."""
    if is_llava_hr(config):
        from .hr import llava_hr_args

        return llava_hr_args(config)
    family = family_for_model_type(config.model_type)
    if not isinstance(config.vision_feature_layer, int):
        raise UserError("multi-layer vision features (a list vision_feature_layer) are not supported yet")
    pinpoints = getattr(config, "image_grid_pinpoints", None) or ()
    return LlavaArgs(
        family=family.name,
        vision=clip_args(config.vision_config),
        text=text_args(config.text_config, bool(getattr(config, "tie_word_embeddings", False))),
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        projector_hidden_act=config.projector_hidden_act,
        projector_bias=bool(getattr(config, "multimodal_projector_bias", True)),
        image_token_id=config.image_token_id,
        image_grid_pinpoints=tuple(tuple(p) for p in pinpoints),
    )
