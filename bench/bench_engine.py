"""The shipped engine, before and after, on a random-weight model of llava-1.5-7b's real widths.

The model (CLIP-L/336 vision tower, LLM width 4096 with 2 decoder layers, fp32) is written by this
script. Each side is a source tree: `--before REV` is checked out into a temporary git worktree
(default: the last commit before one llm.onnx replaced prefill.onnx + decode.onnx), the after side
is this checkout. Both export the model unpruned and with FastV in fp32, and FastV in fp16 and bf16,
in subprocesses running their own tree, and print side by side:

- export bytes on disk of the unpruned fp32 export, beside the weight bytes (fp32 parameters);
- peak RSS of `vtpexport run DIR` and of `vtpexport verify DIR` (each its own process), beside
  the weight bytes;
- attention layers in a fusable form / attention layers of the fp32, fp16 and bf16 FastV exports
  (this tree's lint, on both sides' graphs);
- ONNX Runtime CPU prefill (the LLM's context call) and decode step times, unpruned and FastV
  timed alternately in one process per side so machine noise hits both alike, the prefill
  speed-up against the FLOPs-predicted one (exact MACs of the LLM, lm_head included), and the
  load average (the machine may be shared) around each side's timing.

Heavy (eight exports of a 4 GB model, a side's timing process holds two runners): run it alone,
niced. The model is written, and every measured command runs, in a process of its own.
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
    # In `tree`: `python -c` puts the working directory first on the path, before PYTHONPATH.
    process = subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status:
        raise SystemExit(f"vtpexport {' '.join(args)} failed in {tree}:\n{output[-3000:]}")
    return output, usage.ru_maxrss * 1024


def measure(tree: Path, folders: dict[str, Path], image: Path, repeats: int) -> dict:
    """Prefill and decode-step seconds of the exports with `tree`'s ONNX Runtime runner, all in one process."""
    env = os.environ | {"PYTHONPATH": str(tree)}
    command = [sys.executable, __file__, "--time", json.dumps({k: str(v) for k, v in folders.items()}), str(image)]
    command.append(str(repeats))
    return json.loads(subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout)


def time_exports(folders: str, image: str, repeats: int) -> None:
    """(In the side's process.) Median prefill and decode-step seconds of each export, its
    rounds alternating with the others', the prompt's lengths and the load average around it,
    printed as JSON."""
    import time

    import torch
    from PIL import Image

    from vtpexport.runtime.ort import OrtRunner

    torch.set_num_threads(2)
    runners = {name: OrtRunner(folder) for name, folder in json.loads(folders).items()}
    picture = Image.open(image).convert("RGB")
    batches = {name: r.prepare([picture], [PROMPT], DECODE_STEPS + 1) for name, r in runners.items()}
    samples = {name: {"prefill_s": [], "decode_s": []} for name in runners}
    load = [os.getloadavg()[0]]
    for round_ in range(repeats + 1):  # the first round warms up
        for name, runner in runners.items():
            start = time.perf_counter()
            outputs = runner.prefill(batches[name])
            prefill = time.perf_counter() - start
            token = torch.from_numpy(outputs["logits"].argmax(-1))
            start = time.perf_counter()
            for _ in range(DECODE_STEPS):
                outputs = runner.decode(token, outputs)
                token = torch.from_numpy(outputs["logits"].argmax(-1))
            if round_:
                samples[name]["prefill_s"].append(prefill)
                samples[name]["decode_s"].append((time.perf_counter() - start) / DECODE_STEPS)
    load.append(os.getloadavg()[0])
    batch = next(iter(batches.values()))
    result = {name: {k: sorted(v)[len(v) // 2] for k, v in s.items()} for name, s in samples.items()}
    lengths = {"prefix_len": batch.prefix_ids.shape[1], "suffix_len": batch.suffix_ids.shape[1]}
    print(json.dumps({"times": result, "load": load} | lengths))


def attention_counts(folder: Path) -> tuple[int, int]:
    from vtpexport.export.lint import attention_layers

    layers = [layer for path in sorted(folder.glob("*.onnx")) for layer in attention_layers(path)]
    return sum(layer.fusable for layer in layers), len(layers)


def gigabytes(value: float, weight_bytes: int) -> str:
    return f"{value / 1e9:.2f} GB / {weight_bytes / 1e9:.2f} GB = {value / weight_bytes:.3f}x"


def llm_prefill_macs(args, recipe, prefix_len: int, suffix_len: int) -> int:
    """Exact MACs of the LLM's context call (what `runner.prefill` runs): the whole prefill's
    but the vision tower's and the projector's, which run before it."""
    from vtpexport.flops import _vision_macs, exact_prefill_macs

    macs = exact_prefill_macs(args, recipe, 576, prefix_len, suffix_len)
    return macs.total - macs.vision - macs.projector - _vision_macs(args, 1)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "vtpexport-engine")
    parser.add_argument("--before", default=BEFORE, help="git revision of the before side")
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    from PIL import Image

    from vtpexport.models.loader import architecture, meta_graph
    from vtpexport.recipe import ModelRef, Recipe, ScheduleSpec

    work = options.workdir
    work.mkdir(parents=True, exist_ok=True)
    model = work / "llava-1.5-7b-widths-l2"
    # Written by a process of its own: this one's memory then stays small, so the run and verify
    # children's peak RSS is theirs (a child starts as a copy of its parent's resident pages, and
    # ru_maxrss keeps that across exec).
    subprocess.run([sys.executable, __file__, "--write-model", str(model)], check=True)
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
    builds = {
        "unpruned": ("--no-prune",),
        "fastv": ("--recipe", str(recipe)),
        "fastv-fp16": ("--recipe", str(recipe), "--precision", "fp16"),
        "fastv-bf16": ("--recipe", str(recipe), "--precision", "bf16"),
    }
    rows: dict[str, dict[str, str]] = {}
    lengths = {}
    for side, tree in sides.items():
        exports = {}
        for name, extra in builds.items():
            out = work / f"{tree.name}-{name}"
            if not (out / "manifest.json").is_file():
                print(f"[{side}] exporting {name}", flush=True)
                vtpexport(tree, "build", "--model", str(model), *extra, "--out", str(out), "--force")
            exports[name] = out
        unpruned = exports["unpruned"]
        disk = sum(p.stat().st_size for p in unpruned.iterdir() if p.suffix in (".onnx", ".data"))
        print(f"[{side}] run, verify, timing", flush=True)
        _, run_rss = vtpexport(
            tree, "run", str(unpruned), "--image", str(image), "--prompt", PROMPT, "--max-new-tokens", "4"
        )
        _, verify_rss = vtpexport(tree, "verify", str(unpruned), "--max-new-tokens", "4")
        fusable = {name: attention_counts(exports[name]) for name in ("fastv", "fastv-fp16", "fastv-bf16")}
        timed = measure(tree, {name: exports[name] for name in ("unpruned", "fastv")}, image, options.repeats)
        lengths = {k: timed[k] for k in ("prefix_len", "suffix_len")}
        predicted = llm_prefill_macs(args, None, **lengths) / llm_prefill_macs(args, Recipe.load(recipe), **lengths)
        prefill = {name: t["prefill_s"] * 1e3 for name, t in timed["times"].items()}
        decode = {name: t["decode_s"] * 1e3 for name, t in timed["times"].items()}
        speedup = prefill["unpruned"] / prefill["fastv"]
        rows[side] = {
            "export bytes / weight bytes (target <= 1.02)": gigabytes(disk, weight_bytes),
            "peak RSS of run / weight bytes (target <= 1.3)": gigabytes(run_rss, weight_bytes),
            "peak RSS of verify / weight bytes (target <= 2.2)": gigabytes(verify_rss, weight_bytes),
            **{f"fusable / attention layers, {name}": "{} / {}".format(*fusable[name]) for name in fusable},
            "ORT CPU prefill ms, unpruned -> fastv": f"{prefill['unpruned']:.0f} -> {prefill['fastv']:.0f}",
            "prefill speed-up / FLOPs-predicted (target >= 95%)": f"{speedup:.2f}x / {predicted:.2f}x = "
            f"{speedup / predicted:.0%}",
            "ORT CPU decode step ms, unpruned -> fastv": f"{decode['unpruned']:.1f} -> {decode['fastv']:.1f}",
            "decode fastv / unpruned time (target <= 1)": f"{decode['fastv'] / decode['unpruned']:.2f}",
            "load average (1 min) before -> after timing": "{:.2f} -> {:.2f}".format(*timed["load"]),
        }
    print(
        f"\nllava-1.5-7b widths, 2 decoder layers, fp32: {weight_bytes / 1e9:.2f} GB of weights; FastV K=1 R=0.5; "
        f"prompt {lengths['prefix_len']} + 576 image + {lengths['suffix_len']} tokens; {os.cpu_count()} CPUs\n"
    )
    width = max(len(k) for k in next(iter(rows.values())))
    column = max(len(v) for r in rows.values() for v in r.values())
    print(f"{'':{width}s}  " + "  ".join(f"{side:>{column}s}" for side in rows))
    for key in next(iter(rows.values())):
        print(f"{key:{width}s}  " + "  ".join(f"{rows[side][key]:>{column}s}" for side in rows))


def write_model(folder: str) -> None:
    """(In its own process.) The random-weight model of llava-1.5-7b's widths with 2 decoder layers."""
    random_llava(Path(folder), width=4096, layers=2, vision_width=1024, vision_layers=24)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--time":
        time_exports(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) == 3 and sys.argv[1] == "--write-model":
        write_model(sys.argv[2])
    else:
        main()
