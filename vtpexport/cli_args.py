"""The command line's argument groups, declared once and shared by the commands (as Polygraphy's
`tools/args`), and the checks of paths and recipes that run before anything heavy is imported."""

from __future__ import annotations

from pathlib import Path

import click

from .errors import UserError

DTYPES = ("float32", "float16", "bfloat16")
BACKENDS = ("ort", "ort-cuda", "ort-trt", "trt")


class _Methods(click.Choice):
    """A kind's methods in the registry, looked up when first needed (method modules import torch)."""

    def __init__(self, kind: str):
        self.kind, self.case_sensitive = kind, True

    @property
    def choices(self) -> tuple[str, ...]:
        from .pruning.registry import names

        return names(self.kind)


def existing(path: str | None, what: str, folder: bool = False) -> str | None:
    """`path` if it exists (a folder when `folder`), else one line naming it."""
    if path is not None and not (Path(path).is_dir() if folder else Path(path).exists()):
        raise UserError(f"{what} not found: {path}")
    return path


def current(recipe: str | None, command: str) -> str | None:
    """The named recipe, else the current one (from calibrate), saying so on stderr."""
    from .workspace import recipe_or_current

    recipe, note = recipe_or_current(existing(recipe, "recipe"), command)
    if note:
        click.echo(note, err=True)
    return recipe


def options(*declarations):
    """Apply a list of option declarations as one decorator (the first shown first in --help)."""

    def apply(function):
        for declaration in reversed(declarations):
            function = declaration(function)
        return function

    return apply


MODEL = click.option("--model", "model_spec", default=None, help="Alias, built-in model or Hugging Face folder.")
WEIGHTS = click.option("--weights", default=None, help="Folder with the alias's weights (Hugging Face layout).")
RECIPE = click.option("--recipe", "recipe_path", default=None, help="Recipe YAML (default: the current one).")
BACKEND = click.option("--backend", type=click.Choice(BACKENDS), default="ort", show_default=True)
FORCE = click.option("--force", is_flag=True, help="Replace an existing output.")
IMAGE = click.option("--image", "image_path", required=True, help="Image file.")
PROMPT = click.option("--prompt", required=True, help="Question about the image.")
IMAGE_SIZE = click.option(
    "--image-size",
    default=None,
    metavar="HxW",
    help="Image size in pixels the token counts hold at; they depend on it only for LLaVA-NeXT's anyres tiles "
    "(default: the model's reference size, its largest tiling).",
)
TEXT_ENCODER = click.option(
    "--text-encoder",
    default=None,
    help="CLIP checkpoint folder (CLIPModel + tokenizer) for text-guided selectors (recover); "
    "default: the model's CLIP, looked up like its weights.",
)


def json_out(what: str):
    return click.option("--out", "out_path", default=None, metavar="FILE.json", help=f"Write {what} as JSON.")


# `vtpexport build`'s settings (export.build.BuildSettings' fields).
EXPORT_SETTINGS = [
    click.option(
        "--precision",
        type=click.Choice(["fp32", "fp16", "bf16"]),
        default="fp32",
        show_default=True,
        help="Weights, activations and attention; norms and pruning scores stay fp32.",
    ),
    click.option(
        "--trt-target",
        type=click.Choice(["10", "11"]),
        default="10",
        show_default=True,
        help="TensorRT generation whose fused attention the graphs use: 10 (10.0-10.13, Jetson) writes "
        "MatMul-Softmax-MatMul at opset 18; 11 (>= 10.14) writes ONNX Attention at opset 23.",
    ),
    click.option("--opset", type=int, default=None, help="ONNX opset (default: the --trt-target's, 18 or 23)."),
    click.option("--max-batch", type=click.IntRange(1, 1024), default=4, show_default=True),
    click.option("--max-prompt-len", type=click.IntRange(1, 1 << 15), default=256, show_default=True),
    click.option("--max-new-tokens", type=click.IntRange(1, 1 << 15), default=128, show_default=True),
    FORCE,
    TEXT_ENCODER,
    click.option(
        "--workspace",
        type=click.FloatRange(0, min_open=True),
        default=None,
        help="TensorRT workspace limit in GiB (default 4).",
    ),
    click.option("--timing-cache", default=None, help="TensorRT timing cache file: loaded if present, reused, saved."),
    click.option(
        "--triton-repo", default=None, help="Also write a Triton model repository here (graphs + generation)."
    ),
]

# `vtpexport build`: what is exported (or the export to build engines for) and where.
BUILD = [
    RECIPE,
    MODEL,
    WEIGHTS,
    click.option("--no-prune", is_flag=True, help="Export the unpruned baseline (no recipe)."),
    click.option(
        "--from", "from_dir", default=None, help="An existing export: build only engines / a Triton repository."
    ),
    click.option("--engine", type=click.Choice(["onnx", "trt"]), default="onnx", show_default=True),
    click.option("--out", default=None, help="Output folder (default: exported/<recipe name>)."),
    *EXPORT_SETTINGS,
]

# `vtpexport calibrate`'s request (calibrate.CalibrationRequest.from_options' arguments).
CALIBRATION = [
    MODEL,
    WEIGHTS,
    click.option(
        "--flops-budget",
        required=True,
        metavar="B",
        help="Fraction in (0, 1] of the unpruned visual-token LLM FLOPs (paper convention) the pruned model may spend.",
    ),
    click.option(
        "--method",
        type=_Methods("schedule"),
        default=None,
        help="The schedule solved for the budget (default: fitprune; none with a --selector given without its "
        "count, whose count is then solved alone).",
    ),
    click.option(
        "--selector",
        type=_Methods("selector"),
        default=None,
        help="A pre-LLM selector composed with the schedule; the budget covers both.",
    ),
    click.option(
        "--selector-ratio", type=float, default=None, help="The selector's share of tokens / rows kept (per tile)."
    ),
    click.option(
        "--selector-tokens", type=int, default=None, help="The selector's fixed count of kept tokens (per tile)."
    ),
    IMAGE_SIZE,
    click.option(
        "--data",
        default=None,
        help='FitPrune: JSONL of {"image": ..., "question": ...}, or a folder of images (questions in its '
        "questions.txt). Default: the shipped calibration_data/.",
    ),
    click.option("--samples", type=click.IntRange(1), default=64, show_default=True, help="Samples drawn from --data."),
    click.option("--seed", type=int, default=0, show_default=True, help="Draws the samples when --data has more."),
    click.option("--skip-bad", is_flag=True, help="Skip (and count) unreadable images instead of stopping."),
    click.option(
        "--stop-rule",
        type=click.Choice(["recipe", "samples"]),
        default="recipe",
        show_default=True,
        help="FitPrune: project FLOPs for the recipe (our fix) or per sample (the reference code).",
    ),
    click.option(
        "--fastv-layer",
        type=click.IntRange(1),
        default=2,
        show_default=True,
        help="FastV's and dart-llm's K (tokens drop after layer K - 1).",
    ),
    click.option(
        "--stage-layers", default=None, metavar="L1,L2,..", help="PyramidDrop stage ends (default L/4,L/2,3L/4)."
    ),
    click.option(
        "--device",
        default="auto",
        show_default=True,
        help="FitPrune: where the model runs (auto: CUDA if seen; cpu, cuda:1).",
    ),
    click.option(
        "--dtype",
        type=click.Choice(("auto", *DTYPES)),
        default="auto",
        show_default=True,
        help="FitPrune model dtype (auto: bf16 on a GPU; fp32 on the CPU if it fits, else bf16).",
    ),
    click.option("--out", default=None, help="Recipe file (default: recipes/<name>.yaml)."),
    FORCE,
]

# `vtpexport verify`: the reference and the samples compared.
VERIFY = [
    MODEL,
    WEIGHTS,
    BACKEND,
    click.option("--data", default=None, help='JSONL of {"image": ..., "question": ...} (default: built-in samples).'),
    click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=20, show_default=True),
    click.option(
        "--atol",
        multiple=True,
        metavar="[OUTPUT:]VALUE",
        help="Absolute tolerance, for every output or one (vision, prefill, decode, text_encoder); repeatable "
        "(default: the precision's, 1e-4 for fp32).",
    ),
    click.option(
        "--rtol",
        multiple=True,
        metavar="[OUTPUT:]VALUE",
        help="Relative tolerance: an element passes when |export - eager| <= atol + rtol * |eager| "
        "(default: the precision's, 1e-5 for fp32).",
    ),
]

# `vtpexport inspect`: the model and prompt the FLOPs are counted for.
INSPECT = [
    MODEL,
    IMAGE_SIZE,
    click.option(
        "--prefix-len", type=click.IntRange(0), default=35, show_default=True, help="Text tokens before the image."
    ),
    click.option(
        "--suffix-len", type=click.IntRange(0), default=40, show_default=True, help="Text tokens after the image."
    ),
    click.option(
        "--plot", "plot_path", default=None, metavar="FILE.png", help="Also write the token pyramid as a PNG."
    ),
]

# `vtpexport eval`: the data, the reference and the outputs.
EVALUATION = [
    click.option("--data", required=True, help='JSONL of {"image", "question", optional "answer" and "type"}.'),
    MODEL,
    WEIGHTS,
    json_out("the full results"),
    BACKEND,
    click.option(
        "--plot", "plot_path", default=None, metavar="FILE.png", help="Write accuracy (or agreement) vs FLOPs."
    ),
    click.option("--limit", type=click.IntRange(1), default=None, help="Evaluate the first N rows only."),
    click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=8, show_default=True),
]

# `vtpexport bench`: the baseline, the workload and the outputs.
BENCH = [
    click.option("--baseline", required=True, help="Export folder to compare against (e.g. the unpruned build)."),
    click.option("--data", default=None, help="JSONL of {image, question}: its first --limit rows are the prompts."),
    click.option("--image", "image_path", default=None, help="One image (with --prompt) instead of --data."),
    click.option("--prompt", default=None, help="The question about --image."),
    click.option("--limit", type=click.IntRange(1), default=4, show_default=True, help="Prompts taken from --data."),
    click.option("--repeats", type=click.IntRange(1), default=5, show_default=True),
    click.option("--decode-tokens", type=click.IntRange(1, 4096), default=16, show_default=True),
    json_out("the measurements"),
    BACKEND,
]

# `vtpexport toy-data`: the data set written.
TOY_DATA = [
    click.option("--out", required=True, help="Folder for images/ and data.jsonl."),
    click.option("--count", type=click.IntRange(1), default=400, show_default=True, help="Number of samples."),
    click.option("--seed", type=int, default=1234, show_default=True, help="1234 is the toy's held-out split."),
    FORCE,
]

# `vtpexport random-weights`: the checkpoint written.
RANDOM_WEIGHTS = [
    click.option("--model", "model_name", required=True, help="A model alias (see `vtpexport models`)."),
    click.option("--out", required=True, help="The checkpoint folder to write."),
    click.option("--layers", type=int, default=None, help="Keep only this many LLM decoder layers (default: all)."),
    click.option("--dtype", type=click.Choice(DTYPES), default="bfloat16", show_default=True),
    click.option("--seed", type=int, default=0, show_default=True),
    FORCE,
]

# `vtpexport run`: an export folder or an eager model, and the question.
RUN = [
    MODEL,
    WEIGHTS,
    RECIPE,
    TEXT_ENCODER,
    IMAGE,
    PROMPT,
    BACKEND,
    click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=64, show_default=True),
    click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True, help="Eager run only."),
]

# `vtpexport viz`: the recipe, the image and the picture written.
VIZ = [
    MODEL,
    WEIGHTS,
    RECIPE,
    IMAGE,
    click.option("--prompt", required=True, help="Question about the image (in-LLM schedules score against it)."),
    click.option("--out", "out_path", required=True, metavar="FILE.png", help="Where to write the picture."),
]
