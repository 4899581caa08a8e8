"""`vtpexport inspect`: per-layer tokens and FLOPs of a recipe, and its token-pyramid plot."""

import re
from pathlib import Path

import matplotlib.image
import pytest
from click.testing import CliRunner

from vtpexport.cli import main
from vtpexport.models.loader import architecture
from vtpexport.recipe import ModelRef, Recipe, ScheduleSpec, SelectorSpec

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
FITPRUNE_60 = str(RECIPES / "fitprune-llava-1.5-7b-60.yaml")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def invoke(*args):
    return CliRunner().invoke(main, ["inspect", *args], env={"COLUMNS": "160"})


def assert_one_line_error(result, pattern):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert re.search(pattern, lines[0]), lines[0]


def test_inspect_prints_both_counts_and_their_totals():
    result = invoke(FITPRUNE_60)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "fitprune-llava-1.5-7b-60 on llava-1.5-7b" in out and "576 visual tokens" in out
    assert re.search(r"paper convention \(LLM, visual tokens only\)\s*│\s*1\.538 T\s*│\s*3\.817 T\s*│\s*59\.7%", out)
    assert "exact whole model, prefill (P=35 + T=40 text tokens, 1 CLIP tile)" in out
    assert "exact, one decode step after prefill" in out
    assert "mean 245.0" in out
    assert re.search(r"│\s+2 │\s+529 │\s+440 │", out)  # layer 2: 529 in, drops 89


def test_inspect_builtin_model_with_text_lengths(tmp_path):
    args = architecture("tiny-llava-1.5")
    path = tmp_path / "tiny.yaml"
    schedule = ScheduleSpec(method="fastv", layer=1, ratio=0.5)
    Recipe("tiny-fastv", ModelRef(args.family, "tiny-llava-1.5", args.config_hash()), schedule=schedule).save(path)
    result = invoke(str(path), "--prefix-len", "3", "--suffix-len", "4")
    assert result.exit_code == 0, result.output
    assert "P=3 + T=4 text tokens" in result.output and "36 visual tokens" in result.output


def test_inspect_adaptive_selector_reports_unknown_flops(tmp_path):
    args = architecture("llava-1.5-7b")
    path = tmp_path / "prumerge.yaml"
    ref = ModelRef(args.family, "llava-1.5-7b", args.config_hash())
    Recipe("adaptive", ref, selector=SelectorSpec(method="prumerge")).save(path)
    result = invoke(str(path))
    assert result.exit_code == 0, result.output
    assert "FLOPs unknown" in result.output
    assert_one_line_error(invoke(str(path), "--plot", str(tmp_path / "p.png")), r"adaptive selector")


def test_inspect_plot_writes_a_png(tmp_path):
    target = tmp_path / "pyramid.png"
    result = invoke(FITPRUNE_60, "--plot", str(target))
    assert result.exit_code == 0, result.output
    assert target.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(target)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert [p.name for p in tmp_path.iterdir()] == ["pyramid.png"]  # no temporary file left behind


@pytest.mark.parametrize(
    "args, pattern",
    [
        (
            [FITPRUNE_60, "--model", "llava-next-7b"],
            r"recipe 'fitprune-llava-1.5-7b-60' is for llava-1.5-7b .* not for llava-next-7b",
        ),
        (["no/such/recipe.yaml"], r"recipe not found: no/such/recipe.yaml"),
        ([FITPRUNE_60, "--model", "llava-9b"], r"unknown model 'llava-9b'"),
        ([FITPRUNE_60, "--image-size", "big"], r"--image-size wants HEIGHTxWIDTH"),
        ([FITPRUNE_60, "--plot", "/nonexistent/folder/p.png"], r"cannot write the plot to /nonexistent/folder/p.png"),
    ],
)
def test_inspect_bad_input_is_one_line(args, pattern):
    assert_one_line_error(invoke(*args), pattern)


def test_inspect_plot_to_a_folder_is_one_line(tmp_path):
    assert_one_line_error(invoke(FITPRUNE_60, "--plot", str(tmp_path)), r"it is a folder")
    assert list(tmp_path.iterdir()) == []
