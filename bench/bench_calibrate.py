"""FitPrune calibration cost: wall time and peak memory for 16, 32 and 64 samples.

Each sample count runs in a fresh process (so its peak resident memory is its own) through the
library calls `vtpexport calibrate` makes: load the model, embed the samples, collect the
reference statistics, search alpha. The same process also times one unpruned prefill per
sample, so the cost is printed as a ratio: calibration wall time / (samples x one prefill).

Model: random weights, LLaVA-1.5 architecture (576 visual tokens), LLM width and depth set by
--width / --layers. Samples: the shipped photos, cycled with four questions each.
Usage: python bench/bench_calibrate.py [--width 512] [--layers 8] [--samples 16,32,64] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import peak_rss_bytes, random_llava  # noqa: E402

PHOTOS = Path(__file__).resolve().parents[1] / "calibration_data" / "images"
QUESTIONS = ("What is in the picture?", "Describe the colours.", "What is in the background?", "Is it indoors?")


def write_data(path: Path, count: int) -> Path:
    photos = sorted(PHOTOS.glob("*.jpg"))
    rows = [{"image": str(photos[i % len(photos)]), "question": QUESTIONS[i // len(photos) % 4]} for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def worker(model: Path, data: Path, count: int, budget: str) -> dict:
    import torch

    from vtpexport.calibrate import (
        Budget,
        FitPruneCalibrator,
        parse_budget,
        prepare_prompts,
        reference_image,
    )
    from vtpexport.dataset import load_samples, read_dataset, select_records
    from vtpexport.models.loader import load_model
    from vtpexport.recipe import ModelRef

    cpu = torch.device("cpu")
    times = {}
    start = time.perf_counter()
    loaded = load_model(str(model))
    times["load"] = time.perf_counter() - start
    rss_loaded = peak_rss_bytes()

    mark = time.perf_counter()
    samples = load_samples(select_records(read_dataset(data), count, seed=0))
    prompts = prepare_prompts(loaded, samples, None, cpu)
    times["embed"] = time.perf_counter() - mark
    args = loaded.args
    _, n_image, _ = reference_image(args)
    ref = ModelRef(args.family, model.name, args.config_hash())
    calibrator = FitPruneCalibrator(loaded.graph.decoder, prompts, Budget(parse_budget(budget), args, ref, n_image))
    mark = time.perf_counter()
    calibrator.collect_reference()
    times["reference"] = time.perf_counter() - mark
    mark = time.perf_counter()
    best, fits = calibrator.search()
    times["search"] = time.perf_counter() - mark
    wall = time.perf_counter() - start
    peak = peak_rss_bytes()

    # The yardstick, in the same process: one plain unpruned prefill of every sample.
    mark = time.perf_counter()
    with torch.inference_mode():
        for prompt in prompts:
            loaded.graph.decoder.prefill(replace(prompt.sequence))  # prefill updates its sequence
    prefill = (time.perf_counter() - mark) / len(prompts)
    return {
        "samples": len(prompts),
        "wall": wall,
        **times,
        "fits": len(fits),
        "alpha": best.alpha / 100,
        "ratio": best.report.ratio,
        "prefill": prefill,
        "peak": peak,
        "rss_loaded": rss_loaded,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--samples", default="16,32,64")
    parser.add_argument("--budget", default="0.45")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "vtpexport-bench-calibrate")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    options = parser.parse_args()
    model = random_llava(options.workdir / f"model-w{options.width}-l{options.layers}", options.width, options.layers)
    counts = [int(x) for x in options.samples.split(",")]
    data = write_data(options.workdir / "data.jsonl", max(counts))
    if options.worker is not None:
        print(json.dumps(worker(model, data, options.worker, options.budget)))
        return

    print(f"FitPrune calibration, random LLaVA-1.5 architecture: LLM width {options.width} x {options.layers} layers,")
    print(f"576 visual tokens, budget {options.budget}, CPU fp32, one process per row\n")
    header = (
        f"{'samples':>7} {'wall s':>8} {'load':>6} {'embed':>6} {'ref':>6} {'search':>7} {'fits':>4} "
        f"{'alpha':>5} {'ratio':>6} {'prefill s':>9} {'x prefills':>10} {'peak MB':>8} {'after load MB':>13}"
    )
    print(header)
    for count in counts:
        command = [sys.executable, __file__, "--worker", str(count), "--width", str(options.width)]
        command += ["--layers", str(options.layers), "--samples", options.samples, "--budget", options.budget]
        command += ["--workdir", str(options.workdir)]
        row = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        cost = row["wall"] / (row["samples"] * row["prefill"])
        print(
            f"{row['samples']:>7} {row['wall']:>8.1f} {row['load']:>6.1f} {row['embed']:>6.1f} "
            f"{row['reference']:>6.1f} {row['search']:>7.1f} {row['fits']:>4} {row['alpha']:>5.2f} "
            f"{row['ratio']:>6.4f} {row['prefill']:>9.3f} {cost:>10.1f} {row['peak'] / 2**20:>8.0f} "
            f"{row['rss_loaded'] / 2**20:>13.0f}"
        )
    print("\nx prefills: calibration wall time / (samples x one unpruned prefill, measured in the same process)")


if __name__ == "__main__":
    main()
