"""Reading and writing LLaVA weights, sharded or not, in the tensor names of the graph's
family (`models.tensor_names`)."""

from __future__ import annotations

import json
import math
import pickle
import sys
from pathlib import Path

import torch
from huggingface_hub import StateDictSplit, save_torch_state_dict, split_state_dict_into_shards_factory
from safetensors import SafetensorError, safe_open
from torch import Tensor

from ..errors import UserError, one_line
from ..graph.llava import LlavaGraph
from ..safety import inside
from ..schema import FILE_NAME, Field, MapOf, Record, Tree, load_json, validate
from .families import family_of

WEIGHT_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SAFETENSORS_PATTERN = "model{suffix}.safetensors"  # huggingface_hub's: model-00001-of-00003.safetensors
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
    as safetensors, in the Hub's shards and index when they exceed `max_shard_bytes`."""
    to_checkpoint = family_of(graph.args).to_checkpoint
    state = {to_checkpoint(k): v.detach() for k, v in graph.state_dict().items()}
    save_torch_state_dict(state, folder, max_shard_size=max_shard_bytes or sys.maxsize)


def plan_shards(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, max_shard_bytes: int) -> StateDictSplit:
    """huggingface_hub's shard plan (file names and index) for tensors not yet made, in the
    order given: a shard closes before the tensor that would take it past `max_shard_bytes`."""
    return split_state_dict_into_shards_factory(
        shapes,
        get_storage_size=lambda shape: math.prod(shape) * dtype.itemsize,
        filename_pattern=SAFETENSORS_PATTERN,
        max_shard_size=max_shard_bytes,
    )


def write_weight_index(folder: Path, plan: StateDictSplit) -> None:
    """The Hub's model.safetensors.index.json for a sharded plan (an unsharded one has none)."""
    if plan.is_sharded:
        index = {"metadata": plan.metadata, "weight_map": plan.tensor_to_filename}
        (folder / WEIGHT_INDEX_FILES[0]).write_text(json.dumps(index, indent=2))
