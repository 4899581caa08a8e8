"""What every runner shares: image preprocessing, prompt batching, and greedy generation."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch
from PIL import Image
from torch import Tensor

from ..graph.args import LlavaArgs
from ..models.prompt import PromptParts, check_context, format_prompt, left_pad, split_prompt

Row = TypeVar("Row")


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

    def prompt_tensors(self) -> tuple[Tensor, ...]:
        """The tensors in the order `Decoder.prompt_sequence` / `prefill_prompt` take them."""
        return (
            self.prefix_ids,
            self.image_embeds,
            self.suffix_ids,
            self.prefix_mask,
            self.image_mask,
            self.suffix_mask,
        )


def image_tiles(image_processor, args: LlavaArgs, image: Image.Image) -> tuple[Tensor, tuple[int, int]]:
    """Pixel tiles [T, C, H, W] the vision tower takes, and the original (height, width)."""
    out = image_processor(images=[image], return_tensors="pt")
    size = (image.height, image.width)
    pixels = out["pixel_values"][0]
    if pixels.dim() == 3:  # one tile, no anyres
        pixels = pixels[None]
    return pixels[: args.layout.num_tiles(size)], size


def build_batch(
    tokenizer,
    chat_template: str,
    args: LlavaArgs,
    images: list[Image.Image],
    prompts: list[str],
    max_new_tokens: int,
    embed_image: Callable[[Image.Image, str], Tensor],
) -> PreparedBatch:
    """Prompts and images -> a left-padded batch; `embed_image(image, prompt)` gives the image's
    tokens [n, D] (text-guided selectors read the prompt)."""
    parts, embeds = [], []
    for image, prompt in zip(images, prompts, strict=True):
        text = format_prompt(tokenizer, prompt, chat_template)
        part = split_prompt(tokenizer, text, args.image_token_id)
        embed = embed_image(image, prompt)
        check_context(part, embed.shape[0], max_new_tokens, args.text.max_position_embeddings)
        parts.append(part)
        embeds.append(embed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prefix_ids, prefix_mask = left_pad([p.prefix_ids for p in parts], pad)
    suffix_ids, suffix_mask = left_pad([p.suffix_ids for p in parts], pad)
    width = max(e.shape[0] for e in embeds)
    image_embeds = embeds[0].new_zeros(len(embeds), width, embeds[0].shape[1])
    image_mask = torch.zeros(len(embeds), width, dtype=torch.long)
    for i, embed in enumerate(embeds):
        image_embeds[i, width - embed.shape[0] :] = embed
        image_mask[i, width - embed.shape[0] :] = 1
    counts = [e.shape[0] for e in embeds]
    return PreparedBatch(prefix_ids, prefix_mask, image_embeds, image_mask, suffix_ids, suffix_mask, parts, counts)


def greedy_loop(
    first_logits: Tensor, step: Callable[[Tensor], Tensor], max_new_tokens: int, stop_token_ids: tuple[int, ...]
) -> list[list[int]]:
    """Greedy decoding: `step(tokens [B])` returns the next logits; a row ends at its first stop token (kept)."""
    stops = torch.tensor(stop_token_ids, dtype=torch.long)
    logits = first_logits
    rows: list[list[int]] = [[] for _ in range(logits.shape[0])]
    finished = torch.zeros(len(rows), dtype=torch.bool)
    for index in range(max_new_tokens):
        token = logits.argmax(-1)
        for i in (~finished).nonzero().flatten().tolist():
            rows[i].append(int(token[i]))
        finished |= torch.isin(token, stops)
        if bool(finished.all()) or index == max_new_tokens - 1:
            break
        logits = step(token)
    return rows


def default_stops(tokenizer) -> tuple[int, ...]:
    return tuple(t for t in [tokenizer.eos_token_id] if t is not None)


def subset_rows(batch: PreparedBatch, rows: list[int]) -> PreparedBatch:
    """Rows of a batch, with padding columns no remaining row uses removed."""
    index = torch.tensor(rows)

    def trim(ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        ids, mask = ids[index], mask[index]
        keep = int(mask.sum(dim=1).max())
        return ids[:, ids.shape[1] - keep :], mask[:, mask.shape[1] - keep :]

    prefix_ids, prefix_mask = trim(batch.prefix_ids, batch.prefix_mask)
    suffix_ids, suffix_mask = trim(batch.suffix_ids, batch.suffix_mask)
    image_embeds, image_mask = trim(batch.image_embeds, batch.image_mask)
    return PreparedBatch(
        prefix_ids,
        prefix_mask,
        image_embeds,
        image_mask,
        suffix_ids,
        suffix_mask,
        [batch.parts[i] for i in rows],
        [batch.num_image_tokens[i] for i in rows],
    )


def image_token_groups(batch: PreparedBatch) -> list[list[int]]:
    """Rows grouped by image token count: pruning keeps counts derived from N, so rows with
    different N cannot share one pruned prefill without changing each other's answers."""
    counts = batch.num_image_tokens
    return [[i for i, n in enumerate(counts) if n == count] for count in sorted(set(counts))]


def per_image_token_count(batch: PreparedBatch, generate: Callable[[PreparedBatch], list[Row]]) -> list[Row]:
    """Run `generate` on each image-token-count group and put its per-row results back in order."""
    rows: list[Row | None] = [None] * len(batch.parts)
    for members in image_token_groups(batch):
        for i, row in zip(members, generate(subset_rows(batch, members)), strict=True):
            rows[i] = row
    return rows


class Runner:
    """What every runner (our eager graph, the exported graphs on any backend) offers: `prepare`
    a batch, `prefill` it, `decode` one token after the outputs of the last call. Those outputs
    are a mapping with the next-token `logits` [B, V] and whatever state the runner carries
    (KV caches); greedy generation over them is written once, here, for every runner."""

    tokenizer = None

    def prepare(self, images: list[Image.Image], prompts: list[str], max_new_tokens: int) -> PreparedBatch:
        raise NotImplementedError

    def prefill(self, batch: PreparedBatch) -> Mapping:
        raise NotImplementedError

    def decode(self, token: Tensor, previous: Mapping) -> Mapping:
        raise NotImplementedError

    def generate(
        self, batch: PreparedBatch, max_new_tokens: int, stop_token_ids: tuple[int, ...] | None = None
    ) -> list[list[int]]:
        """Greedy decoding with the KV cache; rows run in groups of equal image token count."""
        return [tokens for tokens, _ in self.generate_with_logits(batch, max_new_tokens, stop_token_ids)]

    def generate_with_logits(
        self, batch: PreparedBatch, max_new_tokens: int, stop_token_ids: tuple[int, ...] | None = None
    ) -> list[tuple[list[int], Tensor]]:
        """`generate`, and each row's first-position logits [V] (what evaluation compares)."""
        stops = default_stops(self.tokenizer) if stop_token_ids is None else stop_token_ids

        def generate_group(group: PreparedBatch) -> list[tuple[list[int], Tensor]]:
            state = {"outputs": self.prefill(group)}
            first_logits = torch.as_tensor(state["outputs"]["logits"])

            def step(token: Tensor) -> Tensor:
                state["outputs"] = self.decode(token, state["outputs"])
                return torch.as_tensor(state["outputs"]["logits"])

            return list(zip(greedy_loop(first_logits, step, max_new_tokens, stops), first_logits, strict=True))

        return per_image_token_count(batch, generate_group)
