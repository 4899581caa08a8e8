"""Eager prefill on a CUDA machine: the full llava-1.5-7b LLM, unpruned against FitPrune,
PyramidDrop and FastV, measured speed-up beside the FLOPs-predicted one; then `vtpexport
calibrate --device cuda` on the same architecture.

- The decoder (all 32 layers) is made on the device with random weights in --dtype (bf16), so
  nothing is read from disk; attention is PyTorch's SDPA (`graph/attention.py`), and a pruning
  layer adds its fp32 score rows beside it, as in inference.
- The prompt is what `calibrate` counts with: 35 text tokens, the image's visual tokens (random
  embeddings: the vision tower is the same for every method, so it is left out), 40 text tokens.
- Recipes: the shipped ones under recipes/ where the model has them (FitPrune at a 55% cut, which
  spends 0.45 of the visual-token FLOPs; PyramidDrop; FastV), else PyramidDrop and FastV solved for
  --budget and FitPrune from this script's own calibration.
- Times: median of --repeats prefills per method, the methods alternating round by round so that
  clock and thermal drift hit all alike, after --warmup rounds; CUDA-synchronised.
- Predicted speed-up: the exact MACs of the LLM prefill (decoder layers, attention and lm_head;
  `flops.exact_prefill_macs` less the vision tower and projector), unpruned over pruned.
- calibrate: `random-weights` writes the checkpoint (bf16) and `calibrate --device cuda` runs on
  it as a user would; its wall time and the forward passes per sample it reports.

Dry run on any machine (the built-in 4-layer tiny model, 1 round, a 1-sample calibration):
    python bench/bench_gpu.py --model tiny-llava-1.5 --device cpu --repeats 1 --warmup 0 --samples 1
Usage: PYTHONPATH=. python bench/bench_gpu.py [--model llava-1.5-7b] [--device cuda] [--dtype bfloat16]
       [--repeats 20] [--samples 8] [--budget 0.45] [--workdir DIR] [--no-calibrate]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from vtpexport.calibrate import ILLUSTRATIVE_TEXT, CalibrationRequest, calibrate, reference_image
from vtpexport.flops import _vision_macs, exact_prefill_macs
from vtpexport.graph.decoder import Decoder
from vtpexport.models.builtin import BUILTIN_NAMES
from vtpexport.models.loader import architecture
from vtpexport.recipe import Recipe

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {
    "fitprune": "fitprune-{model}-55.yaml",
    "pyramiddrop": "pyramiddrop-{model}.yaml",
    "fastv": "fastv-{model}.yaml",
}


def random_decoder(args, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Decoder:
    """The LLM with random weights made on `device` in `dtype` (never held in fp32)."""
    with torch.device("meta"):
        decoder = Decoder(args.text).to(dtype)
    decoder = decoder.to_empty(device=device)
    generator = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, parameter in decoder.named_parameters():
            if "norm" in name:
                parameter.fill_(1.0)
            else:
                parameter.normal_(0.0, 0.02, generator=generator)
    return decoder.eval()


def vtpexport(workdir: Path, *args: str) -> tuple[str, float]:
    """The CLI in its own process (as a user runs it): (its output, wall seconds). Its current
    recipe is kept in `workdir`, so the bench leaves the user's alone."""
    env = os.environ | {"PYTHONPATH": str(ROOT), "COLUMNS": "250", "VTPEXPORT_STATE_DIR": str(workdir / "state")}
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", "from vtpexport.cli import main; main()", *args],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"vtpexport {' '.join(args)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return done.stdout, time.monotonic() - start


def calibrate_on_device(options, workdir: Path) -> tuple[Recipe, str]:
    """`vtpexport calibrate --device` FitPrune at the budget (a random-weight checkpoint first for
    a model that has no built-in weights); the recipe and a line saying what it cost."""
    model = ["--model", options.model]
    if options.model not in BUILTIN_NAMES:
        weights = workdir / f"{options.model}-random"
        if not (weights / "config.json").is_file():
            vtpexport(workdir, "random-weights", *model, "--out", str(weights), "--dtype", "bfloat16", "--force")
        model += ["--weights", str(weights)]
    out = workdir / "fitprune-calibrated.yaml"
    output, seconds = vtpexport(
        workdir,
        "calibrate",
        *model,
        "--device",
        options.device,
        "--flops-budget",
        str(options.budget),
        "--samples",
        str(options.samples),
        "--out",
        str(out),
        "--force",
    )
    passes = next((line for line in output.splitlines() if line.startswith("forward passes per sample")), "")
    return Recipe.load(
        out
    ), f"calibrate --device {options.device}, {options.samples} samples: {seconds:.0f} s; {passes}"


def recipes_for(options, calibrated: Recipe | None) -> dict[str, Recipe]:
    """Each method's recipe: shipped where the model has one, else solved / calibrated here."""
    recipes = {}
    for method, pattern in SHIPPED.items():
        shipped = ROOT / "recipes" / pattern.format(model=options.model)
        if shipped.is_file():
            recipes[method] = Recipe.load(shipped)
        elif method == "fitprune":
            if calibrated is None:
                raise SystemExit(f"no shipped FitPrune recipe for {options.model}: run without --no-calibrate")
            recipes[method] = calibrated
        else:
            # FastV after layer 2 cannot reach a small budget on a few-layer model; after layer 1 it can.
            layer = min(2, max(1, architecture(options.model).text.num_layers // 4))
            request = CalibrationRequest(options.model, options.budget, method=method, fastv_layer=layer)
            recipes[method] = calibrate(request).recipe
    return recipes


def llm_prefill_macs(args, recipe: Recipe | None, n_image: int) -> int:
    """Exact MACs of the LLM's prefill: the whole prefill's but the vision tower's and projector's."""
    macs = exact_prefill_macs(args, recipe, n_image, *ILLUSTRATIVE_TEXT)
    return macs.total - macs.vision - macs.projector - _vision_macs(args, 1)[1]


def time_prefills(decoder: Decoder, n_image: int, schedules: dict, repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds of each schedule's prefill of one prompt, rounds alternating."""
    device = decoder.embed_tokens.weight.device
    prefix, suffix = ILLUSTRATIVE_TEXT
    generator = torch.Generator(device).manual_seed(1)
    vocab, width = decoder.args.vocab_size, decoder.args.hidden_size
    prefix_ids = torch.randint(3, vocab, (1, prefix), device=device, generator=generator)
    suffix_ids = torch.randint(3, vocab, (1, suffix), device=device, generator=generator)
    image = torch.randn(1, n_image, width, device=device, generator=generator, dtype=decoder.embed_tokens.weight.dtype)
    inputs = (prefix_ids, image, suffix_ids, torch.ones_like(prefix_ids), torch.ones(1, n_image, device=device))
    inputs += (torch.ones_like(suffix_ids),)
    times = {name: [] for name in schedules}
    with torch.inference_mode():
        for round_ in range(warmup + repeats):
            for name, schedule in schedules.items():
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                decoder.prefill_prompt(*inputs, schedule=schedule)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if round_ >= warmup:
                    times[name].append(time.perf_counter() - start)
    return {name: sorted(values)[len(values) // 2] for name, values in times.items()}


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llava-1.5-7b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--budget", type=float, default=0.45)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--samples", type=int, default=8, help="calibration samples")
    parser.add_argument(
        "--workdir", type=Path, help="for the random checkpoint and the recipe (default: a temporary folder)"
    )
    parser.add_argument("--no-calibrate", action="store_true", help="skip `calibrate --device` (and its checkpoint)")
    options = parser.parse_args(argv)
    device = torch.device(options.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device is visible to torch; for a dry run pass --device cpu --model tiny-llava-1.5")
    args = architecture(options.model)
    _, n_image, _ = reference_image(args)
    with tempfile.TemporaryDirectory() as temporary:
        workdir = options.workdir or Path(temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        calibrated, calibration = (
            (None, "calibrate: skipped") if options.no_calibrate else calibrate_on_device(options, workdir)
        )
        recipes = recipes_for(options, calibrated)
    for recipe in recipes.values():
        recipe.check_model(args, options.model)
    decoder = random_decoder(args, device, getattr(torch, options.dtype))
    schedules = {"unpruned": None} | {name: recipe.schedule for name, recipe in recipes.items()}
    seconds = time_prefills(decoder, n_image, schedules, options.repeats, options.warmup)
    macs = {"unpruned": llm_prefill_macs(args, None, n_image)}
    macs |= {name: llm_prefill_macs(args, recipe, n_image) for name, recipe in recipes.items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = [
        f"{options.model} LLM prefill ({args.text.num_layers} layers, {options.dtype}, SDPA) on {name}: "
        f"{ILLUSTRATIVE_TEXT[0]} + {n_image} visual + {ILLUSTRATIVE_TEXT[1]} text tokens, median of {options.repeats}",
        "| method | recipe | median ms | speed-up | predicted (LLM MACs) | measured / predicted |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for method, median in seconds.items():
        speedup, predicted = seconds["unpruned"] / median, macs["unpruned"] / macs[method]
        recipe = recipes[method].name if method in recipes else "-"
        ratio = speedup / predicted
        rows.append(f"| {method} | {recipe} | {median * 1e3:.2f} | {speedup:.2f}x | {predicted:.2f}x | {ratio:.0%} |")
    rows.append(calibration)
    report = "\n".join(rows)
    print(report)
    return report


if __name__ == "__main__":
    main()
