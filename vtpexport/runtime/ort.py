"""Run an export folder with ONNX Runtime: the same interface as the eager reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..errors import UserError
from ..export.manifest import read_manifest
from ..export.spec import decode_input_name
from ..models.anyres import packing_index
from ..models.families import args_from_config
from ..models.loader import config_from_folder, load_processing
from ..recipe import Recipe
from .batch import PreparedBatch, build_batch, default_stops, greedy_loop, image_tiles, per_image_token_count

PROVIDERS = {
    "ort": ["CPUExecutionProvider"],
    "ort-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "ort-trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class OrtRunner:
    """Loads vision / prefill / decode sessions of an export folder and generates with them."""

    def __init__(self, folder: str | Path, backend: str = "ort", session_config: dict[str, str] | None = None):
        """session_config: ONNX Runtime session config entries (e.g. to turn thread spinning off)."""
        import onnxruntime as ort

        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        available = set(ort.get_available_providers())
        providers = [p for p in PROVIDERS[backend] if p in available]
        if PROVIDERS[backend][0] not in available:
            raise UserError(
                f"ONNX Runtime here has no {PROVIDERS[backend][0]} (available: {', '.join(sorted(available))})"
            )
        config = config_from_folder(self.folder)
        self.args = args_from_config(config)
        self.tokenizer, self.image_processor, self.chat_template = load_processing(self.folder, config)
        recipe_file = self.folder / "recipe.yaml"
        self.recipe = Recipe.load(recipe_file) if recipe_file.is_file() else None
        options = ort.SessionOptions()
        options.log_severity_level = 3
        for key, value in (session_config or {}).items():
            options.add_session_config_entry(key, value)
        self.sessions = {
            name: ort.InferenceSession(str(self.folder / graph["file"]), options, providers=providers)
            for name, graph in self.manifest["graphs"].items()
        }

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.sessions[graph]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds), strict=True))

    def image_embeddings(self, image: Image.Image) -> Tensor:
        """The image's visual tokens [n, D], from vision.onnx."""
        tiles, size = image_tiles(self.image_processor, self.args, image)
        feeds = {"pixel_values": tiles.numpy().astype(np.float32)}
        if self.args.family == "llava-next":
            feeds["packing_index"] = packing_index(size, self.args)
        return torch.from_numpy(self._run("vision", feeds)["image_embeds"][0])

    def prepare(self, images: list[Image.Image], prompts: list[str], max_new_tokens: int) -> PreparedBatch:
        return build_batch(
            self.tokenizer, self.chat_template, self.args, images, prompts, max_new_tokens, self.image_embeddings
        )

    def prefill(self, batch: PreparedBatch) -> dict[str, np.ndarray]:
        if not bool(batch.image_mask.all()):
            raise UserError("prefill.onnx takes images of one token count per batch; group images by size")
        feeds = {
            "prefix_ids": batch.prefix_ids,
            "prefix_mask": batch.prefix_mask,
            "image_embeds": batch.image_embeds,
            "suffix_ids": batch.suffix_ids,
            "suffix_mask": batch.suffix_mask,
        }
        return self._run("prefill", {k: v.numpy() for k, v in feeds.items()})

    def decode(self, token: Tensor, previous: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One step after a prefill's (or a decode's) outputs."""
        feeds = {decode_input_name(name): value for name, value in previous.items() if name != "logits"}
        feeds["input_ids"] = token.numpy().reshape(-1, 1).astype(np.int64)
        return self._run("decode", feeds)

    def generate(self, batch: PreparedBatch, max_new_tokens: int, stop_token_ids: tuple[int, ...] | None = None):
        """Greedy decoding with the exported graphs."""
        stops = default_stops(self.tokenizer) if stop_token_ids is None else stop_token_ids

        def generate_group(group: PreparedBatch) -> list[list[int]]:
            state = {"outputs": self.prefill(group)}

            def step(token: Tensor) -> Tensor:
                state["outputs"] = self.decode(token, state["outputs"])
                return torch.from_numpy(state["outputs"]["logits"])

            return greedy_loop(torch.from_numpy(state["outputs"]["logits"]), step, max_new_tokens, stops)

        return per_image_token_count(batch, generate_group)
