"""Random-weight checkpoints of a real architecture, in the folder layout its family ships (the
Hub's for LLaVA-1.5 / NeXT, original LLaVA's for LLaVA-HR): how users dry-run calibrate, build
and verify (and size a TensorRT build) before their weights arrive, and how we test at scale.

Written shard by shard, in huggingface_hub's shard plan and index: one parameter is made in
fp32 at a time, cast, and a shard is saved as soon as its last tensor is made, so a 7B model
needs about one shard of memory (two, beside a tensor larger than a shard), not the model in fp32.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from ..errors import UserError
from ..files import folder_atomically
from ..progress import progress_bar
from .aliases import ALIASES
from .builtin import SPECIALS, processor_for, random_parameter, wrap_tokenizer
from .checkpoint import plan_shards, write_weight_index
from .families import args_from_config, family_of
from .hr import write_config
from .loader import _alias_config, meta_graph

SHARD_BYTES = 2 << 30  # the Hub's checkpoints shard at 2-10 GB; 2 GiB keeps the peak low


def alias_config(name: str, layers: int | None):
    """The alias's config object, its language model cut to `layers` decoder layers if given."""
    if name not in ALIASES:
        raise UserError(f"unknown model {name!r} for random weights: use one of {', '.join(sorted(ALIASES))}")
    config = _alias_config(copy.deepcopy(ALIASES[name].config))
    text = getattr(config, "text_config", config)  # LLaVA-HR's config is the Llama config itself
    if layers is not None:
        if not 1 <= layers <= text.num_hidden_layers:
            raise UserError(f"--layers must be in 1..{text.num_hidden_layers} for {name}, got {layers}")
        text.num_hidden_layers = layers
    return config


def vocab_tokenizer(vocab_size: int, image_token_id: int | None, pad_token_id: int | None):
    """A byte-level tokenizer over the model's whole vocabulary: the specials where the real
    checkpoint has them (so the config, and its hash that recipes are tied to, is the alias's),
    the 256 bytes, and unused fillers up to `vocab_size`."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    fixed = {"<unk>": 0, "<s>": 1, "</s>": 2}
    placed = {token: i for token, i in (("<image>", image_token_id), ("<pad>", pad_token_id)) if i is not None}
    vocab = dict(fixed)
    free = (i for i in range(vocab_size) if i not in fixed.values() and i not in placed.values())
    for token in alphabet:
        vocab[token] = next(free)
    vocab |= placed
    if "<pad>" not in vocab:  # the config names no pad id: the first free one
        vocab["<pad>"] = next(free)
    vocab |= {f"<unused_{i}>": i for i in free}
    if len(vocab) != vocab_size:
        raise UserError(f"a vocabulary of {vocab_size} cannot hold the specials and 256 bytes")
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer.add_special_tokens([t for t in SPECIALS if t in vocab])
    return wrap_tokenizer(tokenizer, image_token_id is not None)


def write_random_checkpoint(
    name: str,
    out: str | Path,
    layers: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    force: bool = False,
    max_shard_bytes: int = SHARD_BYTES,
    progress: bool = False,
) -> Path:
    """Write alias `name`'s architecture with random weights into `out`; returns `out`."""
    config = alias_config(name, layers)
    args = args_from_config(config)
    family = family_of(args)
    # checkpoint name -> (our name, meta parameter), in the graph's order
    parameters = {family.to_checkpoint(ours): (ours, p) for ours, p in meta_graph(args).named_parameters()}
    plan = plan_shards({name: tuple(p.shape) for name, (_, p) in parameters.items()}, dtype, max_shard_bytes)
    generator = torch.Generator().manual_seed(seed)
    with folder_atomically(out, force, "the checkpoint", _is_checkpoint) as staging:
        unmade = {file: set(names) for file, names in plan.filename_to_tensors.items()}
        shards: dict[str, dict[str, torch.Tensor]] = {file: {} for file in unmade}
        with progress_bar("writing weights", len(parameters), "tensor", progress) as bar:
            for checkpoint_name, (our_name, param) in parameters.items():
                file = plan.tensor_to_filename[checkpoint_name]
                shards[file][checkpoint_name] = random_parameter(our_name, param.shape, generator).to(dtype)
                unmade[file].discard(checkpoint_name)
                if not unmade[file]:  # the shard is complete: write it and let its tensors go
                    save_file(shards.pop(file), str(staging / file), metadata={"format": "pt"})
                    (staging / file).chmod(0o644)  # safetensors writes 0600; a checkpoint is for sharing
                bar.update()
        write_weight_index(staging, plan)
        text = getattr(config, "text_config", config)
        tokenizer = vocab_tokenizer(text.vocab_size, args.image_token_id, getattr(config, "pad_token_id", None))
        if family.original_layout:
            write_config(config.to_diff_dict() | {"model_type": "llava"}, staging)
            tokenizer.save_pretrained(staging)
        else:
            config.save_pretrained(staging)
            tokenizer.chat_template = family.default_chat_template
            processor_for(config, tokenizer).save_pretrained(staging)
    return Path(out)


def _is_checkpoint(folder: Path) -> bool:
    """What --force may replace: a folder holding a checkpoint (ours or not), never another folder."""
    weights = ("model.safetensors", "model.safetensors.index.json")
    return (folder / "config.json").is_file() and any((folder / name).is_file() for name in weights)
