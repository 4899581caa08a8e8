"""Export a random-weight model of over 1 B parameters and report time and peak memory.

Large graphs go to external data (`*.onnx.data`); the target is a peak resident memory under
2.5x the fp32 weight bytes. Run in a fresh process: peak memory covers everything it did.
Usage: python bench/bench_scale_export.py [--workdir DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import peak_rss_bytes, random_llava  # noqa: E402

from vtpexport.export.build import build_onnx  # noqa: E402
from vtpexport.models.loader import architecture, meta_graph  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "vtpexport-scale")
    options = parser.parse_args()
    start = time.perf_counter()
    folder = random_llava(
        options.workdir / "model-w2048-l18", width=2048, layers=18, vision_width=1024, vision_layers=24
    )
    written = time.perf_counter() - start
    parameters = sum(p.numel() for p in meta_graph(architecture(str(folder))).parameters())
    weight_bytes = parameters * 4
    rss_before = peak_rss_bytes()
    start = time.perf_counter()
    out = build_onnx(str(folder), None, str(options.workdir / "export"), force=True, report=print)
    seconds = time.perf_counter() - start
    peak = peak_rss_bytes()
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    print(f"\nparameters           {parameters / 1e9:.3f} B ({weight_bytes / 2**30:.2f} GiB fp32)")
    print(f"random model written {written:.0f} s (peak RSS then {rss_before / 2**30:.2f} GiB)")
    print(f"export + lint        {seconds:.0f} s")
    print(f"peak RSS             {peak / 2**30:.2f} GiB = {peak / weight_bytes:.2f}x the weight bytes (target < 2.5x)")
    for name, size in files.items():
        print(f"  {name:28s} {size / 2**20:10.1f} MiB")


if __name__ == "__main__":
    main()
