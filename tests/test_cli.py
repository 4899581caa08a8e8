"""User errors through the CLI: one line, non-zero exit, no traceback."""

import pytest
from click.testing import CliRunner

from vtpexport.cli import main


def invoke(*args):
    result = CliRunner().invoke(main, list(args))
    return result


def assert_one_line_error(result, pattern):
    import re

    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert re.search(pattern, lines[0]), lines[0]


def test_help_lists_commands():
    result = invoke("--help")
    assert result.exit_code == 0 and "run" in result.output and "models" in result.output


def test_models_lists_aliases_and_builtins():
    result = CliRunner().invoke(main, ["models"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name in ("llava-1.5-7b", "llava-next-mistral-7b", "tiny-llava-next", "7.063 B"):
        assert name in result.output


def test_run_answers_on_builtin(image_file):
    result = invoke(
        "run", "--model", "tiny-llava-1.5", "--image", str(image_file), "--prompt", "What?", "--max-new-tokens", "4"
    )
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--model", "llava-9b"], r"unknown model 'llava-9b': use one of .*llava-1.5-7b"),
        (["--model", "llava-1.5-7b", "--weights", "/nonexistent/w"], r"weights folder not found: /nonexistent/w"),
        (["--model", "./no/such/folder"], r"model folder not found"),
        (["--prompt", "  "], r"empty prompt"),
        (["--max-new-tokens", "600"], r"no room for the image: .* > the model's context of 512"),
    ],
)
def test_run_bad_input(image_file, args, pattern):
    base = {"--model": "tiny-llava-1.5", "--image": str(image_file), "--prompt": "What?"}
    extra = dict(zip(args[::2], args[1::2], strict=True))
    flat = [x for kv in {**base, **extra}.items() for x in kv]
    assert_one_line_error(invoke("run", *flat), pattern)


def test_run_corrupt_and_missing_images(tmp_path, image_file):
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not a picture")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(image_file.read_bytes()[:200])
    for path, pattern in [
        (not_image, "is not an image"),
        (truncated, "corrupt or truncated"),
        (tmp_path / "gone.png", "image not found"),
    ]:
        result = invoke("run", "--model", "tiny-llava-1.5", "--image", str(path), "--prompt", "What?")
        assert_one_line_error(result, pattern)


def test_run_incomplete_weights_folder(tmp_path):
    from vtpexport.models.builtin import write_builtin

    folder = write_builtin("tiny-llava-1.5", tmp_path / "m")
    (folder / "model.safetensors").unlink()
    image = tmp_path / "i.png"
    from conftest import random_image

    random_image(20, 20).save(image)
    result = invoke("run", "--model", str(folder), "--image", str(image), "--prompt", "What?")
    assert_one_line_error(result, f"no weights in {folder}")
