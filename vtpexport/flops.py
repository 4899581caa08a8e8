"""Analytic compute counts, in multiply-accumulates (MACs; 1 MAC = 2 FLOPs).

Two counts, never to be confused:

- The **paper convention** (FastV, PyramidDrop, FitPrune): MACs of the LLM over the visual
  tokens only. A layer with n visual tokens entering and n' left after its in-layer drop
  (FitPrune drops between attention and o_proj) costs 3nd^2 + 2n^2d + n'd^2 + 3n'dm:
  q/k/v projections and attention on n, o_proj and the SwiGLU MLP on n'. Without a drop,
  4nd^2 + 2n^2d + 3ndm. k/v are counted as d x d even under GQA, as the papers do. This is
  what those papers' tables call "TFLOPs" (LLaVA-1.5-7B at 576 tokens: 3.82 T) and what
  FLOPs budgets refer to.
- The **exact whole-model count**: every matrix product our graph runs — vision tower
  (LLaVA-HR: ConvNeXt, CLIP ViT on its patches, MR-adapters, fusion), projector, the LLM
  over all tokens (prefix, visual, suffix) with GQA-sized k/v, causal attention (query i
  meets i + 1 keys; a dense kernel computes the full square and masks it) and lm_head on
  the last position — for one prompt, batch 1. Elementwise work (norms, activations, RoPE,
  softmax, masks) is not counted, nor are the extra scoring products a pruning method adds
  (e.g. PyramidDrop's boundary k projection); they are small next to the matmuls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from .errors import UserError
from .graph.args import LlavaArgs, TextArgs
from .recipe import Recipe


@dataclass(frozen=True)
class LayerMacs:
    """One LLM layer in the paper convention."""

    layer: int
    tokens: int  # visual tokens entering the layer: its q/k/v and attention run on these
    kept: int  # visual tokens after its in-layer drop: its o_proj and MLP run on these
    macs: int


@dataclass(frozen=True)
class FlopsReport:
    """Paper-convention MACs per LLM layer for one image, against the unpruned model."""

    n_image: int  # visual tokens of the image before any pruning
    layers: tuple[LayerMacs, ...]
    unpruned: int  # MACs of the same model without pruning at n_image tokens

    @property
    def total(self) -> int:
        return sum(row.macs for row in self.layers)

    @property
    def ratio(self) -> float:
        """Pruned / unpruned (a FLOPs budget compares against this)."""
        return self.total / self.unpruned if self.unpruned else 1.0

    @property
    def cut(self) -> float:
        """Fraction of the unpruned visual-token MACs saved."""
        return 1.0 - self.ratio

    @property
    def mean_tokens(self) -> float:
        """Visual tokens per layer, averaged over layers (tokens entering each layer)."""
        return sum(row.tokens for row in self.layers) / len(self.layers)


@dataclass(frozen=True)
class ExactMacs:
    """Exact MACs of one forward pass (prefill or one decode step), by part."""

    vision: int  # patch conv and the CLIP layers' linear layers
    projector: int
    llm: int  # decoder layers' projections and MLPs
    attention: int  # score (q.k) and value (p.v) products: full in CLIP, causal in the LLM
    lm_head: int

    @property
    def total(self) -> int:
        return self.vision + self.projector + self.llm + self.attention + self.lm_head


def paper_layer_macs(text: TextArgs, tokens: int, kept: int) -> int:
    """Paper-convention MACs of one layer: attention part on `tokens`, o_proj + MLP on `kept`."""
    d, m = text.hidden_size, text.intermediate_size
    return 3 * tokens * d * d + 2 * tokens * tokens * d + kept * d * d + 3 * kept * d * m


def visual_plan(
    args: LlavaArgs, recipe: Recipe | None, n_image: int, image_size: tuple[int, int] | None = None
) -> list[tuple[int, int]]:
    """Visual tokens per LLM layer, (entering, after its drop), for an image of n_image tokens
    (and of `image_size`, which a selector on LLaVA-NeXT tiles needs: see `Recipe.visual_tokens`).

    A selector sets the count entering the LLM; a schedule then prunes inside it. Raises
    UserError when the count is data-dependent (an adaptive selector).
    """
    if n_image < 0:
        raise UserError(f"visual token count must be >= 0, got {n_image}")
    num_layers = args.text.num_layers
    n = n_image if recipe is None else recipe.visual_tokens(args, n_image, image_size)
    if n is None:
        raise UserError(
            f"recipe {recipe.name!r}: the adaptive {recipe.selector.method} selector keeps a data-dependent "
            "number of tokens, so its FLOPs are unknown; give it a fixed budget (tokens: K) to count them"
        )
    if recipe is None or recipe.schedule is None:
        return [(n, n)] * num_layers
    return recipe.schedule.tokens_per_layer(n, num_layers)


def paper_flops(
    args: LlavaArgs, recipe: Recipe | None, n_image: int, image_size: tuple[int, int] | None = None
) -> FlopsReport:
    """Paper-convention MACs (the papers' "FLOPs") of the LLM over visual tokens, per layer."""
    plan = visual_plan(args, recipe, n_image, image_size)
    rows = tuple(
        LayerMacs(layer, tokens, kept, paper_layer_macs(args.text, tokens, kept))
        for layer, (tokens, kept) in enumerate(plan)
    )
    unpruned = args.text.num_layers * paper_layer_macs(args.text, n_image, n_image)
    return FlopsReport(n_image, rows, unpruned)


def attention_pairs(length: int, window: int | None = None) -> int:
    """(query, key) pairs of causal attention over `length` tokens: query i sees i + 1 keys
    (at most `window`, counted by index). Dense kernels compute length^2 and mask."""
    if window is None or window >= length:
        return length * (length + 1) // 2
    return window * (window + 1) // 2 + (length - window) * window


def _multipath_macs(args: LlavaArgs) -> tuple[int, int]:
    """LLaVA-HR: (conv + linear, attention) MACs of the ConvNeXt, the CLIP ViT on its patches
    (no CLS, every layer), the MR-adapters and the final fusion, for one image."""
    v, hr = args.vision, args.multipath
    c = hr.slow
    side = hr.image_size // c.stem_patch_size
    convnext = side * side * c.num_channels * c.stem_patch_size**2 * c.dims[0]
    for stage, (depth, dim) in enumerate(zip(c.depths, c.dims, strict=True)):
        if stage:
            side //= 2
            convnext += side * side * c.dims[stage - 1] * 4 * dim  # 2x2 stride-2 downsample conv
        convnext += depth * side * side * (c.kernel_size**2 * dim + 2 * c.mlp_ratio * dim * dim)
    n, d, slow = v.num_patches, v.hidden_size, c.dims[-1]
    patch_conv = n * v.num_channels * v.patch_size**2 * d
    vit = v.num_layers * (4 * n * d * d + 2 * n * d * v.intermediate_size)
    adapter = n * (slow * slow + slow * d + 49 * d + d * d) + 2 * d * (d // 2) + d // 2
    fusion = n * (d * d + slow * d)
    linear = convnext + patch_conv + vit + len(hr.adapter_layers) * adapter + fusion
    return linear, v.num_layers * 2 * n * n * d


def _vision_macs(args: LlavaArgs, tiles: int) -> tuple[int, int]:
    """(conv + linear, attention) MACs of the vision tower over `tiles` tiles."""
    if args.multipath:
        return _multipath_macs(args)
    v = args.vision
    tokens = 1 + v.num_patches  # CLS + patches
    patch_conv = v.num_patches * v.num_channels * v.patch_size**2 * v.hidden_size
    linear = 4 * tokens * v.hidden_size**2 + 2 * tokens * v.hidden_size * v.intermediate_size
    attention = 2 * tokens * tokens * v.hidden_size
    layers = args.feature_layer_index + 1  # LLaVA reads this layer's output; later layers never run
    return tiles * (patch_conv + layers * linear), tiles * layers * attention


def _llm_layer_macs(text: TextArgs, queries: int, kept: int, pairs: int) -> tuple[int, int]:
    """(projections + MLP, attention) MACs of one decoder layer: q/k/v on `queries` tokens,
    attention over `pairs` (query, key) pairs, o_proj and the MLP on `kept` tokens."""
    d, m, width = text.hidden_size, text.intermediate_size, text.num_heads * text.head_dim
    kv_width = text.num_kv_heads * text.head_dim
    linear = queries * d * (width + 2 * kv_width) + kept * width * d + 3 * kept * d * m
    return linear, 2 * width * pairs  # q.k and p.v for every query head


def _check_lengths(prefix_len: int, suffix_len: int, tiles: int) -> None:
    if prefix_len < 0 or suffix_len < 0:
        raise UserError(f"prefix and suffix lengths must be >= 0, got {prefix_len} and {suffix_len}")
    if tiles < 1:
        raise UserError(f"an image is at least one tile, got {tiles}")


def prefill_layer_lengths(
    args: LlavaArgs,
    recipe: Recipe | None,
    n_image: int,
    prefix_len: int,
    suffix_len: int,
    image_size: tuple[int, int] | None = None,
) -> list[tuple[int, int]]:
    """Sequence length per LLM layer in prefill, (entering, after its drop), text included."""
    text = prefix_len + suffix_len
    return [(text + tokens, text + kept) for tokens, kept in visual_plan(args, recipe, n_image, image_size)]


def exact_prefill_macs(
    args: LlavaArgs,
    recipe: Recipe | None,
    n_image: int,
    prefix_len: int,
    suffix_len: int,
    tiles: int = 1,
    image_size: tuple[int, int] | None = None,
) -> ExactMacs:
    """Exact MACs of the whole model's prefill for one prompt (batch 1).

    n_image: visual tokens the image takes in the prompt before pruning (LLaVA-NeXT:
    `args.layout.num_tokens`); tiles: CLIP tiles the vision tower runs
    (`args.layout.num_tiles`; 1 for LLaVA-1.5); image_size: the image's (height, width), which
    a selector on LLaVA-NeXT tiles needs. lm_head runs on the last position only.
    """
    _check_lengths(prefix_len, suffix_len, tiles)
    text, v = args.text, args.vision
    if recipe is not None and recipe.selector is not None:
        entering = visual_plan(args, recipe, n_image, image_size)[0][0]
        if args.layout.tiled:
            # Per tile: projected-space selectors project every tile patch; the others project the
            # `keep` tokens their select returns per tile, packed or not (the image_newline rows
            # are a parameter, not projected).
            rows = tiles * args.tokens_per_tile
            kept = tiles * recipe.tile_keep(args)
        else:
            rows, kept = n_image, entering
        # Selectors run before the projector, except those that compare projected tokens.
        projected = rows if recipe.selector.declaration.probe.projected else kept
    else:
        projected = tiles * args.tokens_per_tile  # every tile's features, before anyres packing
    projector = projected * (v.hidden_size * text.hidden_size + text.hidden_size**2)
    vision, vision_attention = _vision_macs(args, tiles)
    llm = attention = 0
    for length, kept in prefill_layer_lengths(args, recipe, n_image, prefix_len, suffix_len, image_size):
        linear, attn = _llm_layer_macs(text, length, kept, attention_pairs(length, text.sliding_window))
        llm, attention = llm + linear, attention + attn
    return ExactMacs(vision, projector, llm, vision_attention + attention, text.hidden_size * text.vocab_size)


def cache_lengths(
    args: LlavaArgs,
    recipe: Recipe | None,
    n_image: int,
    prefix_len: int,
    suffix_len: int,
    image_size: tuple[int, int] | None = None,
) -> list[int]:
    """KV-cache length per layer after prefill: every token that entered the layer (decode
    does not prune, so each layer keeps the length its pruned prefill left)."""
    lengths = prefill_layer_lengths(args, recipe, n_image, prefix_len, suffix_len, image_size)
    return [length for length, _ in lengths]


def exact_decode_macs(args: LlavaArgs, past_lengths: Sequence[int]) -> ExactMacs:
    """Exact MACs of one decode step (one new token, batch 1) given each layer's cached length
    before the step: `cache_lengths(...)` after prefill, plus the tokens decoded since."""
    text = args.text
    if len(past_lengths) != text.num_layers:
        raise UserError(f"need one past length per layer ({text.num_layers}), got {len(past_lengths)}")
    llm = attention = 0
    for past in past_lengths:
        keys = past + 1 if text.sliding_window is None else min(past + 1, text.sliding_window)
        linear, attn = _llm_layer_macs(text, 1, 1, keys)
        llm, attention = llm + linear, attention + attn
    return ExactMacs(0, 0, llm, attention, text.hidden_size * text.vocab_size)


# --- what a run computed, summed over its prompts (eval, bench) ---------------------------------


@dataclass
class Compute:
    """MACs and visual tokens summed over the samples (means and shares as properties)."""

    samples: int = 0
    paper_macs: int = 0
    paper_unpruned_macs: int = 0
    exact_prefill_macs: int = 0
    exact_prefill_unpruned_macs: int = 0
    image_tokens: int = 0  # before any pruning
    entering_llm: int = 0  # after the selector
    per_layer: float = 0.0  # attended per layer, summed over samples

    def to_dict(self) -> dict:
        n = max(self.samples, 1)
        return {
            "paper_flops_ratio": self.paper_macs / self.paper_unpruned_macs if self.paper_unpruned_macs else 1.0,
            "paper_macs_mean": self.paper_macs / n,
            "exact_prefill_ratio": self.exact_prefill_macs / self.exact_prefill_unpruned_macs,
            "exact_prefill_macs_mean": self.exact_prefill_macs / n,
            "image_tokens_mean": self.image_tokens / n,
            "visual_tokens_entering_llm_mean": self.entering_llm / n,
            "visual_tokens_per_layer_mean": self.per_layer / n,
            "visual_token_share": self.per_layer / self.image_tokens if self.image_tokens else 1.0,
        }


def adaptive_counted(recipe: Recipe | None, entering: int) -> Recipe | None:
    """An adaptive selector's FLOPs are those of the fixed-count form that kept as many tokens
    as it did on this image (`entering` includes PruMerge's one merged token)."""
    if recipe is None or recipe.selector is None or not recipe.selector.adaptive:
        return recipe
    return replace(recipe, selector=replace(recipe.selector, tokens=entering - 1))


def add_compute(compute: Compute, args: LlavaArgs, recipe: Recipe | None, image, batch, row: int) -> None:
    """Add row `row` of a prepared batch (its image, prompt lengths and kept count) to `compute`."""
    size = (image.height, image.width)
    n_image, tiles = args.layout.num_tokens(size), args.layout.num_tiles(size)
    counted = adaptive_counted(recipe, batch.num_image_tokens[row])
    text = (len(batch.parts[row].prefix_ids), len(batch.parts[row].suffix_ids))
    paper = paper_flops(args, counted, n_image, size)
    compute.samples += 1
    compute.paper_macs += paper.total
    compute.paper_unpruned_macs += paper.unpruned
    compute.exact_prefill_macs += exact_prefill_macs(args, counted, n_image, *text, tiles, size).total
    compute.exact_prefill_unpruned_macs += exact_prefill_macs(args, None, n_image, *text, tiles).total
    compute.image_tokens += n_image
    compute.entering_llm += batch.num_image_tokens[row]
    compute.per_layer += paper.mean_tokens
