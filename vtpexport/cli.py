"""The `vtpexport` command: a thin Click layer over the library (parse, call, print)."""

from __future__ import annotations

import click

from .errors import UserError, one_line

DTYPES = ("float32", "float16", "bfloat16")
BACKENDS = ("ort", "ort-cuda", "ort-trt", "trt")
TEXT_ENCODER_HELP = (
    "CLIP checkpoint folder (CLIPModel + tokenizer) for text-guided selectors (recover); "
    "default: the model's CLIP, looked up like its weights."
)


class _RegisteredMethods(click.Choice):
    """The pruning methods of a kind in the registry, looked up on first use (the registry's
    method modules import torch)."""

    def __init__(self, kind: str):
        self.kind = kind
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:
        from .pruning.registry import names

        return names(self.kind)


class _Cli(click.Group):
    """The one error boundary: a UserError, or an error of the filesystem (a full disk, a
    read-only folder), is printed as one line with exit status 2, never a traceback. Staging
    folders are already gone: they are removed as the error passes through them."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as error:
            click.echo(f"error: {error}", err=True)
            ctx.exit(2)
        except OSError as error:
            click.echo(f"error: {one_line(error)}", err=True)
            ctx.exit(2)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vtpexport")
def main() -> None:
    """Calibrate, bake in and export visual-token pruning for LLaVA-family models."""


@main.command()
def models() -> None:
    """List model aliases and built-in models, where weights were found, and sizes."""
    from rich.console import Console
    from rich.table import Column, Table

    from .models.catalog import catalog

    table = Table(Column("model", no_wrap=True), "kind", "family", "parameters", "weights")
    for row in catalog():
        table.add_row(
            row.name,
            row.kind,
            row.family,
            f"{row.parameters / 1e9:.3f} B" if row.parameters > 1e8 else f"{row.parameters / 1e6:.2f} M",
            row.weights,
        )
    Console().print(table)


@main.command()
@click.argument("export_dir", required=False)
@click.option("--model", "model_spec", help="Alias, built-in model or local Hugging Face folder (eager run).")
@click.option("--weights", type=str, default=None, help="Folder with the alias's weights (Hugging Face layout).")
@click.option("--recipe", "recipe_path", default=None, help="Recipe YAML: run pruned (eager run).")
@click.option("--text-encoder", default=None, help=TEXT_ENCODER_HELP)
@click.option("--image", "image_path", required=True, help="Image file.")
@click.option("--prompt", required=True, help="Question about the image.")
@click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=64, show_default=True)
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True, help="Eager run only.")
@click.option("--backend", type=click.Choice(BACKENDS), default="ort", show_default=True, help="Export run only.")
def run(
    export_dir: str | None,
    model_spec: str | None,
    weights: str | None,
    recipe_path: str | None,
    text_encoder: str | None,
    image_path: str,
    prompt: str,
    max_new_tokens: int,
    dtype: str,
    backend: str,
) -> None:
    """Answer a question about an image with greedy decoding.

    With EXPORT_DIR the exported graphs run (ONNX Runtime, or TensorRT engines with --backend trt);
    with --model our eager graph runs.
    """
    from .models.images import load_image

    if (export_dir is None) == (model_spec is None):
        raise UserError("give either an export folder or --model (not both)")
    if export_dir is not None and (recipe_path or weights or text_encoder):
        raise UserError(
            "--recipe, --weights and --text-encoder apply to --model runs; an export folder has them baked in"
        )
    image = load_image(image_path)
    if not prompt.strip():
        raise UserError("empty prompt: pass a question with --prompt")
    if export_dir is not None:
        from .runtime import open_runner

        runner = open_runner(export_dir, backend)
        tokens = runner.generate(runner.prepare([image], [prompt], max_new_tokens), max_new_tokens)[0]
        tokenizer = runner.tokenizer
    else:
        import torch

        from .models.loader import load_model
        from .recipe import Recipe
        from .runtime.eager import greedy_generate, prepare

        recipe = Recipe.load(recipe_path) if recipe_path else None
        model = load_model(model_spec, weights, getattr(torch, dtype))
        if text_encoder is not None:
            from .models.text_encoder import attach_text_encoder

            attach_text_encoder(model, text_encoder)
        batch = prepare(model, [image], [prompt], max_new_tokens, recipe)
        tokens = greedy_generate(model, batch, max_new_tokens, recipe=recipe)[0]
        tokenizer = model.tokenizer
    click.echo(tokenizer.decode(tokens, skip_special_tokens=True).strip())


@main.command()
@click.option("--recipe", "recipe_path", default=None, help="Recipe YAML to bake in.")
@click.option(
    "--from",
    "from_dir",
    default=None,
    help="An existing export folder to build engines / a Triton repository for (no ONNX export).",
)
@click.option("--model", "model_spec", default=None, help="Model (default: the recipe's model).")
@click.option("--weights", default=None, help="Folder with the alias's weights.")
@click.option("--no-prune", is_flag=True, help="Export the unpruned baseline (ignores --recipe).")
@click.option("--engine", type=click.Choice(["onnx", "trt"]), default="onnx", show_default=True)
@click.option("--out", default=None, help="Output folder (default: exported/<recipe name>).")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "bf16"]),
    default="fp32",
    show_default=True,
    help="Weights, activations and attention; norms and pruning scores stay fp32.",
)
@click.option(
    "--trt-target",
    type=click.Choice(["10", "11"]),
    default="10",
    show_default=True,
    help="TensorRT generation whose fused attention the graphs use: 10 (10.0-10.13, Jetson) writes "
    "MatMul-Softmax-MatMul at opset 18; 11 (>= 10.14) writes ONNX Attention at opset 23.",
)
@click.option("--opset", type=int, default=None, help="ONNX opset (default: the --trt-target's, 18 or 23).")
@click.option("--max-batch", type=click.IntRange(1, 1024), default=4, show_default=True)
@click.option("--max-prompt-len", type=click.IntRange(1, 1 << 15), default=256, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(1, 1 << 15), default=128, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing output folder (or Triton repository).")
@click.option("--text-encoder", default=None, help=TEXT_ENCODER_HELP)
@click.option(
    "--workspace",
    "workspace_gib",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="TensorRT workspace limit in GiB (default 4).",
)
@click.option("--timing-cache", default=None, help="TensorRT timing cache file: loaded if present, reused, saved.")
@click.option(
    "--triton-repo", default=None, help="Also write a Triton model repository here (graph models + generation)."
)
def build(
    recipe_path,
    from_dir,
    workspace_gib,
    timing_cache,
    triton_repo,
    model_spec,
    weights,
    no_prune,
    engine,
    out,
    precision,
    trt_target,
    opset,
    max_batch,
    max_prompt_len,
    max_new_tokens,
    force,
    text_encoder,
) -> None:
    """Export vision / prefill / decode ONNX graphs with the recipe baked in, plus a manifest;
    with --engine trt also build TensorRT engines, with --triton-repo a Triton model repository
    (with --from, only those, for an existing export)."""
    import time

    from .export.build import build_onnx
    from .export.spec import ExportLimits
    from .export.tensorrt import build_engines

    start = time.monotonic()

    def report(message: str) -> None:
        click.echo(f"[{time.monotonic() - start:6.1f}s] {message}", err=True)

    def finish(folder) -> None:
        if engine == "trt":
            build_engines(folder, workspace_gib, timing_cache, report)
            click.echo(f"wrote TensorRT engines to {folder}")
        if triton_repo:
            from .export.triton import write_triton_repo

            click.echo(f"wrote Triton model repository {write_triton_repo(folder, triton_repo, force)}")

    if from_dir is not None:
        if recipe_path or model_spec or weights or no_prune:
            raise UserError("--from builds on an existing export; --recipe, --model and --no-prune do not apply")
        if engine != "trt" and not triton_repo:
            raise UserError("--from needs --engine trt or --triton-repo (the ONNX graphs are already in the folder)")
        finish(from_dir)
        return
    if no_prune:
        if recipe_path and model_spec is None:
            from .recipe import Recipe

            model_spec = Recipe.load(recipe_path).model.name
        recipe_path = None
    limits = ExportLimits(max_batch=max_batch, max_prompt_len=max_prompt_len, max_new_tokens=max_new_tokens)
    folder = build_onnx(
        model_spec, recipe_path, out, weights, limits, opset, force, report, precision, text_encoder, int(trt_target)
    )
    if engine == "trt":  # the ONNX is progress here, so a refusal prints its one error line and nothing else
        report(f"wrote {folder}")
    else:
        click.echo(f"wrote {folder}")
    finish(folder)


@main.command()
@click.argument("export_dir")
@click.option(
    "--model", "model_spec", default=None, help="Reference model (default: the one the export was built from)."
)
@click.option("--weights", default=None)
@click.option("--data", default=None, help='JSONL of {"image": ..., "question": ...} (default: built-in samples).')
@click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=20, show_default=True)
@click.option(
    "--tolerance",
    type=float,
    default=None,
    help="Max abs error allowed per graph (default by the export's precision: fp32 1e-4, fp16 5e-2, bf16 0.25).",
)
@click.option("--backend", type=click.Choice(BACKENDS), default="ort", show_default=True)
def verify(export_dir, model_spec, weights, data, max_new_tokens, tolerance, backend) -> None:
    """Check an export against the eager reference: per-graph error, top-1 agreement, generations."""
    from rich.console import Console
    from rich.table import Table

    from .verify import verify_export

    report = verify_export(export_dir, model_spec, weights, data, max_new_tokens, tolerance, backend, progress=True)
    if report.changed_files:
        click.echo(f"error: {export_dir} does not match its manifest: {', '.join(report.changed_files)}", err=True)
        raise SystemExit(1)
    table = Table("graph", "max abs error", "top-1 agreement", "compared", title=f"{report.samples} samples")
    for check in report.graphs.values():
        agreement = "-" if check.top1_agreement is None else f"{check.top1_agreement:.1%}"
        table.add_row(check.graph, f"{check.max_abs_error:.2e}", agreement, str(check.compared))
    Console().print(table)
    click.echo(f"greedy generations identical: {'yes' if report.generations_identical else 'NO'}")
    click.echo(f"verify {'passed' if report.passed else 'FAILED'} (tolerance {report.tolerance:g})")
    if not report.passed:
        raise SystemExit(1)


@main.command()
@click.argument("export_dir")
def lint(export_dir: str) -> None:
    """Static TensorRT-compatibility check of an export's graphs; counts each graph's attention
    layers and how many are in a form TensorRT fuses, and refuses a weight stored twice."""
    from .export.lint import attention_layers, duplicated_weights, format_issues, lint_model
    from .export.manifest import export_file, read_manifest

    manifest = read_manifest(export_dir)
    ranges = {name: (r["min"], r["opt"], r["max"]) for name, r in manifest["dims"].items()}
    issues, paths = [], []
    for name, graph in manifest["graphs"].items():
        path = export_file(export_dir, graph["file"], f"graphs.{name}.file")
        if not path.is_file():
            raise UserError(f"{path} is missing")
        issues += lint_model(path, graph_name=graph["file"], dim_ranges=ranges)
        layers = attention_layers(path)
        fusable = sum(layer.fusable for layer in layers)
        click.echo(f"{graph['file']}: {len(layers)} attention layers, {fusable} fusable")
        paths.append(path)
    issues += duplicated_weights(paths)
    if issues:
        click.echo(format_issues(issues).rstrip())
        reason = manifest.get("onnx_runtime_only")
        if reason:
            click.echo(f"this export is for ONNX Runtime only: {reason}")
        raise SystemExit(1)
    click.echo(f"{len(manifest['graphs'])} graphs pass the TensorRT lint")


@main.command()
@click.argument("recipe_path", metavar="RECIPE")
@click.option("--model", "model_spec", default=None, help="Model to count for (default: the recipe's model).")
@click.option(
    "--image-size",
    default=None,
    metavar="HxW",
    help="Image size (default: the model's native size; LLaVA-NeXT: its largest tiling).",
)
@click.option(
    "--prefix-len",
    type=click.IntRange(0),
    default=35,
    show_default=True,
    help="Prompt tokens before the image (exact count only; illustrative default).",
)
@click.option(
    "--suffix-len",
    type=click.IntRange(0),
    default=40,
    show_default=True,
    help="Prompt tokens after the image (exact count only; illustrative default).",
)
@click.option("--plot", "plot_path", default=None, metavar="FILE.png", help="Also write the token pyramid as a PNG.")
def inspect(
    recipe_path: str,
    model_spec: str | None,
    image_size: str | None,
    prefix_len: int,
    suffix_len: int,
    plot_path: str | None,
) -> None:
    """Tokens and FLOPs per layer of a recipe: paper convention and exact whole-model count."""
    from rich.console import Console

    from .flops import cache_lengths, exact_decode_macs, exact_prefill_macs, paper_flops
    from .models.loader import architecture
    from .recipe import Recipe
    from .viz import flops_view, plot_token_pyramid

    recipe = Recipe.load(recipe_path)
    model_name = model_spec or recipe.model.name
    args = architecture(model_name)
    recipe.check_model(args, model_name)
    if image_size is None:
        size = args.layout.reference_size()
    else:
        try:
            size = tuple(int(x) for x in image_size.lower().split("x"))
        except ValueError:
            size = ()
        if len(size) != 2 or min(size) < 1:
            raise UserError(f"--image-size wants HEIGHTxWIDTH in pixels (e.g. 672x672), got {image_size!r}")
    n_image, tiles = args.layout.num_tokens(size), args.layout.num_tiles(size)
    heading = f"{recipe.name} on {model_name} ({args.family}), {size[0]}x{size[1]} image: {n_image} visual tokens"
    if recipe.visual_tokens(args, n_image) is None:
        if plot_path:
            raise UserError(f"recipe {recipe.name!r} has an adaptive selector: there is no fixed token pyramid to plot")
        click.echo(
            f"{heading}\nvisual tokens entering the LLM: data-dependent (adaptive {recipe.selector.method}); "
            "FLOPs unknown. Give the selector a fixed budget (tokens: K) to count them."
        )
        return
    paper = paper_flops(args, recipe, n_image)
    text = (prefix_len, suffix_len)
    view = flops_view(
        heading,
        paper,
        exact_prefill_macs(args, recipe, n_image, *text, tiles),
        exact_prefill_macs(args, None, n_image, *text, tiles),
        exact_decode_macs(args, cache_lengths(args, recipe, n_image, *text)),
        exact_decode_macs(args, cache_lengths(args, None, n_image, *text)),
        f"P={prefix_len} + T={suffix_len} text tokens, {tiles} CLIP tile{'s' if tiles > 1 else ''}",
    )
    if plot_path:  # first, so that a failed write prints nothing else
        plot_token_pyramid(paper, plot_path, f"{recipe.name} on {model_name}")
    Console().print(view)
    if plot_path:
        click.echo(f"wrote {plot_path}")


@main.command()
@click.option("--model", "model_spec", required=True, help="Alias, built-in model or local Hugging Face folder.")
@click.option("--weights", default=None, help="Folder with the alias's weights (FitPrune only needs them).")
@click.option(
    "--flops-budget",
    "flops_budget",
    required=True,
    metavar="B",
    help="Fraction in (0, 1] of the unpruned visual-token LLM FLOPs (paper convention) the pruned model may spend.",
)
@click.option("--method", type=_RegisteredMethods("schedule"), default="fitprune", show_default=True)
@click.option(
    "--selector",
    type=_RegisteredMethods("selector"),
    default=None,
    help="A pre-LLM selector composed with the schedule; the budget covers both.",
)
@click.option("--selector-ratio", type=float, default=None, help="fopru-rank / fopru-row: share of tokens / rows kept.")
@click.option("--selector-tokens", type=int, default=None, help="prumerge: a fixed count of kept tokens (+1 merged).")
@click.option(
    "--data",
    default=None,
    help='FitPrune: JSONL of {"image": ..., "question": ...}, or a folder of images (questions in its '
    "questions.txt). Default: the shipped calibration_data/.",
)
@click.option("--samples", type=click.IntRange(1), default=64, show_default=True, help="Samples drawn from --data.")
@click.option("--seed", type=int, default=0, show_default=True, help="Draws the samples when --data has more.")
@click.option("--skip-bad", is_flag=True, help="Skip (and count) unreadable images instead of stopping.")
@click.option(
    "--stop-rule",
    type=click.Choice(["recipe", "samples"]),
    default="recipe",
    show_default=True,
    help="FitPrune: project FLOPs for the recipe (our fix) or per sample (the reference code).",
)
@click.option("--fastv-layer", type=click.IntRange(1), default=2, show_default=True, help="FastV's K.")
@click.option("--stage-layers", default=None, metavar="L1,L2,..", help="PyramidDrop stage ends (default L/4,L/2,3L/4).")
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="FitPrune: where the model runs (auto: CUDA if seen; cpu, cuda:1).",
)
@click.option(
    "--dtype",
    type=click.Choice(("auto", *DTYPES)),
    default="auto",
    show_default=True,
    help="FitPrune model dtype (auto: bf16 on a GPU; fp32 on the CPU if it fits, else bf16).",
)
@click.option("--out", default=None, help="Recipe file (default: recipes/<name>.yaml).")
@click.option("--force", is_flag=True, help="Replace an existing recipe file.")
def calibrate(
    model_spec,
    weights,
    flops_budget,
    method,
    selector,
    selector_ratio,
    selector_tokens,
    data,
    samples,
    seed,
    skip_bad,
    stop_rule,
    fastv_layer,
    stage_layers,
    device,
    dtype,
    out,
    force,
) -> None:
    """Make a recipe that meets a FLOPs budget: FitPrune from data, PyramidDrop / FastV solved."""
    from pathlib import Path

    from rich.console import Console

    from .calibrate import CalibrationRequest, calibration_view, check_writable, write_recipe
    from .calibrate import calibrate as run_calibration
    from .recipe import SelectorSpec

    if selector is None and (selector_ratio is not None or selector_tokens is not None):
        raise UserError("--selector-ratio and --selector-tokens need --selector")
    layers = None
    if stage_layers is not None:
        try:
            layers = tuple(int(x) for x in stage_layers.split(","))
        except ValueError:
            raise UserError(f"--stage-layers wants layer numbers like 8,16,24, got {stage_layers!r}") from None
    request = CalibrationRequest(
        model=model_spec,
        flops_budget=flops_budget,
        method=method,
        weights=weights,
        selector=SelectorSpec(selector, ratio=selector_ratio, tokens=selector_tokens) if selector else None,
        data=data,
        samples=samples,
        seed=seed,
        skip_bad=skip_bad,
        stop_rule=stop_rule,
        fastv_layer=fastv_layer,
        stage_layers=layers,
        device=device,
        dtype=dtype,
        name=Path(out).stem if out else None,
    )
    out = check_writable(out or Path("recipes") / f"{request.recipe_name}.yaml", force)  # before the long part
    result = run_calibration(request, progress=True)
    path = write_recipe(result.recipe, out, force)
    Console().print(calibration_view(result))
    click.echo(f"wrote {path}")


@main.command(name="eval")
@click.argument("candidates", nargs=-1, required=True, metavar="DIR_OR_RECIPE...")
@click.option("--data", required=True, help='JSONL of {"image", "question", optional "answer" and "type"}.')
@click.option("--model", "model_spec", default=None, help="Unpruned reference (default: the first argument's model).")
@click.option("--weights", default=None, help="Folder with the alias's weights.")
@click.option("--out", "out_path", default=None, metavar="FILE.json", help="Write the full results as JSON.")
@click.option("--plot", "plot_path", default=None, metavar="FILE.png", help="Write accuracy (or agreement) vs FLOPs.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Evaluate the first N rows only.")
@click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=8, show_default=True)
@click.option("--backend", type=click.Choice(BACKENDS), default="ort", show_default=True, help="For export folders.")
def evaluate(candidates, data, model_spec, weights, out_path, plot_path, limit, max_new_tokens, backend) -> None:
    """Accuracy, agreement with the unpruned model and first-token KL of exports and recipes.

    Each argument is an export folder (run with ONNX Runtime) or a recipe (run eagerly); all
    are compared against the unpruned model, run eagerly once.
    """
    from rich.console import Console

    from .eval import evaluate as run_evaluation
    from .eval import pareto_points, summary_view
    from .files import check_writable
    from .viz import plot_pareto

    for path, what in ((out_path, "the results"), (plot_path, "the plot")):
        if path:
            check_writable(path, what)  # before the long part
    report = run_evaluation(list(candidates), data, model_spec, weights, limit, max_new_tokens, backend, progress=True)
    Console().print(summary_view(report))
    if out_path:
        click.echo(f"wrote {report.write_json(out_path)}")
    if plot_path:
        plot_pareto(pareto_points(report), plot_path, f"{report.model}: {report.samples} samples", report.metric)
        click.echo(f"wrote {plot_path}")


@main.command()
@click.argument("export_dir")
@click.option("--baseline", required=True, help="Export folder to compare against (e.g. the unpruned build).")
@click.option("--data", default=None, help="JSONL of {image, question}: its first --limit rows are the prompts.")
@click.option("--image", "image_path", default=None, help="One image (with --prompt) instead of --data.")
@click.option("--prompt", default=None, help="The question about --image.")
@click.option("--limit", type=click.IntRange(1), default=4, show_default=True, help="Prompts taken from --data.")
@click.option("--repeats", type=click.IntRange(1), default=5, show_default=True)
@click.option("--decode-tokens", type=click.IntRange(1, 4096), default=16, show_default=True)
@click.option("--out", "out_path", default=None, metavar="FILE.json", help="Write the measurements as JSON.")
@click.option("--backend", type=click.Choice(BACKENDS), default="ort", show_default=True)
def bench(export_dir, baseline, data, image_path, prompt, limit, repeats, decode_tokens, out_path, backend) -> None:
    """Time to first token, decode tokens/s, peak memory and FLOPs of an export against a baseline.

    Both are measured alternately in this process; memory in a fresh subprocess per side.
    """
    from rich.console import Console

    from .bench import bench_view, benchmark
    from .files import check_writable

    if out_path:
        check_writable(out_path, "the results")
    report = benchmark(
        export_dir, baseline, data, image_path, prompt, repeats, decode_tokens, limit, progress=True, backend=backend
    )
    Console().print(bench_view(report))
    if out_path:
        click.echo(f"wrote {report.write_json(out_path)}")


@main.command()
@click.option("--model", "model_spec", default=None, help="Model (default: the recipe's model).")
@click.option("--weights", default=None, help="Folder with the alias's weights.")
@click.option("--recipe", "recipe_path", required=True, help="Recipe YAML whose kept patches to show.")
@click.option("--image", "image_path", required=True, help="Image file.")
@click.option("--prompt", required=True, help="Question about the image (in-LLM schedules score against it).")
@click.option("--out", "out_path", required=True, metavar="FILE.png", help="Where to write the picture.")
def viz(model_spec, weights, recipe_path, image_path, prompt, out_path) -> None:
    """The image with the patches a recipe keeps highlighted: one panel per selector / drop stage."""
    from .files import check_writable
    from .models.images import load_image
    from .models.loader import load_model
    from .recipe import Recipe
    from .viz import kept_patch_panels, plot_kept_patches, token_layout

    check_writable(out_path, "the plot")
    recipe = Recipe.load(recipe_path)
    image = load_image(image_path)
    if not prompt.strip():
        raise UserError("empty prompt: pass a question with --prompt")
    model = load_model(model_spec or recipe.model.name, weights)
    recipe.check_model(model.args, model.source.name)
    layout = token_layout(model.args, model.image_processor, image.width, image.height)
    panels = kept_patch_panels(model, recipe, image, prompt)
    plot_kept_patches(image, layout, panels, out_path, f"{recipe.name} on {model.source.name}: {prompt}")
    click.echo(f"wrote {out_path}")


@main.command("toy-data")
@click.option("--out", required=True, help="Folder for images/ and data.jsonl.")
@click.option("--count", type=click.IntRange(1), default=400, show_default=True, help="Number of samples.")
@click.option("--seed", type=int, default=1234, show_default=True, help="1234 is the toy's held-out split.")
@click.option("--force", is_flag=True, help="Replace an existing folder.")
def toy_data(out, count, seed, force) -> None:
    """Write questions about generated scenes of the toy task (images, questions, answers, types)."""
    from pathlib import Path

    from .zoo.toy_data import write_dataset

    click.echo(f"wrote {count} samples to {write_dataset(Path(out), count, seed, force) / 'data.jsonl'}")


@main.command("random-weights")
@click.option("--model", "model_name", required=True, help="A model alias (see `vtpexport models`).")
@click.option("--out", required=True, help="The checkpoint folder to write.")
@click.option("--layers", type=int, default=None, help="Keep only this many LLM decoder layers (default: all).")
@click.option("--dtype", type=click.Choice(DTYPES), default="bfloat16", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing folder.")
def random_weights(model_name, out, layers, dtype, seed, force) -> None:
    """A random-weight checkpoint of an alias's exact architecture, to dry-run the pipeline
    (calibrate, build, verify, TensorRT sizing) before the real weights arrive."""
    import torch

    from .models.random_weights import write_random_checkpoint

    folder = write_random_checkpoint(model_name, out, layers, getattr(torch, dtype), seed, force, progress=True)
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    click.echo(f"wrote {folder} ({size / 1e9:.2f} GB of {dtype} weights)")
    click.echo(f"use it as: --model {model_name} --weights {folder}")
