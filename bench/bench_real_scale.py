"""The pipeline at the sizes users work at, through the CLI, with random weights.

For each model: `random-weights` writes the alias's exact architecture (LLM cut to --layers,
default 2), then calibrate (FitPrune 0.45, --samples), build fp32 and fp16, lint, verify and run
go through `vtpexport` as separate processes. Each step's wall time and peak RSS (the child's
own, from wait4) are printed as a table, the peak as a multiple of the weight bytes of the
dtype that step holds the model in; calibrate's row also gives the forward passes per sample its
FitPrune search ran. --full adds the 32-layer llava-1.5-7b in bf16 (calibrate and the fp16 build
only: that is what fits on a 24 GiB machine), and checks that calibrating it in float32 (28 GB)
is refused in one line before any weight is read; `--models ""` runs only that.

Usage: PYTHONPATH=. python bench/bench_real_scale.py --workdir DIR [--models llava-1.5-7b,...]
       [--layers 2] [--samples 2] [--full] [--steps calibrate,build-fp32,...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vtpexport.devices import resolve_dtype, weight_bytes
from vtpexport.models.families import args_from_config
from vtpexport.models.loader import architecture
from vtpexport.models.random_weights import alias_config

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "calibration_data" / "images"
STEPS = ("random-weights", "calibrate", "build-fp32", "build-fp16", "lint", "verify", "run")


@dataclass
class Step:
    model: str
    name: str
    seconds: float
    peak_bytes: int
    weight_bytes: int
    ok: bool
    note: str = ""


def run_step(command: list[str], log: Path) -> tuple[float, int, bool, str]:
    """(wall seconds, peak RSS bytes, succeeded, last output line) of one CLI process."""
    start = time.monotonic()
    with log.open("w") as out:
        child = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=os.environ | {"PYTHONPATH": str(ROOT), "COLUMNS": "250"},  # unwrapped lines to read back
        )
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.monotonic() - start
    lines = log.read_text().strip().splitlines()
    return seconds, usage.ru_maxrss * 1024, os.waitstatus_to_exitcode(status) == 0, lines[-1] if lines else ""


def forward_passes(log: Path) -> str:
    """calibrate's line on the forward passes per sample its search ran."""
    lines = [line for line in log.read_text().splitlines() if line.startswith("forward passes per sample")]
    return lines[-1].replace("forward passes per sample", "passes/sample") if lines else ""


def bench_model(model: str, layers: int | None, samples: int, workdir: Path, steps: tuple[str, ...]) -> list[Step]:
    tag = f"{model}-{layers or 'all'}L"
    weights = workdir / tag
    args = args_from_config(alias_config(model, layers))
    dtype_bytes = {
        name: weight_bytes(args, dtype) for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32))
    }
    recipe, image = workdir / f"{tag}.yaml", next(IMAGE.glob("*.jpg"))
    refused_recipe = workdir / f"{tag}-float32.yaml"
    exe = [sys.executable, "-c", "from vtpexport.cli import main; main()"]
    on = ["--model", model, "--weights", str(weights)]
    # calibrate: --dtype auto holds fp32 where it fits, else bf16; the builds hold their precision.
    calibrate_dtype = "fp32" if resolve_dtype("auto", args, torch.device("cpu")) == torch.float32 else "bf16"
    plan = {
        "random-weights": (
            [*exe, "random-weights", "--model", model, "--out", str(weights), "--force"]
            + (["--layers", str(layers)] if layers else []),
            "bf16",
        ),
        "calibrate": (
            [*exe, "calibrate", *on, "--flops-budget", "0.45", "--samples", str(samples), "--out", str(recipe)],
            calibrate_dtype,
        ),
        "build-fp32": (
            [
                *exe,
                "build",
                "--recipe",
                str(recipe),
                "--weights",
                str(weights),
                "--out",
                str(workdir / f"{tag}-fp32"),
                "--force",
            ],
            "fp32",
        ),
        "build-fp16": (
            [
                *exe,
                "build",
                "--recipe",
                str(recipe),
                "--weights",
                str(weights),
                "--precision",
                "fp16",
                "--out",
                str(workdir / f"{tag}-fp16"),
                "--force",
            ],
            "bf16",
        ),
        # lint the fp16 export where this run builds one (TensorRT's precision), else the fp32 one
        "lint": (
            [*exe, "lint", str(workdir / f"{tag}-{'fp16' if 'build-fp16' in steps else 'fp32'}")],
            "bf16" if "build-fp16" in steps else "fp32",
        ),
        "verify": ([*exe, "verify", str(workdir / f"{tag}-fp32"), *on, "--max-new-tokens", "4"], "fp32"),
        "run": ([*exe, "run", str(workdir / f"{tag}-fp32"), "--image", str(image), "--prompt", "What is it?"], "fp32"),
        # must be refused where float32 weights do not fit: one line, non-zero exit, no recipe
        "refuse-fp32": (
            [*exe, "calibrate", *on, "--flops-budget", "0.45", "--dtype", "float32", "--out", str(refused_recipe)],
            "fp32",
        ),
    }
    results = []
    for name in steps:
        if name == "calibrate" and recipe.exists():
            recipe.unlink()
        command, held = plan[name]
        print(f"{tag}: {name} ...", flush=True)
        seconds, peak, ok, last = run_step(command, workdir / f"{tag}-{name}.log")
        if name == "refuse-fp32":  # the expected outcome is the refusal
            lines = (workdir / f"{tag}-{name}.log").read_text().strip().splitlines()
            ok = not ok and len(lines) == 1 and last.startswith("error:") and not refused_recipe.exists()
            last = f"refused: {last}" if ok else f"NOT refused as expected: {last}"
        if name == "calibrate":
            note = forward_passes(workdir / f"{tag}-{name}.log") if ok else last[:90]
        else:
            note = last[:160] if name == "refuse-fp32" or not ok else ""
        results.append(Step(tag, name, seconds, peak, dtype_bytes[held], ok, note))
        print(f"{tag}: {name} {'ok' if ok else 'FAILED'} in {seconds:.0f} s, peak {peak / 1e9:.2f} GB", flush=True)
    return results


def table(results: list[Step]) -> str:
    rows = [
        "| model | step | wall s | peak RSS GB | weights GB (dtype held) | peak / weights | note |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        rows.append(
            f"| {r.model} | {r.name} | {r.seconds:.0f} | {r.peak_bytes / 1e9:.2f} | {r.weight_bytes / 1e9:.2f} "
            f"| {r.peak_bytes / r.weight_bytes:.2f}x | {'ok' if r.ok else 'FAILED'}{': ' if r.note else ''}{r.note} |"
        )
    return "\n".join(rows)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--models", default="llava-1.5-7b,llava-next-7b,llava-hr-7b")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--full", action="store_true", help="Also the 32-layer llava-1.5-7b in bf16.")
    parser.add_argument("--keep", action="store_true", help="Keep the checkpoints and exports.")
    options = parser.parse_args(argv)
    options.workdir.mkdir(parents=True, exist_ok=True)
    steps = tuple(options.steps.split(","))
    results = []
    for model in filter(None, options.models.split(",")):  # --models "" with --full: the 32-layer run only
        architecture(model)  # an unknown alias fails here, before hours of work
        results += bench_model(model, options.layers, options.samples, options.workdir, steps)
    if options.full:
        results += bench_model(
            "llava-1.5-7b",
            None,
            options.samples,
            options.workdir,
            ("random-weights", "refuse-fp32", "calibrate", "build-fp16"),
        )
    if not options.keep:
        for path in options.workdir.iterdir():
            if path.is_dir():
                shutil.rmtree(path)
    report = table(results)
    print(report)
    return report


if __name__ == "__main__":
    main()
