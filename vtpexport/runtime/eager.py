"""Reference inference with our eager PyTorch graph: the baseline every export is checked against."""

from __future__ import annotations

import torch
from PIL import Image
from torch import Tensor

from ..errors import UserError
from ..graph.decoder import PrefillOutput
from ..models.anyres import packing_index
from ..models.loader import LoadedModel
from ..models.text_encoder import attach_text_encoder
from ..recipe import Recipe, ScheduleSpec
from .batch import PreparedBatch, build_batch, default_stops, greedy_loop, image_tiles, per_image_token_count


def check_recipe_applies(model: LoadedModel, recipe: Recipe | None) -> None:
    """The recipe is for this model; a text-guided selector gets the model's default CLIP text
    encoder unless one was attached (`--text-encoder`)."""
    if recipe is None:
        return
    recipe.check_model(model.args, model.source.name)
    if recipe.selector and model.args.family == "llava-next":
        raise UserError(
            f"selector {recipe.selector.method} is not supported on LLaVA-NeXT anyres images yet; "
            "use an in-LLM schedule (fitprune, pyramiddrop, fastv)"
        )
    if recipe.selector and recipe.selector.text_guided and model.text_encoder is None:
        attach_text_encoder(model, None)


@torch.no_grad()
def image_embeddings(
    model: LoadedModel, image: Image.Image, recipe: Recipe | None = None, question: str | None = None
) -> Tensor:
    """The image's visual tokens [n, D] in prompt order, after the recipe's selector if any
    (a text-guided selector reads the question)."""
    device = model.graph.decoder.embed_tokens.weight.device
    tiles, size = image_tiles(model.image_processor, model.args, image)
    tiles = tiles.to(device)
    if recipe is not None and recipe.selector is not None:
        if recipe.selector.text_guided:
            encoder = model.text_encoder
            text = encoder.embed([question])
            return model.graph.select_image_tokens(
                tiles, recipe.selector, text, encoder.module.visual_projection
            ).embeds[0]
        return model.graph.select_image_tokens(tiles, recipe.selector).embeds[0]
    features = model.graph.tile_features(tiles)
    if model.args.family == "llava-next":
        return model.graph.pack_tiles(features, torch.from_numpy(packing_index(size, model.args)).to(device))
    return features[0]


def prepare(
    model: LoadedModel,
    images: list[Image.Image],
    prompts: list[str],
    max_new_tokens: int,
    recipe: Recipe | None = None,
) -> PreparedBatch:
    check_recipe_applies(model, recipe)
    return build_batch(
        model.tokenizer,
        model.chat_template,
        model.args,
        images,
        prompts,
        max_new_tokens,
        lambda image, question: image_embeddings(model, image, recipe, question),
    )


@torch.no_grad()
def prefill(model: LoadedModel, batch: PreparedBatch, schedule: ScheduleSpec | None = None) -> PrefillOutput:
    """The eager prefill of a prepared batch (one image token count per batch when pruning)."""
    return model.graph.prefill(*batch.prompt_tensors(), schedule)


@torch.no_grad()
def greedy_generate(
    model: LoadedModel,
    batch: PreparedBatch,
    max_new_tokens: int,
    stop_token_ids: tuple[int, ...] | None = None,
    recipe: Recipe | None = None,
) -> list[list[int]]:
    """Greedy decoding with the KV cache. The recipe's schedule prunes the prefill; its
    selector was applied in `prepare`. Rows run in groups of equal image token count."""
    graph = model.graph
    schedule = recipe.schedule if recipe else None
    stops = default_stops(model.tokenizer) if stop_token_ids is None else stop_token_ids

    def generate_group(group: PreparedBatch) -> list[list[int]]:
        out = prefill(model, group, schedule)
        state = {"caches": out.caches}

        def step(token: Tensor) -> Tensor:
            result = graph.decode(token[:, None], state["caches"])
            state["caches"] = result.caches
            return result.logits

        return greedy_loop(out.logits, step, max_new_tokens, stops)

    return per_image_token_count(batch, generate_group)
