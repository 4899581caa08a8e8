"""The `vtpexport` command: a thin Click layer over the library (parse, call, print).

Arguments and paths are checked (cli_args) before anything heavy is imported, so `--help` and a
user's mistake answer at once; torch, transformers and onnx load inside the commands.
"""

from __future__ import annotations

from pathlib import Path

import click

from .cli_args import (
    BENCH,
    BUILD,
    CALIBRATION,
    EVALUATION,
    INSPECT,
    RANDOM_WEIGHTS,
    RUN,
    TOY_DATA,
    VERIFY,
    VIZ,
    current,
    existing,
    options,
)
from .errors import UserError, one_line


class _Cli(click.Group):
    """The one error boundary: a UserError, a usage error or an error of the filesystem (a full
    disk, a read-only folder) is printed as one line with exit status 2, never a traceback.
    Staging folders are already gone: they are removed as the error passes through them."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as error:
            click.echo(f"error: {error}", err=True)
        except click.UsageError as error:
            command = error.ctx.command_path if error.ctx else ctx.command_path
            click.echo(f"error: {error.format_message()} (see {command} --help)", err=True)
        except OSError as error:
            click.echo(f"error: {one_line(error)}", err=True)
        ctx.exit(2)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vtpexport")
def main() -> None:
    """Calibrate, bake in and export visual-token pruning for LLaVA-family models."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per model, for scripts.")
def models(as_json: bool) -> None:
    """List model aliases and built-in models, their sizes, and where their weights were found."""
    from .models.catalog import catalog, catalog_json, catalog_lines

    rows = catalog()
    click.echo(catalog_json(rows) if as_json else catalog_lines(rows))


@main.command()
@click.argument("export_dir", required=False)
@options(*RUN)
def run(export_dir, model_spec, weights, recipe_path, text_encoder, image_path, prompt, backend, max_new_tokens, dtype):
    """Answer a question about an image with greedy decoding: with EXPORT_DIR its graphs run
    (ONNX Runtime, or TensorRT engines with --backend trt); with --model our eager graph runs
    (pruned with --recipe; the current recipe is not implied here)."""
    if (export_dir is None) == (model_spec is None):
        raise UserError("give either an export folder or --model (not both)")
    if export_dir is not None and (recipe_path or weights or text_encoder):
        raise UserError("--recipe, --weights and --text-encoder apply to --model runs; an export has them baked in")
    existing(export_dir, "export folder", folder=True)
    existing(recipe_path, "recipe")
    existing(image_path, "image")
    if not prompt.strip():
        raise UserError("empty prompt: pass a question with --prompt")
    from .models.images import load_image
    from .runtime import answer, open_runner

    image = load_image(image_path)
    if export_dir is not None:
        runner = open_runner(export_dir, backend)
    else:
        import torch

        from .runtime.eager import open_eager_runner

        runner = open_eager_runner(model_spec, weights, getattr(torch, dtype), recipe_path, text_encoder)
    text, warning = answer(runner, image, prompt, max_new_tokens)
    if warning:
        click.echo(warning, err=True)
    click.echo(text)


@main.command()
@options(*BUILD)
def build(recipe_path, model_spec, weights, no_prune, from_dir, engine, out, triton_repo, **settings) -> None:
    """Export the vision and LLM ONNX graphs with a recipe (default: the current one) baked in,
    plus a manifest; --engine trt also builds TensorRT engines, --triton-repo a Triton repository
    (with --from, only those, for an existing export)."""
    if from_dir is None and not no_prune:
        recipe_path = current(recipe_path, "build")
        if recipe_path is None:
            raise UserError(
                "no recipe: pass --recipe FILE, run vtpexport calibrate first (its recipe becomes the current "
                "one), or pass --no-prune for the unpruned baseline"
            )
    existing(recipe_path, "recipe")
    existing(from_dir, "export folder", folder=True)
    from .export.build import BuildSettings, build_export

    for line in build_export(
        BuildSettings(**settings), recipe_path, model_spec, weights, no_prune, from_dir, engine, out, triton_repo
    ):
        click.echo(line)


@main.command()
@click.argument("export_dir")
@options(*VERIFY)
def verify(export_dir, model_spec, weights, backend, data, max_new_tokens, atol, rtol) -> None:
    """Check an export against the eager reference: per-output atol / rtol, top-1 agreement, generations."""
    existing(export_dir, "export folder", folder=True)
    existing(data, "data")
    from rich.console import Console

    from .verify import tolerance_overrides, verify_export, verify_view

    atol, rtol = tolerance_overrides(atol, "--atol"), tolerance_overrides(rtol, "--rtol")
    report = verify_export(export_dir, model_spec, weights, data, max_new_tokens, atol, rtol, backend, progress=True)
    if report.changed_files:
        click.echo(f"error: {export_dir} does not match its manifest: {', '.join(report.changed_files)}", err=True)
        raise SystemExit(1)
    Console().print(verify_view(report))
    if not report.passed:
        raise SystemExit(1)


@main.command()
@click.argument("export_dir")
def lint(export_dir: str) -> None:
    """Static TensorRT-compatibility check of an export's graphs: counts each graph's attention
    layers and how many TensorRT fuses, and refuses a weight stored twice."""
    existing(export_dir, "export folder", folder=True)
    from .export.lint import lint_export

    result = lint_export(export_dir)
    click.echo(result.summary())
    if result.issues:
        raise SystemExit(1)


@main.command()
@click.argument("recipe_path", metavar="[RECIPE]", required=False)
@options(*INSPECT)
def inspect(recipe_path, model_spec, image_size, prefix_len, suffix_len, plot_path) -> None:
    """Tokens and FLOPs per layer of a recipe (default: the current one): paper convention and
    exact whole-model count."""
    recipe_path = current(recipe_path, "inspect")
    if recipe_path is None:
        raise UserError("no recipe: pass RECIPE, or run vtpexport calibrate first (its recipe becomes the current one)")
    from rich.console import Console

    from .recipe import Recipe
    from .viz import parse_image_size, plot_token_pyramid, recipe_flops

    size = parse_image_size(image_size) if image_size else None
    recipe = Recipe.load(recipe_path)
    result = recipe_flops(recipe, model_spec, size, prefix_len, suffix_len)
    if plot_path and result.paper is None:
        raise UserError(f"recipe {recipe.name!r} has an adaptive selector: there is no fixed token pyramid to plot")
    if plot_path:  # first, so that a failed write prints nothing else
        plot_token_pyramid(result.paper, plot_path, f"{recipe.name} on {model_spec or recipe.model.name}")
    Console().print(result.view)
    if plot_path:
        click.echo(f"wrote {plot_path}")


@main.command()
@options(*CALIBRATION)
def calibrate(model_spec, weights, data, out, force, **settings) -> None:
    """Make a recipe that meets a FLOPs budget (FitPrune from data, PyramidDrop / FastV solved)
    and make it the current one, which build, inspect, viz and eval use by default."""
    if model_spec is None:
        raise UserError("pass --model (see vtpexport models)")
    from rich.console import Console

    from .calibrate import CalibrationRequest, calibrate_to_file, calibration_view
    from .workspace import remember_recipe

    request = CalibrationRequest.from_options(model_spec, out, weights=weights, data=data, **settings)
    result, path = calibrate_to_file(request, out, force, progress=True)
    Console().print(calibration_view(result))
    remember_recipe(path)
    click.echo(f"wrote {path} (now the current recipe)")
    click.echo("next: vtpexport build --engine onnx   (or --engine trt for TensorRT engines)")


@main.command(name="eval")
@click.argument("candidates", nargs=-1, metavar="[DIR_OR_RECIPE]...")
@options(*EVALUATION)
def evaluate(candidates, data, model_spec, weights, out_path, backend, plot_path, limit, max_new_tokens) -> None:
    """Accuracy, agreement with the unpruned model and first-token KL of export folders (run on
    --backend) and recipes (run eagerly; default: the current recipe), against the unpruned model."""
    candidates = list(candidates) or [current(None, "eval")]
    if candidates == [None]:
        raise UserError("nothing to evaluate: pass export folders or recipes, or run vtpexport calibrate first")
    existing(data, "data")
    from rich.console import Console

    from .eval import evaluate as run_evaluation
    from .eval import pareto_points, summary_view
    from .files import check_writable
    from .viz import plot_pareto

    for path, what in ((out_path, "the results"), (plot_path, "the plot")):
        if path:
            check_writable(path, what)  # before the long part
    report = run_evaluation(candidates, data, model_spec, weights, limit, max_new_tokens, backend, progress=True)
    Console().print(summary_view(report))
    if out_path:
        click.echo(f"wrote {report.write_json(out_path)}")
    if plot_path:
        plot_pareto(pareto_points(report), plot_path, f"{report.model}: {report.samples} samples", report.metric)
        click.echo(f"wrote {plot_path}")


@main.command()
@click.argument("export_dir")
@options(*BENCH)
def bench(export_dir, baseline, data, image_path, prompt, limit, repeats, decode_tokens, out_path, backend) -> None:
    """Time to first token, decode tokens/s, peak memory and FLOPs of an export against a
    baseline, measured alternately in this process (memory in a fresh subprocess per side)."""
    for folder in (export_dir, baseline):
        existing(folder, "export folder", folder=True)
    existing(data, "data")
    existing(image_path, "image")
    from rich.console import Console

    from .bench import bench_view, benchmark
    from .files import check_writable

    if out_path:
        check_writable(out_path, "the results")
    report = benchmark(export_dir, baseline, data, image_path, prompt, repeats, decode_tokens, limit, True, backend)
    Console().print(bench_view(report))
    if out_path:
        click.echo(f"wrote {report.write_json(out_path)}")


@main.command()
@options(*VIZ)
def viz(model_spec, weights, recipe_path, image_path, prompt, out_path) -> None:
    """The image with the patches a recipe (default: the current one) keeps highlighted: one
    panel per selector / drop stage."""
    recipe_path = current(recipe_path, "viz")
    if recipe_path is None:
        raise UserError("no recipe: pass --recipe FILE, or run vtpexport calibrate first")
    existing(image_path, "image")
    if not prompt.strip():
        raise UserError("empty prompt: pass a question with --prompt")
    from .files import check_writable
    from .viz import plot_recipe_on_image

    check_writable(out_path, "the plot")
    plot_recipe_on_image(recipe_path, model_spec, weights, image_path, prompt, out_path)
    click.echo(f"wrote {out_path}")


@main.command("toy-data")
@options(*TOY_DATA)
def toy_data(out, count, seed, force) -> None:
    """Write questions about generated scenes of the toy task (images, questions, answers, types)."""
    from .zoo.toy_data import write_dataset

    click.echo(f"wrote {count} samples to {write_dataset(Path(out), count, seed, force) / 'data.jsonl'}")


@main.command("random-weights")
@options(*RANDOM_WEIGHTS)
def random_weights(model_name, out, layers, dtype, seed, force) -> None:
    """A random-weight checkpoint of an alias's exact architecture, to dry-run the pipeline
    (calibrate, build, verify, TensorRT sizing) before the real weights arrive."""
    import torch

    from .models.random_weights import write_random_checkpoint

    folder = write_random_checkpoint(model_name, out, layers, getattr(torch, dtype), seed, force, progress=True)
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    click.echo(f"wrote {folder} ({size / 1e9:.2f} GB of {dtype} weights)")
    click.echo(f"use it as: --model {model_name} --weights {folder}")
