"""The `vtpexport` command: a thin Click layer over the library (parse, call, print)."""

from __future__ import annotations

import click

from .errors import UserError

DTYPES = ("float32", "float16", "bfloat16")


class _Cli(click.Group):
    """Prints a UserError as one line and exits with status 2, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as error:
            click.echo(f"error: {error}", err=True)
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
@click.option("--model", "model_spec", required=True, help="Alias, built-in model or local Hugging Face folder.")
@click.option("--weights", type=str, default=None, help="Folder with the alias's weights (Hugging Face layout).")
@click.option("--image", "image_path", required=True, help="Image file.")
@click.option("--prompt", required=True, help="Question about the image.")
@click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=64, show_default=True)
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True)
def run(model_spec: str, weights: str | None, image_path: str, prompt: str, max_new_tokens: int, dtype: str) -> None:
    """Answer a question about an image with greedy decoding (eager reference graph)."""
    import torch

    from .models.images import load_image
    from .models.loader import load_model
    from .runtime.eager import greedy_generate, prepare

    image = load_image(image_path)
    if not prompt.strip():
        raise UserError("empty prompt: pass a question with --prompt")
    model = load_model(model_spec, weights, getattr(torch, dtype))
    batch = prepare(model, [image], [prompt], max_new_tokens)
    tokens = greedy_generate(model, batch, max_new_tokens)[0]
    click.echo(model.tokenizer.decode(tokens, skip_special_tokens=True).strip())


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
    from .models.anyres import num_image_tokens, num_tiles
    from .models.loader import architecture
    from .recipe import Recipe
    from .viz import flops_view, plot_token_pyramid

    recipe = Recipe.load(recipe_path)
    model_name = model_spec or recipe.model.name
    args = architecture(model_name)
    recipe.check_model(args, model_name)
    if image_size is None:
        sizes = [tuple(p) for p in args.image_grid_pinpoints] or [(args.vision.image_size,) * 2]
        size = max(sizes, key=lambda hw: (hw[0] * hw[1], hw))
    else:
        try:
            size = tuple(int(x) for x in image_size.lower().split("x"))
        except ValueError:
            size = ()
        if len(size) != 2 or min(size) < 1:
            raise UserError(f"--image-size wants HEIGHTxWIDTH in pixels (e.g. 672x672), got {image_size!r}")
    n_image, tiles = num_image_tokens(size, args), num_tiles(size, args)
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
