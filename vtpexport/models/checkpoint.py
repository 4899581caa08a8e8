"""Reading and writing LLaVA weights, sharded or not, in the tensor names of the graph's
family (`models.tensor_names`)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from ..errors import UserError, one_line
from ..graph.llava import LlavaGraph
from ..safety import inside
from ..schema import FILE_NAME, Field, MapOf, Record, Tree, load_json, validate
from .families import family_of

WEIGHT_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# What reading a corrupt or truncated weight file raises (torch.load: RuntimeError; a pickle
# with code in it, which weights_only refuses to run: UnpicklingError).
WEIGHT_READ_ERRORS = (OSError, RuntimeError, SafetensorError, pickle.UnpicklingError)
MAX_INDEX_BYTES = 64 << 20  # a 70B index is a few MB
WEIGHT_INDEX = Record(
    {
        "metadata": Field(Tree(mapping=True), required=False),
        "weight_map": Field(MapOf(FILE_NAME, min_items=1, max_items=1 << 20)),
    },
    what="a weight index mapping",
)


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint folder, sharded or not, safetensors preferred."""
    for index_name in WEIGHT_INDEX_FILES:
        index = folder / index_name
        if index.is_file():
            document = validate(WEIGHT_INDEX, load_json(index, "weight index", MAX_INDEX_BYTES), str(index))
            shards = [inside(folder, s, f"{index} weight_map") for s in sorted(set(document["weight_map"].values()))]
            missing = [s.relative_to(folder.resolve()) for s in shards if not s.is_file()]
            if missing:
                raise UserError(
                    f"weights folder {folder} is incomplete: {len(missing)} shard(s) missing, e.g. {missing[0]}"
                )
            return shards
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
    raise UserError(f"no weights in {folder}: expected model.safetensors, pytorch_model.bin or a sharded index")


def _read_tensors(path: Path):
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                yield key, f.get_tensor(key)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        yield from state.items()


def load_weights(graph: LlavaGraph, folder: Path, dtype: torch.dtype) -> None:
    """Fill a (possibly meta-device) graph from a checkpoint folder, shard by shard."""
    expected = dict(graph.named_parameters())
    family = family_of(graph.args)
    to_ours, to_checkpoint = family.to_ours, family.to_checkpoint
    loaded: dict[str, Tensor] = {}
    try:
        for path in weight_files(folder):
            for key, tensor in _read_tensors(path):
                name = to_ours(key)
                if name is None:
                    continue
                if name not in expected:
                    raise UserError(
                        f"unexpected tensor {key!r} in {path.name}: is this checkpoint of another architecture?"
                    )
                if tuple(tensor.shape) != tuple(expected[name].shape):
                    raise UserError(
                        f"tensor {key!r} in {path.name} has shape {tuple(tensor.shape)}, the config implies "
                        f"{tuple(expected[name].shape)}: config.json and weights disagree"
                    )
                loaded[name] = tensor.to(dtype)
    except WEIGHT_READ_ERRORS as error:
        raise UserError(f"cannot read weights in {folder}: {one_line(error)}") from None
    if "decoder.lm_head.weight" not in loaded and graph.args.text.tie_word_embeddings:
        loaded["decoder.lm_head.weight"] = loaded.get("decoder.embed_tokens.weight")
    missing = sorted(set(expected) - {k for k, v in loaded.items() if v is not None})
    if missing:
        raise UserError(
            f"weights folder {folder} is incomplete: {len(missing)} tensor(s) missing, "
            f"e.g. {to_checkpoint(missing[0])!r}"
        )
    graph.load_state_dict(loaded, assign=True, strict=True)


def save_weights(graph: LlavaGraph, folder: Path, max_shard_bytes: int | None = None) -> None:
    """Write the graph's weights in its family's layout (the Hub's; LLaVA-HR: original LLaVA's)
    as (optionally sharded) safetensors."""
    to_checkpoint = family_of(graph.args).to_checkpoint
    state = {to_checkpoint(k): v.detach().contiguous() for k, v in graph.state_dict().items()}
    if max_shard_bytes is None:
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
