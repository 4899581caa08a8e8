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
