"""Reference inference with our eager PyTorch graph: the baseline every export is checked against."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..graph.decoder import PrefillOutput
from ..graph.llava import ImageTokens
from ..models.loader import LoadedModel
from ..models.text_encoder import check_recipe_applies
from ..recipe import Recipe, ScheduleSpec, tile_rule
from .batch import PreparedBatch, Runner, build_batch, image_tiles


@torch.no_grad()
def selected_image_tokens(model: LoadedModel, image: Image.Image, recipe: Recipe, question: str | None) -> ImageTokens:
    """The recipe's selector applied to an image (a text-guided one reads the question). On
    LLaVA-NeXT tiles, `patch_index` is each kept token's place in the unpruned token sequence."""
    device = model.graph.decoder.embed_tokens.weight.device
    tiles, size = image_tiles(model.image_processor, model.args, image)
    tiles = tiles.to(device)
    layout = model.args.layout
    question_inputs = ()
    if recipe.selector.text_guided:
        encoder = model.text_encoder
        question_inputs = (encoder.embed([question]), encoder.module.visual_projection)
    if layout.tiled:
        inputs = [t.to(device) for t in layout.vision_inputs(tiles, size, *tile_rule(recipe, model.args))[1:]]
        return model.graph.select_tile_tokens(tiles, recipe.selector, *inputs, *question_inputs)
    return model.graph.select_image_tokens(tiles, recipe.selector, *question_inputs)


@torch.no_grad()
def image_embeddings(
    model: LoadedModel, image: Image.Image, recipe: Recipe | None = None, question: str | None = None
) -> Tensor:
    """The image's visual tokens [n, D] in prompt order, after the recipe's selector if any."""
    if recipe is not None and recipe.selector is not None:
        return selected_image_tokens(model, image, recipe, question).embeds[0]
    device = model.graph.decoder.embed_tokens.weight.device
    tiles, size = image_tiles(model.image_processor, model.args, image)
    return model.args.layout.image_embeddings(model.graph, tiles.to(device), size)


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


def greedy_generate(
    model: LoadedModel,
    batch: PreparedBatch,
    max_new_tokens: int,
    stop_token_ids: tuple[int, ...] | None = None,
    recipe: Recipe | None = None,
) -> list[list[int]]:
    """Greedy decoding with the KV cache. The recipe's schedule prunes the prefill; its
    selector was applied in `prepare`. Rows run in groups of equal image token count."""
    return EagerRunner(model, recipe).generate(batch, max_new_tokens, stop_token_ids)


@torch.no_grad()
def kept_image_tokens(
    model: LoadedModel, image: Image.Image, prompt: str, recipe: Recipe
) -> tuple[Tensor | None, dict[int, Tensor]]:
    """Which image tokens a recipe keeps for one prompt: the selector's patch raster indices
    [k] (-1: PruMerge's merged token; None without a selector), and for each layer where the
    schedule drops, the indices [k_l] into the tokens that entered the LLM kept there."""
    patch_index = None
    if recipe.selector is not None:
        check_recipe_applies(model, recipe)
        patch_index = selected_image_tokens(model, image, recipe, prompt).patch_index[0]
    out = prefill(model, prepare(model, [image], [prompt], 1, recipe), recipe.schedule)
    return patch_index, {layer: ids[0] for layer, ids in sorted(out.kept_ids.items())}


class EagerRunner(Runner):
    """Our eager graph behind the export runners' interface (`text_embeddings`,
    `image_embeddings`, `prepare`, `prefill`, `decode`, and `Runner`'s generation), so a command
    runs either the same way and `verify` compares one with the other."""

    def __init__(self, model: LoadedModel, recipe: Recipe | None = None):
        self.model, self.recipe = model, recipe
        self.tokenizer = model.tokenizer
        self.folder = model.source.folder

    @torch.no_grad()
    def text_embeddings(self, question: str) -> np.ndarray:
        """CLIP text embeddings [1, P] of the question (the model's attached text encoder)."""
        return self.model.text_encoder.embed([question]).numpy()

    def image_embeddings(self, image: Image.Image, question: str | None = None) -> Tensor:
        return image_embeddings(self.model, image, self.recipe, question)

    def prepare(self, images: list[Image.Image], prompts: list[str], max_new_tokens: int) -> PreparedBatch:
        return prepare(self.model, images, prompts, max_new_tokens, self.recipe)

    @torch.no_grad()
    def prefill(self, batch: PreparedBatch) -> dict:
        out = prefill(self.model, batch, self.recipe.schedule if self.recipe else None)
        return {"logits": out.logits, "caches": out.caches}

    @torch.no_grad()
    def decode(self, token: Tensor, previous: dict) -> dict:
        step = self.model.graph.decode(token[:, None], previous["caches"])
        return {"logits": step.logits, "caches": step.caches}


def open_eager_runner(
    model_spec: str,
    weights: str | None = None,
    dtype: torch.dtype = torch.float32,
    recipe_path: str | None = None,
    text_encoder: str | None = None,
) -> EagerRunner:
    """The eager runner of a model (alias, built-in or folder), pruned by a recipe if given."""
    from ..models.loader import load_model
    from ..models.text_encoder import attach_text_encoder

    recipe = Recipe.load(recipe_path) if recipe_path else None
    model = load_model(model_spec, weights, dtype)
    if text_encoder is not None:
        attach_text_encoder(model, text_encoder)
    return EagerRunner(model, recipe)
