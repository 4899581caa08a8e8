"""Views: a recipe's per-layer FLOPs table and token-pyramid plot, the accuracy/FLOPs Pareto plot."""

from __future__ import annotations

from pathlib import Path

from rich.console import Group
from rich.table import Table
from rich.text import Text

from .files import write_atomically
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
    layers = [row.layer for row in paper.layers]
    figure = _new_figure(8, 4.5)
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
    _save_png(figure, path)


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save_png(figure, path: str | Path) -> None:
    write_atomically(path, lambda stream: figure.savefig(stream, format="png"), "the plot")


def pareto_front(points: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """The points no other point beats: none cheaper (or as cheap) with a metric at least as high."""
    front, best = [], float("-inf")
    for point in sorted(points, key=lambda p: (p[1], -p[2])):
        if point[2] > best:
            front.append(point)
            best = point[2]
    return front


def plot_pareto(points: list[tuple[str, float, float]], path: str | Path, title: str, metric: str) -> None:
    """Write a PNG of `metric` against the paper-convention FLOPs ratio, one labelled point per
    (name, flops_ratio, value); the first point is the unpruned reference; the front is joined."""
    figure = _new_figure(8, 5.5)
    axes = figure.add_subplot()
    for index, (name, flops, value) in enumerate(points):
        reference = index == 0
        x, y = 100 * flops, 100 * value
        axes.scatter(
            x, y, s=90 if reference else 40, marker="*" if reference else "o", color="black" if reference else "#08519c"
        )
        right_edge = x > 75  # label to the left there, so it stays inside the axes
        axes.annotate(
            name,
            (x, y),
            textcoords="offset points",
            xytext=(-6 if right_edge else 6, 4 + 9 * (index % 3)),  # staggered: close points stay readable
            ha="right" if right_edge else "left",
            fontsize=7,
        )
    front = pareto_front(points)
    axes.plot([100 * p[1] for p in front], [100 * p[2] for p in front], color="#9ecae1", zorder=0, label="Pareto front")
    axes.set_xlabel("visual-token LLM FLOPs, % of unpruned (paper convention)")
    axes.set_ylabel(f"{metric}, %")
    axes.set_xlim(0, 105)
    axes.set_ylim(0, 105)
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize=8)
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    _save_png(figure, path)
