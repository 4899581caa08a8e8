"""Views: a recipe's per-layer FLOPs table and token-pyramid plot, the accuracy/FLOPs Pareto plot."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from rich.console import Group
from rich.table import Table
from rich.text import Text

from .errors import UserError
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


def parse_image_size(text: str) -> tuple[int, int]:
    """HEIGHTxWIDTH in pixels, e.g. 672x672."""
    try:
        size = tuple(int(x) for x in text.lower().split("x"))
    except ValueError:
        size = ()
    if len(size) != 2 or min(size) < 1:
        raise UserError(f"--image-size wants HEIGHTxWIDTH in pixels (e.g. 672x672), got {text!r}")
    return size


@dataclass
class RecipeFlops:
    """`vtpexport inspect`: what a recipe costs on a model at one image size."""

    view: Group | str
    paper: FlopsReport | None  # None for an adaptive selector: its counts depend on the image


def recipe_flops(recipe, model_name: str | None, size: tuple[int, int] | None, prefix_len: int, suffix_len: int):
    """Tokens and FLOPs per layer of `recipe` on `model_name` (default: the recipe's model) for
    an image of `size` (default: the model's reference size), in both counting conventions."""
    from .flops import cache_lengths, exact_decode_macs, exact_prefill_macs, paper_flops
    from .models.loader import architecture

    model_name = model_name or recipe.model.name
    args = architecture(model_name)
    recipe.check_model(args, model_name)
    size = size or args.layout.reference_size()
    n_image, tiles = args.layout.num_tokens(size), args.layout.num_tiles(size)
    heading = f"{recipe.name} on {model_name} ({args.family}), {size[0]}x{size[1]} image: {n_image} visual tokens"
    if recipe.visual_tokens(args, n_image, size) is None:
        return RecipeFlops(
            f"{heading}\nvisual tokens entering the LLM: data-dependent (adaptive {recipe.selector.method}); "
            "FLOPs unknown. Give the selector a fixed budget (tokens: K) to count them.",
            None,
        )
    paper = paper_flops(args, recipe, n_image, size)
    text = (prefix_len, suffix_len)
    view = flops_view(
        heading,
        paper,
        exact_prefill_macs(args, recipe, n_image, *text, tiles, size),
        exact_prefill_macs(args, None, n_image, *text, tiles),
        exact_decode_macs(args, cache_lengths(args, recipe, n_image, *text, size)),
        exact_decode_macs(args, cache_lengths(args, None, n_image, *text)),
        f"P={prefix_len} + T={suffix_len} text tokens, {tiles} CLIP tile{'s' if tiles > 1 else ''}",
    )
    return RecipeFlops(view, paper)


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


def _overlaps(a: tuple[float, ...], b: tuple[float, ...], slack: float = 0.5) -> bool:
    return a[0] < b[2] - slack and b[0] < a[2] - slack and a[1] < b[3] - slack and b[1] < a[3] - slack


def _label_offsets(axes, names: list[str], xy: list[tuple[float, float]], leftward: list[bool]) -> list[float]:
    """Vertical label offsets (points): each label sits beside its point unless that spot is
    taken by another label or by the spot beside another point; it then moves down or up
    until free (and gets a leader line). Recipes of equal cost and accuracy share a point."""
    to_points = 72 / axes.figure.dpi
    line, gap = 9.0, 6.0

    def box(index: int, dy: float) -> tuple[float, float, float, float]:
        px, py = (value * to_points for value in axes.transData.transform(xy[index]))
        width = gap + 4.0 * len(names[index])  # about a 7 pt character
        left, right = (px - width, px) if leftward[index] else (px, px + width)
        return (left, py + dy - line / 2, right, py + dy + line / 2)

    beside = [box(i, 0.0) for i in range(len(names))]
    placed: list[tuple[float, ...]] = []
    offsets = [0.0] * len(names)
    for index in sorted(range(len(names)), key=lambda i: -xy[i][1]):  # top down: labels keep the points' order
        taken = placed + [b for i, b in enumerate(beside) if i != index]
        for step in range(60):
            dy = line * ((step + 1) // 2) * (-1 if step % 2 else 1)  # 0, down, up, 2 down, ...
            candidate = box(index, dy)
            if not any(_overlaps(candidate, b) for b in taken):
                break
        placed.append(candidate)
        offsets[index] = dy
    return offsets


def plot_pareto(points: list[tuple[str, float, float]], path: str | Path, title: str, metric: str) -> None:
    """Write a PNG of `metric` against the paper-convention FLOPs ratio, one labelled point per
    (name, flops_ratio, value); the first point is the unpruned reference; the front is joined."""
    figure = _new_figure(8, 5.5)
    axes = figure.add_subplot()
    axes.set_xlim(0, 105)
    axes.set_ylim(0, 105)
    axes.set_xlabel("visual-token LLM FLOPs, % of unpruned (paper convention)")
    axes.set_ylabel(f"{metric}, %")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    figure.tight_layout()  # before the labels are placed: it moves the axes
    names = [name for name, _, _ in points]
    xy = [(100 * flops, 100 * value) for _, flops, value in points]
    leftward = [x > 75 for x, _ in xy]  # near the right edge, labels go left to stay inside the axes
    offsets = _label_offsets(axes, names, xy, leftward)
    for index, (name, (x, y), left, dy) in enumerate(zip(names, xy, leftward, offsets, strict=True)):
        reference = index == 0
        axes.scatter(
            x, y, s=90 if reference else 40, marker="*" if reference else "o", color="black" if reference else "#08519c"
        )
        axes.annotate(
            name,
            (x, y),
            textcoords="offset points",
            xytext=(-6 if left else 6, dy),
            ha="right" if left else "left",
            va="center",
            fontsize=7,
            arrowprops={"arrowstyle": "-", "color": "#636363", "linewidth": 0.6} if dy else None,
        )
    front = pareto_front(points)
    axes.plot([100 * p[1] for p in front], [100 * p[2] for p in front], color="#9ecae1", zorder=0, label="Pareto front")
    axes.legend(loc="best", fontsize=8)
    _save_png(figure, path)


MAX_PANELS = 8  # FitPrune can drop at every layer; more panels than this are grouped


@dataclass(frozen=True)
class TokenLayout:
    """Where each visual token of an image comes from, in the original image's pixels.

    views: the pictures tokens are drawn on (LLaVA-NeXT: the squashed base tile and the
    high-resolution tiles; LLaVA-1.5: one). boxes[i]: token i's (view, left, top, right, bottom),
    or None for a token that is no image region (LLaVA-NeXT's image_newline).
    """

    views: tuple[str, ...]
    boxes: tuple[tuple[int, float, float, float, float] | None, ...]


def token_layout(args, image_processor, width: int, height: int) -> TokenLayout:
    """The layout of the image tokens in prompt order (`args.layout.packing_index`), following
    the processor: LLaVA-1.5 resizes the short side and centre-crops (else squashes the whole
    image); LLaVA-HR pads to a square first; LLaVA-NeXT squashes the whole image into the base
    tile, and resizes it to fit the best tiling (aspect kept, centred, padded) for the
    high-resolution tiles."""
    g, per_tile = args.vision.grid_size, args.tokens_per_tile
    if per_tile != g * g:
        raise UserError("viz maps patch tokens only; this model's vision features include the CLS token")

    def grid_box(view: int, row: int, col: int, left: float, top: float, cell_w: float, cell_h: float):
        return (view, left + col * cell_w, top + row * cell_h, left + (col + 1) * cell_w, top + (row + 1) * cell_h)

    if not args.layout.tiled:
        left, top, cell_w, cell_h = 0.0, 0.0, width / g, height / g
        # Padded to a square first (LLaVA-HR), the crop keeps the whole square and the grid overhangs the image.
        side = max(width, height) if getattr(image_processor, "do_pad", False) else min(width, height)
        if getattr(image_processor, "do_center_crop", False):
            left, top, cell_w, cell_h = (width - side) / 2, (height - side) / 2, side / g, side / g
        boxes = tuple(grid_box(0, i // g, i % g, left, top, cell_w, cell_h) for i in range(per_tile))
        return TokenLayout(("image",), boxes)
    rows, cols = args.layout.tile_grid((height, width))
    canvas_h, canvas_w = rows * args.vision.image_size, cols * args.vision.image_size
    # As the processor's resize-for-patching: fit inside the canvas, aspect kept, centred.
    if canvas_w / width < canvas_h / height:
        new_w, new_h = canvas_w, min(math.ceil(height * canvas_w / width), canvas_h)
    else:
        new_w, new_h = min(math.ceil(width * canvas_h / height), canvas_w), canvas_h
    scale_x, scale_y = width / new_w, height / new_h
    patch = args.vision.patch_size
    cell_w, cell_h = patch * scale_x, patch * scale_y
    left, top = -((canvas_w - new_w) // 2) * scale_x, -((canvas_h - new_h) // 2) * scale_y
    boxes = []
    for value in args.layout.packing_index((height, width)).tolist():
        if value < per_tile:
            boxes.append(grid_box(0, value // g, value % g, 0.0, 0.0, width / g, height / g))
        elif value >= (rows * cols + 1) * per_tile:
            boxes.append(None)  # image_newline
        else:
            tile, within = divmod(value - per_tile, per_tile)
            y, x = (tile // cols) * g + within // g, (tile % cols) * g + within % g
            boxes.append(grid_box(1, y, x, left, top, cell_w, cell_h))
    return TokenLayout(("base tile", f"{rows}x{cols} tiles"), tuple(boxes))


def kept_patch_panels(model, recipe, image, prompt: str) -> list[tuple[str, list[int]]]:
    """(title, kept token indices into the image's tokens in prompt order) per panel: the input,
    the selector's kept set, then the tokens left after each of the schedule's drops (grouped to
    at most MAX_PANELS panels)."""
    from .runtime.eager import kept_image_tokens

    n = model.args.layout.num_tokens((image.height, image.width))
    patch_index, kept_ids = kept_image_tokens(model, image, prompt, recipe)
    entering = list(range(n)) if patch_index is None else patch_index.tolist()
    panels = [(f"input: {n} tokens", list(range(n)))]
    if patch_index is not None:
        patches = [p for p in entering if p >= 0]
        merged = " + 1 merged" if len(patches) < len(entering) else ""
        panels.append((f"{recipe.selector.method}: {len(patches)} of {n}{merged}", patches))
    layers = list(kept_ids)
    grouped = len(layers) > MAX_PANELS - len(panels)
    if grouped:  # the last drop of each of `count` consecutive groups of drop layers
        count = MAX_PANELS - len(panels)
        layers = [layers[round((i + 1) * len(layers) / count) - 1] for i in range(count)]
    previous = -1
    for layer in layers:
        patches = [entering[i] for i in kept_ids[layer].tolist() if entering[i] >= 0]
        span = f"layers {previous + 1}-{layer}" if grouped and layer > previous + 1 else f"layer {layer}"
        panels.append((f"{recipe.schedule.method} drop at {span}: {len(patches)} of {n} left", patches))
        previous = layer
    return panels


def plot_kept_patches(image, layout: TokenLayout, panels: list[tuple[str, list[int]]], path, title: str) -> None:
    """Write a PNG with one panel per (title, kept token indices), one picture per layout view:
    the original image, darkened wherever no kept token of that view comes from (outside the
    region the model sees, too), with the token grid drawn."""
    import numpy as np

    pixels = np.asarray(image.convert("RGB")).astype(np.float32) / 255
    views = len(layout.views)
    columns = views * max(1, 4 // views)
    cells = len(panels) * views
    rows = (cells + columns - 1) // columns
    aspect = image.height / image.width
    figure = _new_figure(3.2 * min(columns, cells), (3.2 * aspect + 0.5) * rows + 0.4)
    for index, (caption, kept) in enumerate(panels):
        for view, view_name in enumerate(layout.views):
            axes = figure.add_subplot(rows, columns, index * views + view + 1)
            mask = np.full(pixels.shape[:2], 0.25, dtype=np.float32)
            for token in kept:
                box = layout.boxes[token]
                if box is not None and box[0] == view:
                    x0, y0, x1, y1 = (round(v) for v in box[1:])
                    mask[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = 1.0
            axes.imshow(pixels * mask[..., None], interpolation="nearest")
            mine = [box for box in layout.boxes if box is not None and box[0] == view]
            x_lo, x_hi = max(min(b[1] for b in mine), 0), min(max(b[3] for b in mine), image.width)
            y_lo, y_hi = max(min(b[2] for b in mine), 0), min(max(b[4] for b in mine), image.height)
            for x in sorted({b[1] for b in mine} | {b[3] for b in mine}):
                if 0 <= x <= image.width:
                    axes.plot([x - 0.5] * 2, [y_lo - 0.5, y_hi - 0.5], color="white", linewidth=0.3, alpha=0.5)
            for y in sorted({b[2] for b in mine} | {b[4] for b in mine}):
                if 0 <= y <= image.height:
                    axes.plot([x_lo - 0.5, x_hi - 0.5], [y - 0.5] * 2, color="white", linewidth=0.3, alpha=0.5)
            axes.set_title(caption if views == 1 else f"{caption}\n{view_name}", fontsize=7)
            axes.set_xlim(-0.5, image.width - 0.5)
            axes.set_ylim(image.height - 0.5, -0.5)
            axes.set_xticks([])
            axes.set_yticks([])
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    _save_png(figure, path)


def plot_recipe_on_image(recipe_path, model_spec, weights, image_path, prompt: str, path) -> None:
    """`vtpexport viz`: the image, with the patches the recipe keeps for `prompt`, as a PNG."""
    from .models.images import load_image
    from .models.loader import load_model
    from .recipe import Recipe

    recipe = Recipe.load(recipe_path)
    image = load_image(image_path)
    model = load_model(model_spec or recipe.model.name, weights)
    recipe.check_model(model.args, model.source.name)
    layout = token_layout(model.args, model.image_processor, image.width, image.height)
    panels = kept_patch_panels(model, recipe, image, prompt)
    plot_kept_patches(image, layout, panels, path, f"{recipe.name} on {model.source.name}: {prompt}")
