"""Reference inference with our eager PyTorch graph: preprocess, prefill, greedy decode."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

from ..errors import UserError
from ..models.anyres import num_tiles, packing_index
from ..models.loader import LoadedModel
from ..models.prompt import PromptParts, check_context, format_prompt, left_pad, split_prompt
from ..recipe import Recipe


@dataclass
class PreparedBatch:
    """A batch in the form the prefill graph takes; masks mark real tokens (1)."""

    prefix_ids: Tensor  # [B, P]
    prefix_mask: Tensor
    image_embeds: Tensor  # [B, N, D]
    image_mask: Tensor  # [B, N]
    suffix_ids: Tensor  # [B, T]
    suffix_mask: Tensor
    parts: list[PromptParts]
    num_image_tokens: list[int]


def check_recipe_applies(model: LoadedModel, recipe: Recipe | None) -> None:
    if recipe is None:
        return
    recipe.check_model(model.args, model.source.name)
    if recipe.selector and model.args.family == "llava-next":
        raise UserError(
            f"selector {recipe.selector.method} is not supported on LLaVA-NeXT anyres images yet; "
            "use an in-LLM schedule (fitprune, pyramiddrop, fastv)"
        )


def image_tiles(model: LoadedModel, image: Image.Image) -> tuple[Tensor, tuple[int, int]]:
    """Pixel tiles [T, C, H, W] the vision tower takes, and the original (height, width)."""
    out = model.image_processor(images=[image], return_tensors="pt")
    size = (image.height, image.width)
    pixels = out["pixel_values"][0]
    if pixels.dim() == 3:  # one tile, no anyres
        pixels = pixels[None]
    return pixels[: num_tiles(size, model.args)], size


@torch.no_grad()
def image_embeddings(model: LoadedModel, image: Image.Image, recipe: Recipe | None = None) -> Tensor:
    """The image's visual tokens [n, D] in prompt order, after the recipe's selector if any."""
    tiles, size = image_tiles(model, image)
    if recipe is not None and recipe.selector is not None:
        return model.graph.select_image_tokens(tiles, recipe.selector).embeds[0]
    features = model.graph.tile_features(tiles)
    if model.args.family == "llava-next":
        return model.graph.pack_tiles(features, torch.from_numpy(packing_index(size, model.args)))
    return features[0]


def prepare(
    model: LoadedModel,
    images: list[Image.Image],
    prompts: list[str],
    max_new_tokens: int,
    recipe: Recipe | None = None,
) -> PreparedBatch:
    check_recipe_applies(model, recipe)
    parts, embeds = [], []
    for image, prompt in zip(images, prompts, strict=True):
        text = format_prompt(model.tokenizer, prompt, model.chat_template)
        part = split_prompt(model.tokenizer, text, model.args.image_token_id)
        embed = image_embeddings(model, image, recipe)
        check_context(part, embed.shape[0], max_new_tokens, model.args.text.max_position_embeddings)
        parts.append(part)
        embeds.append(embed)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    prefix_ids, prefix_mask = left_pad([p.prefix_ids for p in parts], pad)
    suffix_ids, suffix_mask = left_pad([p.suffix_ids for p in parts], pad)
    width = max(e.shape[0] for e in embeds)
    image_embeds = embeds[0].new_zeros(len(embeds), width, embeds[0].shape[1])
    image_mask = torch.zeros(len(embeds), width, dtype=torch.long)
    for i, embed in enumerate(embeds):
        image_embeds[i, width - embed.shape[0] :] = embed
        image_mask[i, width - embed.shape[0] :] = 1
    return PreparedBatch(
        prefix_ids, prefix_mask, image_embeds, image_mask, suffix_ids, suffix_mask, parts, [e.shape[0] for e in embeds]
    )


@torch.no_grad()
def greedy_generate(
    model: LoadedModel,
    batch: PreparedBatch,
    max_new_tokens: int,
    stop_token_ids: tuple[int, ...] | None = None,
    recipe: Recipe | None = None,
) -> list[list[int]]:
    """Greedy decoding with the KV cache; a row ends at its first stop token (kept).

    The recipe's schedule prunes the prefill; its selector was applied in `prepare`.
    """
    if stop_token_ids is None:
        stop_token_ids = tuple(t for t in [model.tokenizer.eos_token_id] if t is not None)
    stops = torch.tensor(stop_token_ids, dtype=torch.long)
    graph = model.graph
    schedule = recipe.schedule if recipe else None
    out = graph.prefill(
        batch.prefix_ids,
        batch.image_embeds,
        batch.suffix_ids,
        batch.prefix_mask,
        batch.image_mask,
        batch.suffix_mask,
        schedule,
    )
    rows: list[list[int]] = [[] for _ in range(batch.prefix_ids.shape[0])]
    finished = torch.zeros(len(rows), dtype=torch.bool)
    for step in range(max_new_tokens):
        token = out.logits.argmax(-1)
        for i in (~finished).nonzero().flatten().tolist():
            rows[i].append(int(token[i]))
        finished |= torch.isin(token, stops)
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        out = graph.decode(token[:, None], out.caches)
    return rows
