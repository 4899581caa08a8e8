"""What every runner of an export folder shares: the manifest, tokenizer and image processor,
the prompt, the LLM graph's context and generation feeds and the greedy loop. Backends (ONNX
Runtime in `ort.py`, TensorRT in `trt.py`) only say how one graph runs on a dict of numpy arrays."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from transformers import AutoTokenizer

from ..errors import UserError
from ..export.manifest import export_file, read_manifest
from ..export.spec import LLM, past_input_name
from ..models.families import args_from_config
from ..models.loader import config_from_folder, load_processing
from ..recipe import Recipe
from .batch import PreparedBatch, build_batch, default_stops, greedy_loop, image_tiles, per_image_token_count


def is_cache(output_name: str) -> bool:
    """The LLM graph's KV caches, masks and positions: runners keep them where the backend runs
    (device memory) and only feed them back, so a step never copies them to the host."""
    return output_name.startswith("present")


def to_numpy(tensor: Tensor) -> np.ndarray:
    """numpy has no bfloat16; ml_dtypes' (which onnx and ONNX Runtime read) has the same bits."""
    if tensor.dtype == torch.bfloat16:
        return tensor.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def to_torch(array: np.ndarray) -> Tensor:
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


class ExportRunner:
    """Loads an export folder's description and generates with its graphs; `run_graph` is the backend."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        config = config_from_folder(self.folder)
        self.args = args_from_config(config)
        self.tokenizer, self.image_processor, self.chat_template = load_processing(self.folder, config)
        recipe_file = self.folder / "recipe.yaml"
        self.recipe = Recipe.load(recipe_file) if recipe_file.is_file() else None
        text_encoder = self.manifest.get("text_encoder")
        self.text_tokenizer = None
        if text_encoder is not None:
            tokenizer = export_file(self.folder, text_encoder["tokenizer"], "text_encoder.tokenizer")
            self.text_tokenizer = AutoTokenizer.from_pretrained(tokenizer)
            self.text_tokenizer.padding_side = "right"
            self.text_len_max = self.manifest["dims"]["text_len"]["max"]

    def run_graph(self, graph: str, feeds: dict[str, np.ndarray], profile: str | None = None) -> dict[str, np.ndarray]:
        """Run one graph; `profile` names the LLM graph's phase (its optimization profile)."""
        raise NotImplementedError

    def _empty(self, name: str, batch: int) -> np.ndarray:
        """A zero-length LLM input of `batch` rows: an empty cache, or the generation phase's empty prompt part."""
        spec = next(t for t in self.manifest["graphs"][LLM]["inputs"] if t["name"] == name)
        shape = [batch if d == "batch" else (0 if isinstance(d, str) else d) for d in spec["dims"]]
        return np.zeros(shape, dtype=ml_dtypes.bfloat16 if spec["dtype"] == "bfloat16" else spec["dtype"])

    def text_embeddings(self, question: str) -> np.ndarray:
        """CLIP text embeddings [1, P] of the question, from the text encoder graph."""
        ids = self.text_tokenizer([question], truncation=True, max_length=self.text_len_max, return_tensors="np")
        return self.run_graph("text_encoder", {"text_input_ids": ids["input_ids"].astype(np.int64)})["text_embeds"]

    def image_embeddings(self, image: Image.Image, question: str | None = None) -> Tensor:
        """The image's visual tokens [n, D], from the vision graph (a text-guided selector reads the question)."""
        tiles, size = image_tiles(self.image_processor, self.args, image)
        names = [entry["name"] for entry in self.manifest["graphs"]["vision"]["inputs"]]
        # The layout's inputs come first; a text-guided selector's text_embeds follow.
        keep = self.recipe.tile_keep(self.args) if self.recipe is not None else None
        inputs = self.args.layout.vision_inputs(tiles, size, keep)
        feeds = {name: to_numpy(t) for name, t in zip(names, inputs, strict=False)}
        if self.text_tokenizer is not None:
            feeds["text_embeds"] = self.text_embeddings(question)
        return to_torch(self.run_graph("vision", feeds)["image_embeds"][0])

    def prepare(self, images: list[Image.Image], prompts: list[str], max_new_tokens: int) -> PreparedBatch:
        return build_batch(
            self.tokenizer, self.chat_template, self.args, images, prompts, max_new_tokens, self.image_embeddings
        )

    def prefill(self, batch: PreparedBatch) -> dict[str, np.ndarray]:
        if not bool(batch.image_mask.all()):
            raise UserError("the prefill graph takes images of one token count per batch; group images by size")
        prompt = {
            "prefix_ids": batch.prefix_ids,
            "prefix_mask": batch.prefix_mask,
            "image_embeds": batch.image_embeds,
            "suffix_ids": batch.suffix_ids,
            "suffix_mask": batch.suffix_mask,
        }
        return self.run_prompt({k: to_numpy(v) for k, v in prompt.items()})

    def run_prompt(self, prompt: dict[str, np.ndarray]) -> dict:
        """The LLM graph's context phase: the prompt's prefix / image / suffix inputs after empty caches."""
        rows = prompt["prefix_ids"].shape[0]
        feeds = {t["name"]: self._empty(t["name"], rows) for t in self.manifest["graphs"][LLM]["inputs"]}
        return self.run_graph(LLM, feeds | prompt, "context")

    def decode(self, token: Tensor, previous: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One step after the outputs of the prompt's (or the last step's) call: the token as a
        one-token suffix, no prefix and no image."""
        rows = token.shape[0]
        feeds = {past_input_name(name): value for name, value in previous.items() if name != "logits"}
        feeds |= {name: self._empty(name, rows) for name in ("prefix_ids", "prefix_mask", "image_embeds")}
        feeds["suffix_ids"] = token.numpy().reshape(-1, 1).astype(np.int64)
        feeds["suffix_mask"] = np.ones((rows, 1), dtype=np.int64)
        return self.run_graph(LLM, feeds, "generation")

    def generate(self, batch: PreparedBatch, max_new_tokens: int, stop_token_ids: tuple[int, ...] | None = None):
        """Greedy decoding with the exported graphs."""
        return [tokens for tokens, _ in self.generate_with_logits(batch, max_new_tokens, stop_token_ids)]

    def generate_with_logits(
        self, batch: PreparedBatch, max_new_tokens: int, stop_token_ids: tuple[int, ...] | None = None
    ) -> list[tuple[list[int], Tensor]]:
        """`generate`, and each row's first-position logits [V] (what evaluation compares)."""
        stops = default_stops(self.tokenizer) if stop_token_ids is None else stop_token_ids

        def generate_group(group: PreparedBatch) -> list[tuple[list[int], Tensor]]:
            state = {"outputs": self.prefill(group)}
            first_logits = torch.from_numpy(state["outputs"]["logits"])

            def step(token: Tensor) -> Tensor:
                state["outputs"] = self.decode(token, state["outputs"])
                return torch.from_numpy(state["outputs"]["logits"])

            return list(zip(greedy_loop(first_logits, step, max_new_tokens, stops), first_logits, strict=True))

        return per_image_token_count(batch, generate_group)
