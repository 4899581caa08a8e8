"""Built-in tiny random-weight models, deterministic from a seed, written in the Hugging
Face format so that they load through exactly the path real checkpoints take."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from torch import Tensor
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaNextConfig,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaProcessor,
    MistralConfig,
    PreTrainedTokenizerFast,
)

from ..errors import UserError, one_line
from ..files import folder_once
from ..graph.llava import LlavaGraph
from .checkpoint import save_weights
from .families import args_from_config, family_of
from .hr import hr_config, write_config

SPECIALS = ["<unk>", "<s>", "</s>", "<image>", "<pad>"]
TINY_VOCAB = 272  # 5 specials + 256 bytes, rounded up as LLaVA rounds 32000 to 32064


def byte_tokenizer(image_token: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: any text round-trips, no download, 261 tokens (260 without
    `<image>`, as original LLaVA's vocabulary has no image token)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    specials = SPECIALS if image_token else [t for t in SPECIALS if t != "<image>"]
    vocab = {token: i for i, token in enumerate(specials + alphabet)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    tokenizer.add_special_tokens(specials)
    return wrap_tokenizer(tokenizer, image_token)


def wrap_tokenizer(tokenizer: Tokenizer, image_token: bool = True) -> PreTrainedTokenizerFast:
    """A `tokenizers` tokenizer over SPECIALS as the transformers tokenizer the built-ins ship."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",
        extra_special_tokens={"image_token": "<image>"} if image_token else {},
    )


def _tiny_llava_15() -> LlavaConfig:
    vision = CLIPVisionConfig(
        image_size=48,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=4,
    )
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=3, pad_token_id=4)


def _tiny_llava_next() -> LlavaNextConfig:
    vision = CLIPVisionConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        projection_dim=32,
    )
    # Mistral-style with grouped-query attention (4 query heads share 2 KV heads).
    text = MistralConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        sliding_window=None,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=4,
    )
    pinpoints = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
    return LlavaNextConfig(
        vision_config=vision, text_config=text, image_token_index=3, pad_token_id=4, image_grid_pinpoints=pinpoints
    )


def _tiny_llava_hr():
    """LLaVA-HR in miniature, in the original-LLaVA config layout: a 192 px input, a ConvNeXt of
    stride 32 -> 6x6 map, a 4-layer CLIP on 48 px (6x6 patches of 8) whose position table is
    4x4 (trained at 32 px), so it is resampled as the real 24x24 -> 32x32 is."""
    return hr_config(
        {
            "architectures": ["LlavaLlamaForCausalLM"],
            "model_type": "llava",
            "vocab_size": TINY_VOCAB,
            "hidden_size": 64,
            "intermediate_size": 160,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "max_position_embeddings": 512,
            "rms_norm_eps": 1e-5,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 3,
            "mm_vision_tower": "tiny-clip",
            "vision_tower_slow": "tiny-convnext",
            "fast_vision_config": {
                "image_size": 32,
                "patch_size": 8,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 4,
                "num_attention_heads": 4,
            },
            "slow_vision_config": {"depths": [1, 1, 2, 1], "dims": [8, 16, 24, 40], "norm_eps": 1e-6},
            "is_multipath_encoder": True,
            "input_image_size": 192,
            "freeze_vision": False,
            "mm_projector_type": "mlp2x_gelu",
            "mm_hidden_size": 32,
            "mm_vision_select_layer": -2,
            "mm_vision_select_feature": "patch",
            "image_aspect_ratio": "pad",
            "mm_use_im_start_end": False,
            "mm_use_im_patch_token": False,
        }
    )


BUILTIN_CONFIGS = {
    "tiny-llava-1.5": _tiny_llava_15,
    "tiny-llava-next": _tiny_llava_next,
    "tiny-llava-hr": _tiny_llava_hr,
}
# Trained built-ins ship as Hugging Face folders inside the package (see vtpexport/zoo).
ZOO = Path(__file__).resolve().parent.parent / "zoo"
# `toy` learnt the task while tokens were hidden as pruning hides them; `toy-deep` (12 layers)
# never saw a token hidden, so a table on it says what a method costs a model not taught to lose tokens.
SHIPPED_MODELS = {"toy": ZOO / "toy", "toy-deep": ZOO / "toy-deep"}
BUILTIN_NAMES = (*BUILTIN_CONFIGS, *SHIPPED_MODELS)


def random_parameter(name: str, shape: torch.Size, generator: torch.Generator) -> Tensor:
    """One parameter of a random model (fp32): unit-variance activations through every layer."""
    noise = torch.randn(shape, generator=generator)
    if "norm" in name and name.endswith("weight"):
        return 1.0 + 0.1 * noise
    if name.endswith("bias"):
        return 0.02 * noise
    if len(shape) >= 2 and "embed" not in name:
        return noise / math.sqrt(math.prod(shape[1:]))
    return noise / math.sqrt(shape[-1]) if len(shape) else noise


def init_weights(graph: LlavaGraph, seed: int) -> None:
    """Deterministic weights whose logits are well separated (so greedy decoding is stable).

    They go in through load_state_dict, so buffers derived at load time (LLaVA-HR's resampled
    position table) are derived here too."""
    generator = torch.Generator().manual_seed(seed)
    state = {name: random_parameter(name, param.shape, generator) for name, param in graph.named_parameters()}
    dtypes = {name: param.dtype for name, param in graph.named_parameters()}
    graph.load_state_dict({name: value.to(dtypes[name]) for name, value in state.items()}, strict=True)


def processor_for(config, tokenizer):
    """The LLaVA processor (image processor, tokenizer, chat template) a built-in ships."""
    args = args_from_config(config)
    v = config.vision_config
    crop = {"height": v.image_size, "width": v.image_size}
    common = dict(
        tokenizer=tokenizer,
        patch_size=v.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=family_of(args).default_chat_template,
    )
    if args.layout.tiled:
        images = LlavaNextImageProcessorPil(
            size={"shortest_edge": v.image_size}, crop_size=crop, image_grid_pinpoints=config.image_grid_pinpoints
        )
        return LlavaNextProcessor(image_processor=images, **common)
    images = CLIPImageProcessorPil(size={"shortest_edge": v.image_size}, crop_size=crop)
    return LlavaProcessor(image_processor=images, **common)


def write_random_model(config, folder: Path, seed: int = 0, max_shard_bytes: int | None = None) -> Path:
    """Write a random-weight model of a transformers Llava / LlavaNext config in the Hugging Face
    layout (weights, config, byte-level tokenizer, image processor) into `folder`. A LLaVA-HR
    config is written in the original-LLaVA layout instead (config, weights and tokenizer only)."""
    graph = LlavaGraph(args_from_config(config))
    init_weights(graph, seed)
    tokenizer = byte_tokenizer(image_token=not family_of(graph.args).original_layout)
    return save_model(graph, config, tokenizer, folder, max_shard_bytes)


def save_model(graph: LlavaGraph, config, tokenizer, folder: Path, max_shard_bytes: int | None = None) -> Path:
    """Write a graph with its config, tokenizer, chat template and image processor in the
    Hugging Face layout into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    if family_of(graph.args).original_layout:
        write_config(config.to_diff_dict() | {"model_type": "llava"}, folder)
        save_weights(graph, folder, max_shard_bytes)
        tokenizer.save_pretrained(folder)
        return folder
    config.save_pretrained(folder)
    save_weights(graph, folder, max_shard_bytes)
    tokenizer.chat_template = family_of(graph.args).default_chat_template
    processor_for(config, tokenizer).save_pretrained(folder)
    return folder


def write_builtin(name: str, folder: Path, seed: int = 0, max_shard_bytes: int | None = None) -> Path:
    """Write built-in model `name` in the Hugging Face layout into `folder`."""
    return write_random_model(BUILTIN_CONFIGS[name](), folder, seed, max_shard_bytes)


def cache_root() -> Path:
    return Path(os.environ.get("VTPEXPORT_CACHE", Path.home() / ".cache" / "vtpexport"))


def builtin_folder(name: str) -> Path:
    """The built-in model's folder: shipped in the package, or in the cache, written on first
    use (atomically)."""
    if name in SHIPPED_MODELS:
        return SHIPPED_MODELS[name]
    return cached_folder(name, write_builtin, (Path(__file__), Path(__file__).with_name("hr.py")))


def cached_folder(name: str, write, sources: tuple[Path, ...]) -> Path:
    """`write(name, folder)`'s output in the cache, written once (atomically).

    Keyed by the content of `sources`, the files that define how it is made, so changing them
    never reuses a stale copy.
    """
    fingerprint = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:12]
    try:
        return folder_once(cache_root() / "builtin" / f"{name}-{fingerprint}", lambda staging: write(name, staging))
    except OSError as error:
        raise _cache_error(name, error) from None


def _cache_error(name: str, error: OSError) -> UserError:
    where = "$VTPEXPORT_CACHE" if "VTPEXPORT_CACHE" in os.environ else "the default; set $VTPEXPORT_CACHE to move it"
    return UserError(f"cannot write built-in model {name} to the cache {cache_root()} ({where}): {one_line(error)}")
