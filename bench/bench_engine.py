"""The shipped engine, before and after, on a random-weight model of llava-1.5-7b's real widths.

The model (CLIP-L/336 vision tower, LLM width 4096 with 2 decoder layers, fp32) is written by this
script. Each side is a source tree: `--before REV` is checked out into a temporary git worktree
(default: the last commit before one llm.onnx replaced prefill.onnx + decode.onnx), the after side
is this checkout. Both export the model unpruned and with FastV, in subprocesses running their own
tree, and print side by side:

- export bytes on disk / weight bytes (fp32 parameters the graphs hold);
- peak RSS of `vtpexport run DIR` and of `vtpexport verify DIR` / weight bytes (each its own process);
- attention layers in a fusable form / attention layers (this tree's lint, on both sides' graphs);
- ONNX Runtime CPU prefill and decode step times, unpruned vs FastV, against the FLOPs-predicted
  prefill ratio (exact whole-LLM MACs).

Heavy (four exports of a 4 GB model, verify holds the eager model too): run it alone, niced.
Usage: nice -n 10 python bench/bench_engine.py [--workdir DIR] [--before REV] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import random_llava  # noqa: E402

BEFORE = "f504722"  # main before fused attention and the one LLM graph
REPO = Path(__file__).resolve().parents[1]
PROMPT = "Describe the picture in detail."
DECODE_STEPS = 8
FASTV = {"method": "fastv", "layer": 1, "ratio": 0.5}  # 2 decoder layers: drop after the first


def vtpexport(tree: Path, *args: str) -> tuple[str, int]:
    """Run the CLI of `tree` in its own process; (output, its peak RSS in bytes)."""
    env = os.environ | {"PYTHONPATH": str(tree)}
    command = [sys.executable, "-c", "from vtpexport.cli import main; main()", *args]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status:
        raise SystemExit(f"vtpexport {' '.join(args)} failed in {tree}:\n{output[-3000:]}")
    return output, usage.ru_maxrss * 1024


def measure(tree: Path, folder: Path, image: Path, repeats: int) -> dict:
    """Prefill and decode-step seconds of an export with `tree`'s ONNX Runtime runner."""
    env = os.environ | {"PYTHONPATH": str(tree)}
    command = [sys.executable, __file__, "--time", str(folder), str(image), str(repeats)]
    return json.loads(subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout)


def time_export(folder: str, image: str, repeats: int) -> None:
    """(In the side's process.) Median prefill and decode-step times, printed as JSON."""
    import time

    import torch
    from PIL import Image

    from vtpexport.runtime.ort import OrtRunner

    torch.set_num_threads(2)
    runner = OrtRunner(folder)
    batch = runner.prepare([Image.open(image).convert("RGB")], [PROMPT], DECODE_STEPS + 1)
    prefill, decode = [], []
    for _ in range(repeats + 1):  # the first round warms up
        start = time.perf_counter()
        outputs = runner.prefill(batch)
        prefill.append(time.perf_counter() - start)
        token = torch.from_numpy(outputs["logits"].argmax(-1))
        start = time.perf_counter()
        for _ in range(DECODE_STEPS):
            outputs = runner.decode(token, outputs)
            token = torch.from_numpy(outputs["logits"].argmax(-1))
        decode.append((time.perf_counter() - start) / DECODE_STEPS)
    median = lambda values: sorted(values[1:])[len(values[1:]) // 2]  # noqa: E731
    print(json.dumps({"prefill_s": median(prefill), "decode_s": median(decode)}))


def attention_counts(folder: Path) -> tuple[int, int]:
    from vtpexport.export.lint import attention_layers

    layers = [layer for path in sorted(folder.glob("*.onnx")) for layer in attention_layers(path)]
    return sum(layer.fusable for layer in layers), len(layers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "vtpexport-engine")
    parser.add_argument("--before", default=BEFORE, help="git revision of the before side")
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    from PIL import Image

    from vtpexport.flops import exact_prefill_macs
    from vtpexport.models.loader import architecture, meta_graph
    from vtpexport.recipe import ModelRef, Recipe, ScheduleSpec

    work = options.workdir
    work.mkdir(parents=True, exist_ok=True)
    model = random_llava(work / "llava-1.5-7b-widths-l2", width=4096, layers=2, vision_width=1024, vision_layers=24)
    args = architecture(str(model))
    weight_bytes = sum(p.numel() for p in meta_graph(args).parameters()) * 4
    image = work / "image.png"
    Image.new("RGB", (336, 336), (40, 120, 200)).save(image)
    recipe = work / "fastv.yaml"
    Recipe("fastv", ModelRef(args.family, str(model), args.config_hash()), None, ScheduleSpec(**FASTV)).save(recipe)
    before_tree = work / "before-tree"
    if not before_tree.is_dir():
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(before_tree), options.before], check=True
        )
    sides = {f"before ({options.before})": before_tree, "after (this tree)": REPO}
    rows: dict[str, dict[str, str]] = {}
    for side, tree in sides.items():
        exports = {}
        for name, extra in (("unpruned", ("--no-prune",)), ("fastv", ("--recipe", str(recipe)))):
            out = work / f"{tree.name}-{name}"
            if not (out / "manifest.json").is_file():
                vtpexport(tree, "build", "--model", str(model), *extra, "--out", str(out), "--force")
            exports[name] = out
        unpruned = exports["unpruned"]
        disk = sum(p.stat().st_size for p in unpruned.iterdir() if p.suffix in (".onnx", ".data"))
        _, run_rss = vtpexport(
            tree, "run", str(unpruned), "--image", str(image), "--prompt", PROMPT, "--max-new-tokens", "4"
        )
        _, verify_rss = vtpexport(tree, "verify", str(unpruned), "--max-new-tokens", "4")
        fusable, layers = attention_counts(exports["fastv"])
        t = {name: measure(tree, path, image, options.repeats) for name, path in exports.items()}
        prefill = {name: t[name]["prefill_s"] * 1e3 for name in exports}
        decode = {name: t[name]["decode_s"] * 1e3 for name in exports}
        rows[side] = {
            "export bytes / weight bytes (target <= 1.02)": f"{disk / weight_bytes:.3f}",
            "peak RSS of run / weight bytes (target <= 1.3)": f"{run_rss / weight_bytes:.2f}",
            "peak RSS of verify / weight bytes (target <= 2.2)": f"{verify_rss / weight_bytes:.2f}",
            "fusable / attention layers (fastv export)": f"{fusable} / {layers}",
            "prefill ms, unpruned -> fastv": f"{prefill['unpruned']:.0f} -> {prefill['fastv']:.0f}",
            "decode step ms, unpruned -> fastv": f"{decode['unpruned']:.1f} -> {decode['fastv']:.1f}",
            "prefill speed-up (fastv)": f"{prefill['unpruned'] / prefill['fastv']:.2f}x",
        }
    prompt_len = 40  # the chat template's prefix + suffix around the image, roughly; the ratio barely moves with it
    predicted = exact_prefill_macs(args, None, 576, prompt_len // 2, prompt_len // 2).total
    pruned = Recipe.load(recipe)
    predicted /= exact_prefill_macs(args, pruned, 576, prompt_len // 2, prompt_len // 2).total
    print(
        f"\nllava-1.5-7b widths, 2 decoder layers, fp32: {weight_bytes / 1e9:.2f} GB of weights; "
        f"FastV K=1 R=0.5 FLOPs-predicted prefill speed-up {predicted:.2f}x\n"
    )
    width = max(len(k) for k in next(iter(rows.values())))
    print(f"{'':{width}s}  " + "  ".join(f"{side:>24s}" for side in rows))
    for key in next(iter(rows.values())):
        print(f"{key:{width}s}  " + "  ".join(f"{rows[side][key]:>24s}" for side in rows))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--time":
        time_export(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
