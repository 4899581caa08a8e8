"""Reading and writing LLaVA weights in the Hugging Face layouts.

Checkpoints on the Hub (transformers 4.x) name tensors `language_model.model.*`,
`vision_tower.vision_model.*`, `multi_modal_projector.*`; transformers 5.x may write
`model.language_model.*`, `model.vision_tower.*`, `lm_head.*`. All of them map onto our
module names here, at load time, so `forward` never cares.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from ..errors import UserError
from ..graph.llava import LlavaGraph
from ..safety import inside
from ..schema import FILE_NAME, Field, MapOf, Record, Tree, load_json, validate

# (pattern on the checkpoint name, replacement giving our name); first match wins.
_TO_OURS = [
    (r"^(?:model\.)?language_model\.lm_head\.", "decoder.lm_head."),
    (r"^lm_head\.", "decoder.lm_head."),
    (r"^(?:model\.)?language_model\.(?:model\.)?", "decoder."),
    (r"^(?:model\.)?vision_tower\.(?:vision_model\.)?embeddings\.", "vision."),
    (r"^(?:model\.)?vision_tower\.(?:vision_model\.)?encoder\.", "vision."),
    (r"^(?:model\.)?vision_tower\.(?:vision_model\.)?", "vision."),
    (r"^(?:model\.)?multi_modal_projector\.", "projector."),
    (r"^(?:model\.)?image_newline$", "image_newline"),
]
# Buffers that older checkpoints store and we recompute.
_IGNORED = re.compile(r"(position_ids|rotary_emb\.inv_freq)$")

WEIGHT_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# What reading a corrupt or truncated weight file raises (torch.load: RuntimeError).
WEIGHT_READ_ERRORS = (OSError, RuntimeError, SafetensorError)
MAX_INDEX_BYTES = 64 << 20  # a 70B index is a few MB
WEIGHT_INDEX = Record(
    {
        "metadata": Field(Tree(mapping=True), required=False),
        "weight_map": Field(MapOf(FILE_NAME, min_items=1, max_items=1 << 20)),
    },
    what="a weight index mapping",
)


def our_name(checkpoint_name: str) -> str | None:
    if _IGNORED.search(checkpoint_name):
        return None
    for pattern, replacement in _TO_OURS:
        name, hits = re.subn(pattern, replacement, checkpoint_name)
        if hits:
            return name
    return checkpoint_name


def hub_name(our: str) -> str:
    """Our parameter name -> the transformers 4.x Hub layout (what most users have on disk)."""
    if our.startswith("decoder.lm_head."):
        return "language_model." + our[len("decoder.") :]
    if our.startswith("decoder."):
        return "language_model.model." + our[len("decoder.") :]
    if our.startswith("vision.layers."):
        return "vision_tower.vision_model.encoder." + our[len("vision.") :]
    if our.startswith(("vision.patch_embedding", "vision.class_embedding", "vision.position_embedding")):
        return "vision_tower.vision_model.embeddings." + our[len("vision.") :]
    if our.startswith("vision."):
        return "vision_tower.vision_model." + our[len("vision.") :]
    if our.startswith("projector."):
        return "multi_modal_projector." + our[len("projector.") :]
    return our


# LLaVA-HR, original-LLaVA layout: (checkpoint prefix, our prefix); first match wins.
_HR_TOWER = "model.vision_tower."
_HR_CLIP = _HR_TOWER + "fast_vision_tower.vision_tower.vision_model."
_HR_CONVNEXT = _HR_TOWER + "slow_vision_tower.vision_tower."
_HR_TO_OURS = [
    (_HR_CLIP + "embeddings.", "vision.fast."),
    (_HR_CLIP + "encoder.", "vision.fast."),
    (_HR_CLIP, "vision.fast."),
    (_HR_CONVNEXT, "vision.slow."),
    (_HR_TOWER + "align_stages_latent.", "vision.adapters."),
    (_HR_TOWER + "align_stages.0.", "vision.fusion."),
    ("model.mm_projector.0.", "projector.linear_1."),
    ("model.mm_projector.2.", "projector.linear_2."),
    ("lm_head.", "decoder.lm_head."),
    ("model.", "decoder."),
]
# The ConvNeXt classifier head, which LLaVA-HR never runs, and recomputed buffers.
_HR_IGNORED = re.compile(rf"^{re.escape(_HR_CONVNEXT)}head\.|(position_ids|rotary_emb\.inv_freq)$")
# LLaVA-HR's ConvNeXt copy calls the layer scale `weight` where timm says `gamma`.
_HR_LAYER_SCALE = re.compile(r"(stages\.\d+\.blocks\.\d+)\.weight$")
_OUR_LAYER_SCALE = re.compile(r"(stages\.\d+\.blocks\.\d+)\.gamma$")


def hr_our_name(checkpoint_name: str) -> str | None:
    """A LLaVA-HR original-layout tensor name -> ours (None: not a parameter we load)."""
    if _HR_IGNORED.search(checkpoint_name):
        return None
    for prefix, ours in _HR_TO_OURS:
        if checkpoint_name.startswith(prefix):
            name = ours + checkpoint_name[len(prefix) :]
            return _HR_LAYER_SCALE.sub(r"\1.gamma", name) if ours == "vision.slow." else name
    return checkpoint_name


def hr_checkpoint_name(our: str) -> str:
    """Our parameter name -> LLaVA-HR's original layout."""
    if our.startswith("vision.fast.layers."):
        return _HR_CLIP + "encoder." + our[len("vision.fast.") :]
    if our.startswith(("vision.fast.patch_embedding", "vision.fast.class_embedding", "vision.fast.position_embedding")):
        return _HR_CLIP + "embeddings." + our[len("vision.fast.") :]
    if our.startswith("vision.slow."):
        return _OUR_LAYER_SCALE.sub(r"\1.weight", _HR_CONVNEXT + our[len("vision.slow.") :])
    for prefix, ours in _HR_TO_OURS[2:]:  # the embeddings / encoder rows are handled above
        if our.startswith(ours):
            return prefix + our[len(ours) :]
    return our


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
    to_ours, to_checkpoint = _layout(graph)
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
        raise UserError(f"cannot read weights in {folder}: {error}") from None
    if "decoder.lm_head.weight" not in loaded and graph.args.text.tie_word_embeddings:
        loaded["decoder.lm_head.weight"] = loaded.get("decoder.embed_tokens.weight")
    missing = sorted(set(expected) - {k for k, v in loaded.items() if v is not None})
    if missing:
        raise UserError(
            f"weights folder {folder} is incomplete: {len(missing)} tensor(s) missing, "
            f"e.g. {to_checkpoint(missing[0])!r}"
        )
    graph.load_state_dict(loaded, assign=True, strict=True)


def _layout(graph: LlavaGraph):
    """(checkpoint name -> ours, ours -> checkpoint name) for the graph's family."""
    return (hr_our_name, hr_checkpoint_name) if graph.args.family == "llava-hr" else (our_name, hub_name)


def save_weights(graph: LlavaGraph, folder: Path, max_shard_bytes: int | None = None) -> None:
    """Write the graph's weights in its family's layout (the Hub's; LLaVA-HR: original LLaVA's)
    as (optionally sharded) safetensors."""
    to_checkpoint = _layout(graph)[1]
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
