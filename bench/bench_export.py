"""Prefill speed of exported graphs, side by side in one process.

1. ONNX Runtime prefill, pruned vs unpruned, against the FLOPs-predicted ratio (exact
   whole-model count of the LLM prefill at these prompt lengths).
2. ONNX Runtime unpruned vs our eager PyTorch graph vs transformers' eager model.
3. The cost of the scoring ops inside a pruned prefill (eager timing of the scoring functions
   at the shapes they see, against the eager pruned prefill).

Model: random weights, LLaVA-1.5 architecture, LLM width 1024 x 8 layers, 576 visual tokens.
Usage: python bench/bench_export.py [--workdir DIR] [--repeats N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import alternate, random_llava  # noqa: E402

from vtpexport.export.build import build_onnx  # noqa: E402
from vtpexport.flops import exact_prefill_macs  # noqa: E402
from vtpexport.models.loader import load_model  # noqa: E402
from vtpexport.pruning.fastv import fastv_scores  # noqa: E402
from vtpexport.pruning.fitprune import fitprune_scores  # noqa: E402
from vtpexport.pruning.ops import topk_ascending  # noqa: E402
from vtpexport.recipe import ModelRef, Recipe, ScheduleSpec  # noqa: E402
from vtpexport.runtime.ort import OrtRunner  # noqa: E402

PREFIX, SUFFIX, N = 35, 40, 576


def schedules(layers: int) -> dict[str, ScheduleSpec]:
    drop = [0] * layers
    drop[1], drop[3], drop[5] = 192, 144, 96  # 576 -> 384 -> 240 -> 144
    return {
        "fastv K=2 R=0.5": ScheduleSpec("fastv", layer=2, ratio=0.5),
        "pyramiddrop 2/4/6 l=0.5": ScheduleSpec("pyramiddrop", layers=(2, 4, 6), ratio=0.5),
        "fitprune 3 drops": ScheduleSpec("fitprune", drop=tuple(drop), visual_tokens=N),
    }


def prefill_feeds(model, batch_size: int = 1) -> dict[str, np.ndarray]:
    g = torch.Generator().manual_seed(0)
    vocab = 250  # ids the byte tokenizer knows
    return {
        "prefix_ids": torch.randint(5, vocab, (batch_size, PREFIX), generator=g).numpy(),
        "prefix_mask": np.ones((batch_size, PREFIX), dtype=np.int64),
        "image_embeds": torch.randn(batch_size, N, model.args.text.hidden_size, generator=g).numpy(),
        "suffix_ids": torch.randint(5, vocab, (batch_size, SUFFIX), generator=g).numpy(),
        "suffix_mask": np.ones((batch_size, SUFFIX), dtype=np.int64),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "vtpexport-bench")
    parser.add_argument("--repeats", type=int, default=7)
    options = parser.parse_args()
    torch.set_num_threads(2)
    workdir = options.workdir
    folder = random_llava(workdir / "model-w1024-l8", width=1024, layers=8)
    model = load_model(str(folder))
    args = model.args
    ref = ModelRef(args.family, str(folder), args.config_hash())
    exports = {"unpruned": workdir / "export-unpruned"}
    if not (exports["unpruned"] / "manifest.json").is_file():
        build_onnx(str(folder), None, str(exports["unpruned"]), force=True, report=print)
    for name, schedule in schedules(args.text.num_layers).items():
        path = workdir / f"export-{schedule.method}"
        recipe_path = workdir / f"{schedule.method}.yaml"
        Recipe(schedule.method, ref, schedule=schedule).save(recipe_path)
        if not (path / "manifest.json").is_file():
            build_onnx(str(folder), str(recipe_path), str(path), force=True, report=print)
        exports[name] = path

    feeds = prefill_feeds(model)
    # Spinning ORT threads would steal the cores from the torch runs measured alternately with them.
    quiet = {"session.intra_op.allow_spinning": "0"}
    runners = {name: OrtRunner(path, session_config=quiet) for name, path in exports.items()}
    times = alternate(
        {name: (lambda r=r: r.run_graph("prefill", feeds)) for name, r in runners.items()}, options.repeats
    )
    base_macs = exact_prefill_macs(args, None, N, PREFIX, SUFFIX)
    print(f"\n1. ONNX Runtime prefill, batch 1, P={PREFIX} + N={N} + T={SUFFIX} tokens, median of {options.repeats}")
    print(f"{'graph':26s} {'ms':>8s} {'speedup':>8s} {'FLOPs-predicted':>16s} {'achieved/predicted':>19s}")
    base = times["unpruned"]
    for name, seconds in times.items():
        recipe = None if name == "unpruned" else runners[name].recipe
        llm = exact_prefill_macs(args, recipe, N, PREFIX, SUFFIX)
        predicted = (base_macs.llm + base_macs.attention + base_macs.lm_head) / (llm.llm + llm.attention + llm.lm_head)
        speedup = base / seconds
        print(f"{name:26s} {seconds * 1e3:8.1f} {speedup:8.2f} {predicted:16.2f} {speedup / predicted:18.0%}")

    print("\n2. Unpruned prefill: ONNX Runtime vs our eager PyTorch vs transformers eager")
    from transformers import AutoModelForImageTextToText

    hf = AutoModelForImageTextToText.from_pretrained(folder, attn_implementation="eager").eval()
    tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
    image_token = torch.full((1, N), args.image_token_id)
    input_ids = torch.cat([tensors["prefix_ids"], image_token, tensors["suffix_ids"]], dim=1)
    hf_embeds = hf.get_input_embeddings()(input_ids)
    hf_embeds[:, PREFIX : PREFIX + N] = tensors["image_embeds"]
    image_mask = torch.ones(1, N, dtype=torch.long)

    @torch.no_grad()
    def ours(schedule=None):
        return model.graph.prefill(
            tensors["prefix_ids"],
            tensors["image_embeds"],
            tensors["suffix_ids"],
            tensors["prefix_mask"],
            image_mask,
            tensors["suffix_mask"],
            schedule,
        )

    @torch.no_grad()
    def transformers_eager():
        return hf(inputs_embeds=hf_embeds, logits_to_keep=1)

    side = alternate(
        {
            "onnxruntime": lambda: runners["unpruned"].run_graph("prefill", feeds),
            "ours (eager torch)": ours,
            "transformers eager": transformers_eager,
        },
        options.repeats,
    )
    for name, seconds in side.items():
        print(f"{name:26s} {seconds * 1e3:8.1f} ms  ({side['onnxruntime'] / seconds:5.2f}x of onnxruntime speed)")

    print("\n3. Scoring cost inside the pruned prefill (eager timings at the shapes the scoring sees)")
    heads, seq = args.text.num_heads, PREFIX + N + SUFFIX
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(1, heads, seq, seq, generator=g), dim=-1)
    key_mask = torch.ones(1, seq, dtype=torch.long)
    scoring = {
        "fitprune 3 drops": lambda: [
            topk_ascending(fitprune_scores(probs[:, :, PREFIX:], PREFIX, N, key_mask), N - 192) for _ in range(3)
        ],
        "fastv K=2 R=0.5": lambda: topk_ascending(fastv_scores(probs[:, :, -1], PREFIX, N, key_mask), N // 2),
    }
    for name, run in scoring.items():
        recipe = runners[name].recipe
        pruned = alternate(
            {
                "prefill": lambda r=recipe: ours(r.schedule),
                "scoring": run,
            },
            options.repeats,
        )
        share = pruned["scoring"] / pruned["prefill"]
        print(
            f"{name:26s} scoring {pruned['scoring'] * 1e3:6.2f} ms of {pruned['prefill'] * 1e3:7.1f} ms "
            f"eager pruned prefill = {share:.1%} (target < 5%)"
        )


if __name__ == "__main__":
    main()
