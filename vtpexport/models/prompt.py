"""Prompts: chat template, the split around the image, and batching with masks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import UserError

IMAGE_MARKER = "<image>"


@dataclass(frozen=True)
class PromptParts:
    """Token ids before and after the image; the image takes `num_image_tokens` places."""

    prefix_ids: list[int]
    suffix_ids: list[int]

    def expanded(self, image_token_id: int, num_image_tokens: int) -> list[int]:
        """The single-sequence form transformers' processors produce."""
        return self.prefix_ids + [image_token_id] * num_image_tokens + self.suffix_ids


def format_prompt(tokenizer, question: str, chat_template: str) -> str:
    """Wrap a user question in the model's chat template, with one image placeholder.

    A question that already contains `<image>` is taken as a fully formatted prompt.
    """
    if not question.strip():
        raise UserError("empty prompt: pass a question with --prompt")
    count = question.count(IMAGE_MARKER)
    if count > 1:
        raise UserError(f"the prompt has {count} '<image>' markers; one image per prompt is supported")
    if count == 1:
        return question
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    template = getattr(tokenizer, "chat_template", None) or chat_template
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)


def split_prompt(tokenizer, text: str, image_token_id: int | None) -> PromptParts:
    """Tokenize a formatted prompt once and split it at its image token.

    image_token_id None (original LLaVA, no image token in the vocabulary): split the text at
    `<image>` and tokenize both sides, dropping the suffix's BOS, as LLaVA's
    tokenizer_image_token does.
    """
    if image_token_id is None:
        prefix, marker, suffix = text.partition(IMAGE_MARKER)
        if not marker:
            raise UserError("the formatted prompt has no '<image>' marker")
        suffix_ids = tokenizer(suffix, add_special_tokens=True)["input_ids"]
        if suffix_ids[:1] == [tokenizer.bos_token_id]:
            suffix_ids = suffix_ids[1:]
        return PromptParts(tokenizer(prefix, add_special_tokens=True)["input_ids"], suffix_ids)
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    where = [i for i, token in enumerate(ids) if token == image_token_id]
    if len(where) != 1:
        raise UserError(
            f"the tokenized prompt holds {len(where)} image tokens (id {image_token_id}); expected exactly one"
        )
    return PromptParts(prefix_ids=ids[: where[0]], suffix_ids=ids[where[0] + 1 :])


def check_context(parts: PromptParts, num_image_tokens: int, max_new_tokens: int, context: int) -> None:
    need = len(parts.prefix_ids) + num_image_tokens + len(parts.suffix_ids) + max_new_tokens
    if need > context:
        raise UserError(
            f"no room for the image: {len(parts.prefix_ids) + len(parts.suffix_ids)} prompt tokens + "
            f"{num_image_tokens} image tokens + {max_new_tokens} new tokens = {need} > the model's context of "
            f"{context}; shorten the prompt or lower --max-new-tokens"
        )


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """[B, max_len] ids and mask, padded on the left so every row ends on a real token."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
    return ids, mask
