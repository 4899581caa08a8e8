"""What a new user meets first: the design's own two commands (calibrate, then build with no
recipe named), answers without heavy imports, `models` at 80 columns, the toy's questions."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from vtpexport.cli import main
from vtpexport.models.builtin import SHIPPED_MODELS
from vtpexport.models.question_templates import TEMPLATES_FILE
from vtpexport.zoo.toy_data import question_templates, samples

REPO = Path(__file__).resolve().parents[1]


def invoke(*args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], **kwargs)


def error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    return lines[0]


def test_calibrate_then_build_with_no_recipe_named(tmp_path, monkeypatch):
    """`calibrate --model toy --flops-budget 0.45` then `build --engine onnx` (and `--engine trt`,
    which exports and then says TensorRT is missing, for that recipe), as the design's usage runs."""
    monkeypatch.chdir(tmp_path)
    assert error_line(invoke("build", "--engine", "onnx")).startswith("error: no recipe: pass --recipe FILE")
    calibrated = invoke("calibrate", "--model", "toy", "--flops-budget", "0.45", "--method", "pyramiddrop")
    assert calibrated.exit_code == 0, calibrated.output
    recipe = tmp_path / "recipes" / "pyramiddrop-toy-b045.yaml"
    assert f"wrote recipes/{recipe.name} (now the current recipe)" in calibrated.output
    assert "next: vtpexport build --engine onnx" in calibrated.output

    built = invoke("build", "--engine", "onnx")
    assert built.exit_code == 0, built.output
    assert f"build: using the current recipe {recipe}" in built.output
    assert "wrote exported/pyramiddrop-toy-b045" in built.output
    assert (tmp_path / "exported" / "pyramiddrop-toy-b045" / "recipe.yaml").read_text() == recipe.read_text()

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "tensorrt", None)
        line = error_line(invoke("build", "--engine", "trt", "--out", "trt", "--max-batch", 1))
    assert "TensorRT is not installed here" in line and "vtpexport build --from trt --engine trt" in line

    inspected = invoke("inspect", terminal_width=160)
    assert inspected.exit_code == 0 and f"inspect: using the current recipe {recipe}" in inspected.output

    recipe.unlink()
    assert f"the current recipe {recipe} (named in" in error_line(invoke("build"))


def test_build_without_a_recipe_needs_no_prune(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = error_line(invoke("build", "--model", "toy"))
    assert "or pass --no-prune for the unpruned baseline" in line


def _python(code: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, cwd=REPO)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--help"], "Calibrate, bake in and export"),
        (["run", "--model", "toy", "--image", "/no/such.png", "--prompt", "What?"], "error: image not found"),
        (["build", "--recipe", "/no/such.yaml"], "error: recipe not found: /no/such.yaml"),
        (["lint", "/no/such/export"], "error: export folder not found"),
        (["verify", "/no/such/export"], "error: export folder not found"),
    ],
)
def test_help_and_a_missing_file_answer_without_importing_torch(argv, expected):
    """The heavy libraries load inside a command, after its arguments and paths are checked."""
    probe = (
        "import sys\nfrom vtpexport.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print('loaded:', sorted(m for m in ('torch', 'transformers', 'onnx', 'onnxruntime') if m in sys.modules))"
    )
    result = _python(probe)
    assert expected in result.stdout + result.stderr, result.stderr
    assert "loaded: []" in result.stdout, result.stdout


def test_models_fits_80_columns_and_has_json():
    listed = invoke("models", terminal_width=80)
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert all(len(line) <= 80 for line in lines if not line.startswith("    weights: "))
    toy = re.search(r"^toy .*\n    weights: (.+)$", listed.output, re.MULTILINE)
    assert toy and toy.group(1) == str(SHIPPED_MODELS["toy"])  # the full path, never cut
    rows = json.loads(invoke("models", "--json").output)
    assert {"llava-1.5-7b", "toy"} <= {row["name"] for row in rows}
    assert {"name", "kind", "family", "parameters", "weights"} == set(rows[0])


def test_toy_declares_its_questions_and_every_task_question_matches():
    shipped = json.loads((SHIPPED_MODELS["toy"] / TEMPLATES_FILE).read_text())
    assert shipped == question_templates()
    patterns = shipped["patterns"]
    questions = [q.text for _, q in samples(1234, 400)] + shipped["examples"]
    assert all(any(re.fullmatch(p, q, re.IGNORECASE) for p in patterns) for q in questions)
    for outside in ("What is in the picture?", "What color is the circle?", "How many dogs are there?"):
        assert not any(re.fullmatch(p, outside, re.IGNORECASE) for p in patterns)


def test_run_on_the_toy_warns_outside_its_questions(image_file):
    known = invoke("run", "--model", "toy", "--image", image_file, "--prompt", "How many objects are there?")
    assert known.exit_code == 0 and "warning" not in known.output, known.output
    unknown = invoke("run", "--model", "toy", "--image", image_file, "--prompt", "What is in the picture?")
    assert unknown.exit_code == 0, unknown.output
    assert f"warning: this model knows only the questions in {SHIPPED_MODELS['toy'] / TEMPLATES_FILE}" in unknown.output
