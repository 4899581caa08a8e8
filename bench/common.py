"""Helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from pathlib import Path

from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

from vtpexport.models.builtin import write_random_model


def random_llava(folder: Path, width: int, layers: int, vision_width: int = 256, vision_layers: int = 4) -> Path:
    """A random-weight LLaVA-1.5-architecture model: 336 px / 14 px patches = 576 visual tokens."""
    vision = CLIPVisionConfig(
        image_size=336,
        patch_size=14,
        hidden_size=vision_width,
        intermediate_size=4 * vision_width,
        num_hidden_layers=vision_layers,
        num_attention_heads=max(1, vision_width // 64),
        projection_dim=vision_width,
    )
    text = LlamaConfig(
        vocab_size=32064,
        hidden_size=width,
        intermediate_size=int(width * 2.6875),
        num_hidden_layers=layers,
        num_attention_heads=width // 64,
        num_key_value_heads=width // 64,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=4,
    )
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=3, pad_token_id=4)
    if not (folder / "config.json").is_file():
        write_random_model(config, folder, seed=0, max_shard_bytes=1 << 30)
    return folder


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def alternate(runs: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each run, measured alternately so machine noise hits all sides alike."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - start)
    return {name: sorted(values)[len(values) // 2] for name, values in samples.items()}
