"""bench/bench_gpu.py's dry-run path: the whole script (recipes, random decoder, alternating
timings, MACs, `calibrate --device` in its own process) on the built-in tiny model on the CPU, so
the script made for a CUDA machine cannot rot where none is lent."""

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_gpu.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_on_the_tiny_model(script, tmp_path, capsys):
    argv = ["--model", "tiny-llava-1.5", "--device", "cpu", "--repeats", "1", "--warmup", "0", "--samples", "1"]
    report = script.main([*argv, "--workdir", str(tmp_path)])
    assert report in capsys.readouterr().out
    rows = [line.split(" | ") for line in report.splitlines() if line.startswith("| ") and "---" not in line]
    assert [row[0] for row in rows] == ["| method", "| unpruned", "| fitprune", "| pyramiddrop", "| fastv"]
    for row in rows[2:]:
        assert float(row[2]) > 0 and float(row[4].rstrip("x")) > 1  # every recipe cuts the LLM's MACs
    assert rows[2][1] == "fitprune-calibrated" and (tmp_path / "fitprune-calibrated.yaml").is_file()
    assert "calibrate --device cpu, 1 samples" in report and "forward passes per sample" in report
    assert (tmp_path / "state").is_dir()  # the current recipe it set is its own, not the user's


def test_random_decoder_is_made_in_the_asked_dtype(script):
    from vtpexport.models.loader import architecture

    decoder = script.random_decoder(architecture("tiny-llava-1.5"), torch.device("cpu"), torch.bfloat16)
    weights = dict(decoder.named_parameters())
    assert {w.dtype for w in weights.values()} == {torch.bfloat16}
    assert torch.all(weights["norm.weight"] == 1) and 0.01 < float(weights["lm_head.weight"].float().std()) < 0.03


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine the default run is the real bench")
def test_without_cuda_it_says_how_to_dry_run(script):
    with pytest.raises(SystemExit, match="--device cpu --model tiny-llava-1.5"):
        script.main(["--no-calibrate"])
