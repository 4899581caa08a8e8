"""`vtpexport bench`: runs both sides, writes the JSON and the table (no timing assertions)."""

import json
import re
import shutil

from click.testing import CliRunner
from conftest import write_labelled_data
from test_cli import assert_one_line_error

from vtpexport.cli import main
from vtpexport.export.manifest import read_manifest, update_manifest
from vtpexport.recipe import ScheduleSpec


def invoke(*args):
    return CliRunner().invoke(main, ["bench", *map(str, args)], terminal_width=160)


def test_bench_pruned_against_unpruned(tmp_path, exports):
    pruned = exports("tiny-llava-1.5", "fastv", schedule=ScheduleSpec("fastv", layer=2, ratio=0.5))
    unpruned = exports("tiny-llava-1.5")
    data = write_labelled_data(tmp_path, 3)
    out = tmp_path / "bench.json"
    args = ["--data", data, "--limit", 2, "--repeats", 2, "--decode-tokens", 3, "--out", out]
    result = invoke(pruned, "--baseline", unpruned, *args)
    assert result.exit_code == 0, result.output
    assert "time to first token" in result.output and "(baseline)" in result.output
    assert re.search(r"time to first token .* \d+\.\d\dx (faster|slower)", result.output), result.output
    assert "a small model: at" in result.output  # why times follow the MACs only loosely here
    report = json.loads(out.read_text())
    assert report["prompts"] == 2 and report["repeats"] == 2
    for side in ("candidate", "baseline"):
        measured = report[side]
        assert len(measured["samples"]["prefill_s"]) == 4 and len(measured["samples"]["decode_s"]) == 4
        assert measured["time_to_first_token_s"] > 0 and measured["decode_tokens_per_s"] > 0
        memory = measured["memory"]
        assert memory["peak_rss_bytes"] >= memory["rss_before_sessions_bytes"] > 0
    assert report["candidate"]["visual_tokens_per_layer_mean"] == (36 + 36 + 18 + 18) / 4
    assert report["baseline"]["visual_tokens_per_layer_mean"] == 36
    ratios = report["ratios"]
    assert ratios["paper_macs_ratio"] < ratios["exact_prefill_macs_ratio"] < 1
    assert ratios["exact_decode_step_macs_ratio"] < 1  # shorter caches after the pruned prefill
    assert set(ratios) >= {"time_to_first_token_speedup", "decode_tokens_per_s_ratio", "peak_rss_ratio"}


def test_bench_one_image(tmp_path, image_file, exports):
    unpruned = exports("tiny-llava-1.5")
    args = ["--image", image_file, "--prompt", "What?", "--repeats", 1, "--decode-tokens", 2]
    result = invoke(unpruned, "--baseline", unpruned, *args)
    assert result.exit_code == 0, result.output
    assert "1 prompt(s)" in result.output


def test_bench_bad_input(tmp_path, image_file, exports):
    unpruned = exports("tiny-llava-1.5")
    other = tmp_path / "other"
    shutil.copytree(unpruned, other)
    model = read_manifest(other)["model"]
    update_manifest(other, model={**model, "name": "some-other-model", "config_hash": "0" * 16})
    cases = [
        ([unpruned, "--baseline", unpruned], r"give either --data or --image"),
        ([unpruned, "--baseline", unpruned, "--image", image_file], r"--image needs a question"),
        ([unpruned, "--baseline", other, "--image", image_file, "--prompt", "What?"], r"different models"),
        ([unpruned, "--baseline", tmp_path, "--image", image_file, "--prompt", "What?"], r"no manifest\.json"),
    ]
    for args, pattern in cases:
        assert_one_line_error(invoke(*args), pattern)


def test_ratios_say_which_way_they_go():
    from vtpexport.bench import with_direction

    assert with_direction(1.25, "faster", "slower") == "1.25x faster"
    assert with_direction(0.8, "faster", "slower") == "1.25x slower"
    assert with_direction(1.0, "smaller", "larger") == "1.00x smaller"
