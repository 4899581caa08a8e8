"""Model families, one declaration each: how a checkpoint folder's config becomes our
`LlavaArgs`, how its tensors are named, how its folder is laid out, and its prompt convention.
Loading, writing, prompting and the checkpoint code read these; the image layout (fixed tile or
anyres) follows from the architecture (`LlavaArgs.layout`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from transformers import PretrainedConfig

from ..errors import UserError
from ..graph.args import LlavaArgs
from . import tensor_names
from .config_args import clip_args, text_args
from .hr import llava_hr_args

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


def hub_llava_args(config: PretrainedConfig) -> LlavaArgs:
    """A transformers Llava / LlavaNext config -> our architecture (grid pinpoints: anyres tiling)."""
    family = _hub_family(config.model_type)
    if not isinstance(config.vision_feature_layer, int):
        raise UserError("multi-layer vision features (a list vision_feature_layer) are not supported yet")
    pinpoints = (getattr(config, "image_grid_pinpoints", None) or ()) if family.anyres else ()
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


@dataclass(frozen=True)
class Family:
    name: str
    model_type: str  # config.json "model_type"
    default_chat_template: str
    args_from_config: Callable[[PretrainedConfig], LlavaArgs]
    to_ours: Callable[[str], str | None]  # checkpoint tensor name -> ours (None: a tensor we do not load)
    to_checkpoint: Callable[[str], str]  # ours -> the name this family's checkpoints use
    anyres: bool = False  # the config's image_grid_pinpoints tile images (LLaVA-NeXT)
    # Original-LLaVA folders: a Llama config.json with LLaVA's mm_* keys, a tokenizer and no
    # image processor (ours is built from the config).
    original_layout: bool = False
    config_marker: str | None = None  # the config.json key that tells this family apart from its model_type's


FAMILIES = {
    f.name: f
    for f in (
        Family("llava-1.5", "llava", VICUNA_TEMPLATE, hub_llava_args, tensor_names.our_name, tensor_names.hub_name),
        Family(
            "llava-next",
            "llava_next",
            VICUNA_TEMPLATE,
            hub_llava_args,
            tensor_names.our_name,
            tensor_names.hub_name,
            anyres=True,
        ),
        Family(
            "llava-hr",
            "llava",
            VICUNA_V1_TEMPLATE,
            llava_hr_args,
            tensor_names.hr_our_name,
            tensor_names.hr_checkpoint_name,
            original_layout=True,
            config_marker="is_multipath_encoder",
        ),
    )
}


def _hub_family(model_type: str) -> Family:
    for family in FAMILIES.values():
        if family.model_type == model_type and family.config_marker is None:
            return family
    known = ", ".join(sorted({f.model_type for f in FAMILIES.values()}))
    raise UserError(f"unsupported model_type {model_type!r} in config.json (supported: {known})")


def family_of_config(config: PretrainedConfig | dict) -> Family:
    """The family a config (object or config.json dict) belongs to: its marker key, else its model_type."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    for family in FAMILIES.values():
        if family.config_marker and get(family.config_marker, False):
            return family
    return _hub_family(get("model_type"))


def family_of(args: LlavaArgs) -> Family:
    return FAMILIES[args.family]


def args_from_config(config: PretrainedConfig) -> LlavaArgs:
    """Our architecture arguments from a checkpoint's config, by its family's declaration."""
    return family_of_config(config).args_from_config(config)
