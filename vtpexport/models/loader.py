"""`--model` resolution (alias, built-in or folder), weight discovery, and loading."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoProcessor, AutoTokenizer, PretrainedConfig

from ..errors import UserError
from ..graph.args import LlavaArgs
from ..graph.llava import LlavaGraph
from .aliases import ALIASES
from .builtin import BUILTIN_NAMES, builtin_folder
from .checkpoint import load_weights
from .families import args_from_config, family_of, family_of_config
from .hr import hr_config, pad_to_square_processor

WEIGHTS_ENV = "VTPEXPORT_WEIGHTS_DIR"


@dataclass
class ModelSource:
    """What `--model` named: its architecture, and its folder when weights were found."""

    name: str
    kind: str  # "alias" | "builtin" | "folder"
    config: PretrainedConfig
    folder: Path | None
    looked_in: list[str]

    @property
    def args(self) -> LlavaArgs:
        return args_from_config(self.config)


def config_from_folder(folder: Path) -> PretrainedConfig:
    """A model folder's config: Hugging Face layout, or original-LLaVA layout for LLaVA-HR."""
    path = folder / "config.json"
    if not path.is_file():
        raise UserError(f"no config.json in {folder}: point --model/--weights at a Hugging Face model folder")
    try:
        data = json.loads(path.read_text())
        # Original LLaVA's model_type "llava" would be read as transformers' Llava by AutoConfig.
        if isinstance(data, dict) and family_of_config(data).original_layout:
            return hr_config(data)
        return AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"cannot read {path}: {error}") from None


def hf_cache_snapshot(repo_id: str) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def _alias_folder(name: str, weights: str | None) -> tuple[Path | None, list[str]]:
    alias = ALIASES[name]
    looked_in = []
    root = os.environ.get(WEIGHTS_ENV)
    if root:
        for candidate in (Path(root) / name, Path(root) / alias.repo_id.split("/")[-1]):
            looked_in.append(str(candidate))
            if (candidate / "config.json").is_file():
                return candidate, looked_in
    else:
        looked_in.append(f"${WEIGHTS_ENV} (unset)")
    from huggingface_hub.constants import HF_HUB_CACHE

    looked_in.append(f"Hugging Face cache {HF_HUB_CACHE} ({alias.repo_id})")
    return hf_cache_snapshot(alias.repo_id), looked_in


def resolve_model(spec: str, weights: str | None = None) -> ModelSource:
    """Resolve `--model` and `--weights` without loading any weights."""
    if weights is not None:
        folder = Path(weights)
        if not folder.is_dir():
            raise UserError(f"weights folder not found: {folder}")
    if spec in BUILTIN_NAMES:
        folder = Path(weights) if weights else builtin_folder(spec)
        return ModelSource(spec, "builtin", config_from_folder(folder), folder, [str(folder)])
    if spec in ALIASES:
        config_dict = dict(ALIASES[spec].config)
        if weights:
            folder, looked_in = Path(weights), [weights]
            return ModelSource(spec, "alias", config_from_folder(folder), folder, looked_in)
        folder, looked_in = _alias_folder(spec, weights)
        config = config_from_folder(folder) if folder else _alias_config(config_dict)
        return ModelSource(spec, "alias", config, folder, looked_in)
    path = Path(spec)
    if path.is_dir():
        return ModelSource(spec, "folder", config_from_folder(path), path, [str(path)])
    if "/" in spec or path.suffix:
        raise UserError(f"model folder not found: {spec}")
    known = ", ".join(sorted(ALIASES) + sorted(BUILTIN_NAMES))
    raise UserError(f"unknown model {spec!r}: use one of {known}, or a local Hugging Face model folder")


def _alias_config(config_dict: dict) -> PretrainedConfig:
    if family_of_config(config_dict).original_layout:
        return hr_config(config_dict)
    model_type = config_dict.pop("model_type")
    return AutoConfig.for_model(model_type, **config_dict)


def architecture(spec: str, weights: str | None = None) -> LlavaArgs:
    """The architecture alone: works for aliases without weights on disk."""
    return resolve_model(spec, weights).args


def meta_graph(args: LlavaArgs) -> LlavaGraph:
    """The graph with shapes but no storage: parameter counts, FLOPs, loading target."""
    with torch.device("meta"):
        return LlavaGraph(args)


@dataclass
class LoadedModel:
    source: ModelSource
    args: LlavaArgs
    graph: LlavaGraph
    tokenizer: object
    image_processor: object
    chat_template: str
    text_encoder: object = None  # models.text_encoder.TextEncoder, attached for text-guided selectors


def load_model(spec: str, weights: str | None = None, dtype: torch.dtype = torch.float32) -> LoadedModel:
    source = resolve_model(spec, weights)
    if source.folder is None:
        raise UserError(
            f"no weights found for {spec}: looked in {'; '.join(source.looked_in)}. Pass --weights DIR "
            f"pointing at a local copy of {ALIASES[spec].repo_id}, or set ${WEIGHTS_ENV}"
        )
    args = source.args
    graph = meta_graph(args)
    load_weights(graph, source.folder, dtype)
    graph.eval()
    return LoadedModel(source, args, graph, *load_processing(source.folder, source.config))


def load_processing(folder: Path, config: PretrainedConfig) -> tuple[object, object, str]:
    """(tokenizer, image processor, chat template) of a model or export folder."""
    args = args_from_config(config)
    try:
        if family_of(args).original_layout:
            # Original LLaVA ships a tokenizer only; the image processor is LLaVA-HR's fixed recipe.
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            return tokenizer, pad_to_square_processor(args.input_image_size), _template(tokenizer, args)
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True, backend="pil")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"cannot load the tokenizer / image processor from {folder}: {error}") from None
    return processor.tokenizer, processor.image_processor, _template(processor, args)


def _template(processor, args: LlavaArgs) -> str:
    return getattr(processor, "chat_template", None) or family_of(args).default_chat_template
