"""What every runner of an export folder shares: the manifest, tokenizer and image processor,
the prompt, the LLM graph's context and generation feeds. Backends (ONNX
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
from ..export.spec import IMAGE_EMBEDS, LLM, PREFIX_IDS, PROMPT_INPUTS, SUFFIX_IDS, SUFFIX_MASK, cache_feedback
from ..models.families import args_from_config
from ..models.loader import config_from_folder, load_processing
from ..recipe import Recipe, tile_rule
from .batch import PreparedBatch, Runner, build_batch, image_tiles


def to_numpy(tensor: Tensor) -> np.ndarray:
    """numpy has no bfloat16; ml_dtypes' (which onnx and ONNX Runtime read) has the same bits."""
    if tensor.dtype == torch.bfloat16:
        return tensor.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def to_torch(array: np.ndarray) -> Tensor:
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def export_recipe(folder: Path) -> Recipe | None:
    """The recipe an export folder was built with; None for an unpruned export."""
    recipe_file = folder / "recipe.yaml"
    return Recipe.load(recipe_file) if recipe_file.is_file() else None


class ExportRunner(Runner):
    """Loads an export folder's description and generates with its graphs; `run_graph` is the backend."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        config = config_from_folder(self.folder)
        self.args = args_from_config(config)
        self.tokenizer, self.image_processor, self.chat_template = load_processing(self.folder, config)
        self.recipe = export_recipe(self.folder)
        # The LLM graph's cache outputs -> the inputs the next call feeds them to. Runners keep
        # these outputs where the backend runs (device memory), so a step never copies them to the host.
        self.cache_feedback = cache_feedback(self.args, self.recipe)
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
        inputs = self.args.layout.vision_inputs(tiles, size, *tile_rule(self.recipe, self.args))
        feeds = {name: to_numpy(t) for name, t in zip(names, inputs, strict=False)}
        if self.text_tokenizer is not None:
            feeds["text_embeds"] = self.text_embeddings(question)
        return to_torch(self.run_graph("vision", feeds)[IMAGE_EMBEDS][0])

    def prepare(self, images: list[Image.Image], prompts: list[str], max_new_tokens: int) -> PreparedBatch:
        return build_batch(
            self.tokenizer, self.chat_template, self.args, images, prompts, max_new_tokens, self.image_embeddings
        )

    def prefill(self, batch: PreparedBatch) -> dict[str, np.ndarray]:
        if not bool(batch.image_mask.all()):
            raise UserError("the prefill graph takes images of one token count per batch; group images by size")
        return self.run_prompt({name: to_numpy(getattr(batch, name)) for name in PROMPT_INPUTS})

    def _empty_feeds(self, rows: int) -> dict[str, np.ndarray]:
        return {t["name"]: self._empty(t["name"], rows) for t in self.manifest["graphs"][LLM]["inputs"]}

    def run_prompt(self, prompt: dict[str, np.ndarray]) -> dict:
        """The LLM graph's context phase: the prompt's prefix / image / suffix inputs after empty caches."""
        return self.run_graph(LLM, self._empty_feeds(prompt[PREFIX_IDS].shape[0]) | prompt, "context")

    def decode(self, token: Tensor, previous: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One step after the outputs of the prompt's (or the last step's) call: the token as a
        one-token suffix, no prefix and no image."""
        rows = token.shape[0]
        feeds = self._empty_feeds(rows)
        feeds |= {self.cache_feedback[name]: value for name, value in previous.items() if name in self.cache_feedback}
        feeds[SUFFIX_IDS] = token.numpy().reshape(-1, 1).astype(np.int64)
        feeds[SUFFIX_MASK] = np.ones((rows, 1), dtype=np.int64)
        return self.run_graph(LLM, feeds, "generation")
