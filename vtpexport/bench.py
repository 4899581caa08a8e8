"""`vtpexport bench`: an export against a baseline export, measured side by side in one process.

Speed: both sides are loaded into this process and measured alternately (candidate, baseline,
candidate, ...) after one warm-up pass each, so machine noise hits both alike; medians are
reported. Per prompt (batch 1):
- time to first token: the vision graph, prompt assembly and the prefill graph;
- decode: `decode_tokens` steps of the decode graph fed greedy tokens, never stopping early, so
  both sides decode the same number of tokens; tokens per second.

Memory is not separable inside one process (both sides' sessions share it), so each side's
peak is measured in a fresh subprocess that loads only that export and runs the same prompts:
its peak resident set size (VmHWM: Python, torch, ONNX Runtime sessions and arenas, and the
run), and that peak minus the resident set just before the sessions were
created — an upper bound on what the sessions and the run added.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .dataset import load_samples, read_dataset
from .errors import UserError
from .files import write_atomically
from .flops import Compute, adaptive_counted, add_compute, cache_lengths, exact_decode_macs
from .models.images import load_image
from .progress import progress_bar

MiB = 1 << 20


@dataclass
class Side:
    """What was measured for one export."""

    name: str
    folder: str
    prefill_seconds: list[float] = field(default_factory=list)  # per prompt and repeat
    decode_seconds: list[float] = field(default_factory=list)
    decode_tokens: int = 0
    memory: dict = field(default_factory=dict)
    compute: Compute = field(default_factory=Compute)
    decode_step_macs: int = 0  # exact MACs of the first decode step, summed over prompts

    @property
    def time_to_first_token(self) -> float:
        return statistics.median(self.prefill_seconds)

    @property
    def decode_tokens_per_second(self) -> float:
        return self.decode_tokens / statistics.median(self.decode_seconds)

    def to_dict(self) -> dict:
        compute = self.compute.to_dict()
        return {
            "name": self.name,
            "folder": self.folder,
            "time_to_first_token_s": self.time_to_first_token,
            "decode_tokens_per_s": self.decode_tokens_per_second,
            "decode_tokens": self.decode_tokens,
            "memory": self.memory,
            "paper_macs_mean": compute["paper_macs_mean"],
            "paper_flops_ratio_vs_unpruned": compute["paper_flops_ratio"],
            "exact_prefill_macs_mean": compute["exact_prefill_macs_mean"],
            "exact_decode_step_macs_mean": self.decode_step_macs / max(self.compute.samples, 1),
            "visual_tokens_per_layer_mean": compute["visual_tokens_per_layer_mean"],
            "samples": {"prefill_s": self.prefill_seconds, "decode_s": self.decode_seconds},
        }


@dataclass
class BenchReport:
    candidate: Side
    baseline: Side
    prompts: int
    repeats: int

    def ratios(self) -> dict[str, float]:
        """Candidate / baseline (speed-ups as baseline / candidate where lower is better)."""
        c, b = self.candidate.to_dict(), self.baseline.to_dict()
        return {
            "time_to_first_token_speedup": b["time_to_first_token_s"] / c["time_to_first_token_s"],
            "decode_tokens_per_s_ratio": c["decode_tokens_per_s"] / b["decode_tokens_per_s"],
            "peak_rss_ratio": c["memory"]["peak_rss_bytes"] / b["memory"]["peak_rss_bytes"],
            "paper_macs_ratio": c["paper_macs_mean"] / b["paper_macs_mean"],
            "exact_prefill_macs_ratio": c["exact_prefill_macs_mean"] / b["exact_prefill_macs_mean"],
            "exact_decode_step_macs_ratio": c["exact_decode_step_macs_mean"] / b["exact_decode_step_macs_mean"],
        }

    def to_dict(self) -> dict:
        return {
            "prompts": self.prompts,
            "repeats": self.repeats,
            "method": {
                "timing": "one process, sides alternated per repeat after a warm-up pass, medians; batch 1",
                "time_to_first_token": "vision graph + prompt assembly + prefill graph",
                "decode": "decode graph steps fed greedy tokens, no early stop",
                "memory": "a fresh subprocess per side: peak RSS (VmHWM) and peak minus RSS before the "
                "ONNX Runtime sessions were created",
            },
            "candidate": self.candidate.to_dict(),
            "baseline": self.baseline.to_dict(),
            "ratios": self.ratios(),
        }

    def write_json(self, path: str | Path) -> Path:
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        return write_atomically(path, lambda stream: stream.write(text.encode()), "the results")


def workload(data: str | None, image: str | None, prompt: str | None, limit: int) -> list[tuple[Path, str]]:
    """(image file, question) pairs: the first `limit` rows of --data, or one --image / --prompt."""
    if (data is None) == (image is None):
        raise UserError("give either --data or --image with --prompt")
    if data is not None:
        if prompt is not None:
            raise UserError("--prompt goes with --image; --data carries its own questions")
        records = read_dataset(data)[:limit]
        load_samples(records)  # every image decodes, before anything is loaded
        return [(record.image, record.question) for record in records]
    if not prompt or not prompt.strip():
        raise UserError("--image needs a question: pass --prompt")
    load_image(image)
    return [(Path(image), prompt)]


def _time_prompt(runner, image, question: str, decode_tokens: int) -> tuple[float, float, object]:
    """(seconds to the first token, seconds for `decode_tokens` decode steps, the prepared batch)."""
    start = time.perf_counter()
    batch = runner.prepare([image], [question], decode_tokens + 1)
    outputs = runner.prefill(batch)
    first = time.perf_counter()
    token = torch.from_numpy(np.asarray(outputs["logits"]).argmax(-1))
    for _ in range(decode_tokens):
        outputs = runner.decode(token, outputs)
        token = torch.from_numpy(np.asarray(outputs["logits"]).argmax(-1))
    return first - start, time.perf_counter() - first, batch


def benchmark(
    folder: str,
    baseline: str,
    data: str | None = None,
    image: str | None = None,
    prompt: str | None = None,
    repeats: int = 5,
    decode_tokens: int = 16,
    limit: int = 4,
    progress: bool = False,
    backend: str = "ort",
) -> BenchReport:
    from .export.manifest import read_manifest

    prompts = workload(data, image, prompt, limit)
    manifests = {path: read_manifest(path) for path in (folder, baseline)}
    hashes = {path: manifest["model"]["config_hash"] for path, manifest in manifests.items()}
    if hashes[folder] != hashes[baseline]:
        raise UserError(
            f"{folder} and {baseline} were exported from different models ({manifests[folder]['model']['name']}, "
            f"{manifests[baseline]['model']['name']}): their speeds do not compare"
        )
    images = [load_image(path) for path, _ in prompts]
    runners = {path: _runner(path, backend) for path in (folder, baseline)}
    sides = {path: Side(manifests[path]["name"], str(path), decode_tokens=decode_tokens) for path in runners}
    bar = progress_bar("benchmarking", (repeats + 1) * 2, "pass", progress)
    with bar:
        for repeat in range(-1, repeats):  # -1: the warm-up pass, not recorded
            for path, runner in runners.items():
                for picture, (_, question) in zip(images, prompts, strict=True):
                    prefill_s, decode_s, batch = _time_prompt(runner, picture, question, decode_tokens)
                    side = sides[path]
                    if repeat >= 0:
                        side.prefill_seconds.append(prefill_s)
                        side.decode_seconds.append(decode_s)
                    else:
                        _count(side, runner, picture, batch)
                bar.update()
    for path, side in sides.items():
        side.memory = memory_probe(path, prompts, decode_tokens, backend)
    return BenchReport(sides[folder], sides[baseline], len(prompts), repeats)


def _count(side: Side, runner, image, batch) -> None:
    args, recipe = runner.args, runner.recipe
    add_compute(side.compute, args, recipe, image, batch, 0)
    n_image = args.layout.num_tokens((image.height, image.width))
    entering = batch.num_image_tokens[0]
    text = (len(batch.parts[0].prefix_ids), len(batch.parts[0].suffix_ids))
    lengths = cache_lengths(args, adaptive_counted(recipe, entering), n_image, *text)
    side.decode_step_macs += exact_decode_macs(args, lengths).total


def _runner(folder: str, backend: str):
    from .runtime import open_runner
    from .runtime.ort import OrtRunner

    if backend == "trt":
        return open_runner(folder, backend)
    # No spinning ORT threads: the idle side must not steal cores from the side being timed.
    config = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}
    return OrtRunner(folder, backend, session_config=config)


def memory_probe(folder: str, prompts: list[tuple[Path, str]], decode_tokens: int, backend: str = "ort") -> dict:
    """Run this export alone in a fresh interpreter over the same prompts; its memory figures."""
    request = json.dumps(
        {
            "folder": str(folder),
            "prompts": [[str(p), q] for p, q in prompts],
            "decode": decode_tokens,
            "backend": backend,
        }
    )
    done = subprocess.run(
        [sys.executable, "-m", "vtpexport.bench", request], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"the memory probe of {folder} failed: {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def _peak_rss_bytes() -> int:
    """This process's own peak resident set (VmHWM). Not ru_maxrss: a child inherits its parent's
    peak through fork and keeps it across exec, and the parent here holds both sides' sessions."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024  # kB


def _probe(request: dict) -> dict:
    images = [load_image(path) for path, _ in request["prompts"]]
    before = _current_rss_bytes()
    runner = _runner(request["folder"], request["backend"])
    for image, (_, question) in zip(images, request["prompts"], strict=True):
        _time_prompt(runner, image, question, request["decode"])
    peak = _peak_rss_bytes()
    return {"peak_rss_bytes": peak, "rss_before_sessions_bytes": before, "peak_minus_before_bytes": peak - before}


def bench_view(report: BenchReport):
    from rich.table import Table

    c, b, ratios = report.candidate.to_dict(), report.baseline.to_dict(), report.ratios()
    table = Table(title=f"{report.prompts} prompt(s), {report.repeats} repeats, medians", title_justify="left")
    table.add_column("")
    table.add_column(c["name"], justify="right", overflow="fold")
    table.add_column(b["name"] + " (baseline)", justify="right", overflow="fold")
    table.add_column("ratio", justify="right")

    def ms(value: float) -> str:
        return f"{1000 * value:.2f} ms"

    def mib(value: int) -> str:
        return f"{value / MiB:.1f} MiB"

    rows = [
        ("time to first token", ms(c["time_to_first_token_s"]), ms(b["time_to_first_token_s"]),
         with_direction(ratios["time_to_first_token_speedup"], "faster", "slower")),
        ("decode tokens/s", f"{c['decode_tokens_per_s']:.1f}", f"{b['decode_tokens_per_s']:.1f}",
         with_direction(ratios["decode_tokens_per_s_ratio"], "faster", "slower")),
        ("peak RSS (own process)", mib(c["memory"]["peak_rss_bytes"]), mib(b["memory"]["peak_rss_bytes"]),
         with_direction(1 / ratios["peak_rss_ratio"], "smaller", "larger")),
        ("  of which sessions + run", mib(c["memory"]["peak_minus_before_bytes"]),
         mib(b["memory"]["peak_minus_before_bytes"]), ""),
        ("paper MACs (visual tokens)", f"{c['paper_macs_mean']:.4g}", f"{b['paper_macs_mean']:.4g}",
         f"{ratios['paper_macs_ratio']:.3f} of it"),
        ("exact prefill MACs", f"{c['exact_prefill_macs_mean']:.4g}", f"{b['exact_prefill_macs_mean']:.4g}",
         f"{ratios['exact_prefill_macs_ratio']:.3f} of it"),
        ("exact decode-step MACs", f"{c['exact_decode_step_macs_mean']:.4g}",
         f"{b['exact_decode_step_macs_mean']:.4g}", f"{ratios['exact_decode_step_macs_ratio']:.3f} of it"),
        ("visual tokens per layer", f"{c['visual_tokens_per_layer_mean']:.1f}",
         f"{b['visual_tokens_per_layer_mean']:.1f}", ""),
    ]  # fmt: skip
    for row in rows:
        table.add_row(*row)
    caption = ["memory: each side alone in a fresh subprocess (VmHWM); MACs: 1 MAC = 2 FLOPs"]
    if b["exact_prefill_macs_mean"] < SMALL_MODEL_MACS:
        caption.append(
            f"a small model: at {b['exact_prefill_macs_mean']:.3g} MACs a prefill, fixed costs per graph call "
            "(ONNX Runtime's dispatch of every node, feeds and copies, the vision tower) outweigh the LLM "
            "arithmetic that pruning removes, so times follow the MACs ratio only loosely, and a decode step "
            "(one token) is all fixed cost; bench/bench_engine.py measures at llava-1.5-7b's widths"
        )
    table.caption = "\n".join(caption)
    return table


# Below this many prefill MACs (the toy: ~1e7; llava-1.5-7b: ~4e12) per-call overhead dominates.
SMALL_MODEL_MACS = 1e10


def with_direction(ratio: float, better: str, worse: str) -> str:
    """A ratio with the word that says which way it goes: 1.25x faster, 1.09x slower."""
    return f"{ratio:.2f}x {better}" if ratio >= 1 else f"{1 / ratio:.2f}x {worse}"


if __name__ == "__main__":
    print(json.dumps(_probe(json.loads(sys.argv[1]))))
