"""The CLIP text encoder that text-guided selectors (Recoverable Compression) need.

It is not part of LLaVA checkpoints: it comes from the CLIP checkpoint the LLaVA vision tower
was taken from (a CLIPModel folder: text tower, text_projection, visual_projection, tokenizer),
given as `--text-encoder DIR`, found next to the model's weights, or built in for tiny models.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import processors
from transformers import AutoConfig, AutoTokenizer, CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

from ..errors import UserError, one_line
from ..graph.args import VisionArgs
from ..graph.text_encoder import ClipTextArgs, ClipTextEncoder
from ..recipe import Recipe
from .builtin import BUILTIN_CONFIGS, byte_tokenizer, cached_folder
from .checkpoint import WEIGHT_READ_ERRORS, _read_tensors, weight_files
from .loader import WEIGHTS_ENV, LoadedModel, ModelSource, hf_cache_snapshot

# The CLIP checkpoint each model's vision tower comes from (LLaVA-1.5 and LLaVA-NeXT alike).
CLIP_L_336 = "openai/clip-vit-large-patch14-336"
TINY_CLIP = "tiny-clip"
TEXT_TOKENIZER = "text_tokenizer"  # the export folder's copy of the text encoder's tokenizer
# CLIPModel names -> ours; the vision tower and logit_scale are not needed (LLaVA has its own).
_TO_OURS = [
    (r"^text_model\.embeddings\.", ""),
    (r"^text_model\.encoder\.", ""),
    (r"^text_model\.", ""),
]
_UNUSED = re.compile(r"^(vision_model\.|logit_scale$|text_model\.embeddings\.position_ids$)")


@dataclass
class TextEncoder:
    module: ClipTextEncoder
    tokenizer: object
    folder: Path

    @torch.no_grad()
    def embed(self, questions: list[str]) -> torch.Tensor:
        """CLIP text embeddings [B, P] of the questions (truncated to the tower's context)."""
        ids = self.input_ids(questions)
        return self.module(ids.to(self.module.token_embedding.weight.device))

    def input_ids(self, questions: list[str]) -> torch.Tensor:
        """Right-padded ids [B, S]; each row keeps its EOS even when truncated."""
        limit = self.module.args.max_position_embeddings
        out = self.tokenizer(questions, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        return out["input_ids"]


def attach_text_encoder(model, spec: str | None) -> None:
    """Load the CLIP text encoder for `model` (a LoadedModel) from `spec` or the default place."""
    folder = resolve_text_encoder(model.source, spec)
    dtype = model.graph.decoder.embed_tokens.weight.dtype
    model.text_encoder = load_text_encoder(folder, model.args.vision, dtype)
    model.text_encoder.module.to(model.graph.decoder.embed_tokens.weight.device)


def default_text_encoder(source: ModelSource) -> str:
    """Where the model's CLIP text tower is expected when `--text-encoder` is not given."""
    if source.kind == "builtin" and source.name in BUILTIN_CONFIGS:
        return TINY_CLIP
    return getattr(source.config, "mm_vision_tower", None) or CLIP_L_336


def resolve_text_encoder(source: ModelSource, spec: str | None) -> Path:
    """A CLIP checkpoint folder: `spec` (a folder or built-in name), else the model's default
    looked up in $VTPEXPORT_WEIGHTS_DIR and the local Hugging Face cache (offline)."""
    if spec is not None and spec != TINY_CLIP:
        folder = Path(spec)
        if not folder.is_dir():
            raise UserError(f"text encoder folder not found: {spec}")
        return folder
    name = spec or default_text_encoder(source)
    if name == TINY_CLIP:
        width = source.args.vision.hidden_size
        return cached_folder(
            f"{TINY_CLIP}-{width}", lambda _, folder: write_tiny_clip(width, folder), (Path(__file__),)
        )
    looked_in = []
    root = os.environ.get(WEIGHTS_ENV)
    if root:
        candidate = Path(root) / name.split("/")[-1]
        looked_in.append(str(candidate))
        if (candidate / "config.json").is_file():
            return candidate
    looked_in.append(f"the Hugging Face cache ({name})")
    folder = hf_cache_snapshot(name)
    if folder is None:
        raise UserError(
            f"text-guided selectors (recover, cdpruner) need the CLIP text encoder {name}: looked in "
            f"{'; '.join(looked_in)}. Pass --text-encoder DIR (a CLIPModel folder with its tokenizer)"
        )
    return folder


def load_text_encoder(folder: Path, vision: VisionArgs, dtype: torch.dtype = torch.float32) -> TextEncoder:
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"cannot read the text encoder config in {folder}: {error}") from None
    if not isinstance(config, CLIPConfig):
        raise UserError(f"{folder} is a {config.model_type!r} checkpoint; the text encoder must be a CLIP model")
    if config.vision_config.hidden_size != vision.hidden_size:
        raise UserError(
            f"text encoder {folder} pairs with a vision tower of width {config.vision_config.hidden_size}, "
            f"the model's is {vision.hidden_size}: use the CLIP checkpoint the model's vision tower came from"
        )
    text = config.text_config
    args = ClipTextArgs(
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_layers=text.num_hidden_layers,
        num_heads=text.num_attention_heads,
        max_position_embeddings=text.max_position_embeddings,
        layer_norm_eps=text.layer_norm_eps,
        hidden_act=text.hidden_act,
        projection_dim=config.projection_dim,
        vision_hidden_size=vision.hidden_size,
        eos_token_id=text.eos_token_id,
    )
    with torch.device("meta"):
        module = ClipTextEncoder(args)
    expected = dict(module.named_parameters())
    loaded = {}
    try:
        for path in weight_files(folder):
            for key, tensor in _read_tensors(path):
                if _UNUSED.search(key):
                    continue
                name = key
                for pattern, replacement in _TO_OURS:
                    name = re.sub(pattern, replacement, name)
                if name not in expected or tuple(tensor.shape) != tuple(expected[name].shape):
                    raise UserError(f"unexpected tensor {key!r} {tuple(tensor.shape)} in {path}: not a CLIPModel?")
                loaded[name] = tensor.to(dtype)
    except WEIGHT_READ_ERRORS as error:
        raise UserError(f"cannot read the text encoder weights in {folder}: {one_line(error)}") from None
    missing = sorted(set(expected) - set(loaded))
    if missing:
        raise UserError(f"text encoder {folder} is incomplete: {len(missing)} tensor(s) missing, e.g. {missing[0]!r}")
    module.load_state_dict(loaded, assign=True, strict=True)
    module.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"cannot load the text encoder's tokenizer from {folder}: {error}") from None
    tokenizer.padding_side = "right"
    return TextEncoder(module, tokenizer, folder)


def write_tiny_clip(vision_width: int, folder: Path, seed: int = 0) -> Path:
    """A deterministic random CLIPModel whose vision side has width `vision_width` (only its
    visual_projection is used), with a byte-level tokenizer that ends every text with EOS as
    CLIP's does."""
    tokenizer = byte_tokenizer()
    bos, eos = tokenizer.convert_tokens_to_ids(["<s>", "</s>"])
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    tokenizer.padding_side = "right"
    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=vision_width, intermediate_size=2 * vision_width, num_hidden_layers=1, num_attention_heads=4
    )
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision_config.to_dict(), projection_dim=16)
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def check_recipe_applies(model: LoadedModel, recipe: Recipe | None) -> None:
    """The recipe is for this model; a text-guided selector gets the model's default CLIP text
    encoder unless one was attached (`--text-encoder`)."""
    if recipe is None:
        return
    recipe.check_model(model.args, model.source.name)
    if recipe.selector and recipe.selector.text_guided and model.text_encoder is None:
        attach_text_encoder(model, None)
