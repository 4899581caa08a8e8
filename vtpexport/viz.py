"""Views of a recipe's compute: the per-layer FLOPs table and the token-pyramid plot."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from rich.console import Group
from rich.table import Table
from rich.text import Text

from .errors import UserError
from .flops import ExactMacs, FlopsReport


def _macs(macs: int) -> str:
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if macs >= scale:
            return f"{macs / scale:.3f} {unit}"
    return f"{macs:,}"


def _cut(pruned: int, unpruned: int) -> str:
    return f"{100 * (1 - pruned / unpruned):.1f}%" if unpruned else "-"


def flops_view(
    title: str,
    paper: FlopsReport,
    prefill: ExactMacs,
    prefill_unpruned: ExactMacs,
    decode: ExactMacs,
    decode_unpruned: ExactMacs,
    text_tokens: str,
) -> Group:
    """Per-layer paper-convention table, then the totals of both counts side by side."""
    layers = Table()
    layers.add_column("layer", justify="right")
    layers.add_column("visual tokens entering\n(q/k/v, attention)", justify="right")
    layers.add_column("after drop\n(o_proj, MLP)", justify="right")
    layers.add_column("paper MACs", justify="right")
    unpruned_layer = paper.unpruned // len(paper.layers)
    for row in paper.layers:
        layers.add_row(str(row.layer), str(row.tokens), str(row.kept), _macs(row.macs))
    layers.add_section()
    layers.add_row("total", f"mean {paper.mean_tokens:.1f}", "", _macs(paper.total))
    layers.caption = f"unpruned: {paper.n_image} tokens, {_macs(unpruned_layer)} per layer"

    totals = Table(title="Totals (multiply-accumulates; 1 MAC = 2 FLOPs)", title_justify="left")
    totals.add_column("count")
    totals.add_column("pruned", justify="right")
    totals.add_column("unpruned", justify="right")
    totals.add_column("cut", justify="right")
    totals.add_row(
        "paper convention (LLM, visual tokens only)",
        _macs(paper.total),
        _macs(paper.unpruned),
        _cut(paper.total, paper.unpruned),
    )
    totals.add_section()
    totals.add_row(
        f"exact whole model, prefill ({text_tokens})",
        _macs(prefill.total),
        _macs(prefill_unpruned.total),
        _cut(prefill.total, prefill_unpruned.total),
    )
    for part in ("vision", "projector", "llm", "attention", "lm_head"):
        label = {"llm": "LLM projections + MLP", "attention": "attention products (CLIP full, LLM causal)"}
        pruned, unpruned = getattr(prefill, part), getattr(prefill_unpruned, part)
        totals.add_row(f"  {label.get(part, part)}", _macs(pruned), _macs(unpruned), _cut(pruned, unpruned))
    totals.add_section()
    totals.add_row(
        "exact, one decode step after prefill",
        _macs(decode.total),
        _macs(decode_unpruned.total),
        _cut(decode.total, decode_unpruned.total),
    )
    note = Text(
        "Paper convention: 3nd^2 + 2n^2d + n'd^2 + 3n'dm per LLM layer over the visual tokens only, k/v counted "
        "as d x d; the 'TFLOPs' of the FastV / PyramidDrop / FitPrune tables and what FLOPs budgets compare.\n"
        "Exact: every matrix product of the whole model for one prompt (GQA k/v, causal attention, lm_head on "
        "the last position). Decode does not prune, but runs on the shorter per-layer caches."
    )
    return Group(Text(title, style="bold"), layers, totals, note)


def plot_token_pyramid(paper: FlopsReport, path: str | Path, title: str) -> None:
    """Write a PNG of visual tokens per LLM layer (attention stage and after the drop).

    Written to a temporary file in the same folder and renamed into place, so `path` is
    either the complete old file or the complete new one.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write the plot to {path}: it is a folder; name a .png file")
    layers = [row.layer for row in paper.layers]
    figure = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.bar(layers, [row.tokens for row in paper.layers], color="#9ecae1", label="entering (q/k/v, attention)")
    axes.bar(layers, [row.kept for row in paper.layers], width=0.5, color="#08519c", label="after drop (o_proj, MLP)")
    axes.axhline(paper.n_image, color="grey", linestyle="--", linewidth=1, label=f"unpruned ({paper.n_image})")
    axes.set_ylim(0, paper.n_image * 1.3)  # room for the legend above the unpruned line
    axes.set_xlabel("LLM layer")
    axes.set_ylabel("visual tokens")
    axes.set_title(f"{title}\npaper-convention cut {100 * paper.cut:.1f}%", fontsize=10)
    axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise UserError(f"cannot write the plot to {path}: {error.strerror or error}") from None
    try:
        with os.fdopen(handle, "wb") as stream:
            figure.savefig(stream, format="png")
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; give it a normal file's mode
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise UserError(f"cannot write the plot to {path}: {error.strerror or error}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
