"""What each exported graph takes and returns, declared once per family.

The exporter, the manifest, the runtimes and the TensorRT profiles all read these declarations;
names are never spelled out anywhere else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..graph.args import LlavaArgs
from ..graph.text_encoder import ClipTextArgs
from ..recipe import Recipe, ScheduleSpec, tile_rule


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    dims: tuple[str | int, ...]  # a str is a dynamic dimension name


@dataclass(frozen=True)
class GraphSpec:
    name: str  # file stem: vision, llm, text_encoder
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    profiles: tuple[
        str, ...
    ] = ()  # its optimization profiles, named in the manifest's `profiles`; () is one from `dims`

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ExportLimits:
    """Largest shapes the export promises to run (they become TensorRT profile maxima)."""

    max_batch: int = 4
    max_prompt_len: int = 256  # prefix and suffix each
    max_new_tokens: int = 128
    opt_batch: int = 1
    opt_prompt_len: int = 32


def stage_of_layer(schedule: ScheduleSpec | None, num_layers: int) -> list[int]:
    """The KV-cache stage of every layer (0 for everything without a schedule)."""
    starts = schedule.stage_starts(num_layers) if schedule else [0]
    return [sum(1 for start in starts if start <= layer) - 1 for layer in range(num_layers)]


def text_encoder_spec(text: ClipTextArgs, dtype: str) -> GraphSpec:
    """CLIP's text tower, for text-guided selectors: question ids -> joint-space embedding."""
    inputs = (TensorSpec("text_input_ids", "int64", ("batch", "text_len")),)
    return GraphSpec("text_encoder", inputs, (TensorSpec("text_embeds", dtype, ("batch", text.projection_dim)),))


def vision_spec(
    args: LlavaArgs, dtype: str, text: ClipTextArgs | None = None, adaptive: bool = False, selected: bool = False
) -> GraphSpec:
    """`text`: the CLIP text tower's arguments when the selector reads the question.
    `adaptive`: the selector's count depends on the image, so the graph takes one image at a time.
    `selected`: a selector prunes (LLaVA-NeXT's tiled graph then takes more host indices).
    Pixels stay fp32 at every precision (the graph casts them): the host's preprocessing is one."""
    v, d = args.vision, args.text.hidden_size
    if args.layout.tiled:
        pixels = TensorSpec("pixel_values", "float32", ("tiles", v.num_channels, v.image_size, v.image_size))
        # The layout's host-computed indices (`AnyresTiles.vision_inputs`): the packing, or with a
        # selector, where each tile patch and image_newline sits and which kept rows make the image.
        indices = (TensorSpec("packing_index", "int64", ("image_tokens",)),)
        if selected:
            indices = (
                TensorSpec("patch_position", "int64", ("tiles", args.tokens_per_tile)),
                TensorSpec("newline_position", "int64", ("grid_rows",)),
                *indices,
            )
        if text is not None:  # one image's question
            indices += (TensorSpec("text_embeds", dtype, (1, text.projection_dim)),)
        return GraphSpec("vision", (pixels, *indices), (TensorSpec("image_embeds", dtype, (1, "image_tokens", d)),))
    batch = 1 if adaptive else "batch"
    # LLaVA-HR: pixels at its input_image_size (1024); the fast path's 448 copy is made in the graph.
    side = args.input_image_size
    inputs = (TensorSpec("pixel_values", "float32", (batch, v.num_channels, side, side)),)
    if text is not None:
        inputs += (TensorSpec("text_embeds", dtype, (batch, text.projection_dim)),)
    outputs = (
        TensorSpec("image_embeds", dtype, (batch, "image_tokens", d)),
        TensorSpec("patch_index", "int64", (batch, "image_tokens")),
    )
    return GraphSpec("vision", inputs, outputs)


PAST, PRESENT = "past", "present"  # a call's cache inputs; its cache outputs, the next call's past
KV_KINDS, STAGE_KINDS = ("key", "value"), ("mask", "positions")


def cache_name(direction: str, kind: str, index: int) -> str:
    """The name of one LLM cache tensor, written here only (optimum's add_past_key_values):
    `direction` PAST (an input) or PRESENT (an output); `kind` "key" / "value" of layer `index`,
    or "mask" / "positions" of KV-cache stage `index`."""
    if kind in KV_KINDS:
        return f"{'past_key_values' if direction == PAST else PRESENT}.{index}.{kind}"
    return f"{direction}_{kind}.{index}"


def _kv(direction: str, stages: list[int], args: LlavaArgs, dtype: str):
    t = args.text
    return tuple(
        TensorSpec(
            cache_name(direction, kind, i), dtype, ("batch", t.num_kv_heads, f"{direction}_len_{stage}", t.head_dim)
        )
        for i, stage in enumerate(stages)
        for kind in KV_KINDS
    )


def _stage_tensors(direction: str, stages: list[int]):
    return tuple(
        TensorSpec(cache_name(direction, kind, s), "int64", ("batch", f"{direction}_len_{s}"))
        for s in range(stages[-1] + 1)
        for kind in STAGE_KINDS
    )


def cache_feedback(args: LlavaArgs, recipe: Recipe | None) -> dict[str, str]:
    """Each LLM cache output -> the input the next call feeds it to (present -> past)."""
    stages = stage_of_layer(recipe.schedule if recipe else None, args.text.num_layers)
    entries = [(kind, i) for i in range(len(stages)) for kind in KV_KINDS]
    entries += [(kind, s) for s in range(stages[-1] + 1) for kind in STAGE_KINDS]
    return {cache_name(PRESENT, kind, i): cache_name(PAST, kind, i) for kind, i in entries}


LLM = "llm"  # the LLM graph's name; the others are vision and text_encoder
# The LLM graph's prompt inputs (named as the PreparedBatch fields that hold them) and its logits.
PROMPT_INPUTS = PREFIX_IDS, PREFIX_MASK, IMAGE_EMBEDS, SUFFIX_IDS, SUFFIX_MASK = (
    "prefix_ids",
    "prefix_mask",
    "image_embeds",
    "suffix_ids",
    "suffix_mask",
)
LOGITS = "logits"
# The LLM graph's two phases, TensorRT-LLM's names for them (one optimization profile each):
# context runs the prompt after empty caches; generation runs one token after full ones.
PHASES = ("context", "generation")


def llm_spec(args: LlavaArgs, recipe: Recipe | None, dtype: str) -> GraphSpec:
    """The LLM in one graph, so each weight is stored and loaded once: the prompt segment
    [prefix | image | suffix] after per-stage past caches. The context phase feeds the prompt
    and empty caches; the generation phase feeds the new token as a one-token suffix, no prefix
    and no image, after the caches the previous call returned."""
    stages = stage_of_layer(recipe.schedule if recipe else None, args.text.num_layers)
    prompt = {
        PREFIX_IDS: ("int64", ("batch", "prefix_len")),
        PREFIX_MASK: ("int64", ("batch", "prefix_len")),
        IMAGE_EMBEDS: (dtype, ("batch", "image_tokens", args.text.hidden_size)),
        SUFFIX_IDS: ("int64", ("batch", "suffix_len")),
        SUFFIX_MASK: ("int64", ("batch", "suffix_len")),
    }
    inputs = (
        *(TensorSpec(name, *prompt[name]) for name in PROMPT_INPUTS),
        *_stage_tensors(PAST, stages),
        *_kv(PAST, stages, args, dtype),
    )
    outputs = (
        TensorSpec(LOGITS, "float32", ("batch", args.text.vocab_size)),
        *_kv(PRESENT, stages, args, dtype),
        *_stage_tensors(PRESENT, stages),
    )
    return GraphSpec(LLM, inputs, outputs, PHASES)


def graph_specs(
    args: LlavaArgs, recipe: Recipe | None, dtype: str = "float32", text: ClipTextArgs | None = None
) -> dict[str, GraphSpec]:
    """Every graph of the export; `text` (the CLIP text tower) is needed by text-guided selectors."""
    text_guided = recipe is not None and recipe.selector is not None and recipe.selector.text_guided
    if text_guided and text is None:
        raise ValueError(f"selector {recipe.selector.method} needs the CLIP text encoder's arguments")
    text = text if text_guided else None
    selected = recipe is not None and recipe.selector is not None
    adaptive = selected and recipe.selector.adaptive
    specs = (
        vision_spec(args, dtype, text, adaptive, selected),
        llm_spec(args, recipe, dtype),
    )
    if text is not None:
        specs = (text_encoder_spec(text, dtype), *specs)
    return {spec.name: spec for spec in specs}


def image_token_range(args: LlavaArgs, recipe: Recipe | None) -> tuple[int, int, int]:
    """(min, opt, max) visual tokens entering the LLM."""
    keep, selector = tile_rule(recipe, args)
    if selector is not None:
        if keep is not None:
            return args.layout.token_range(keep, selector)
        return 1, args.vision.num_patches // 8, args.vision.num_patches + 1
    return args.layout.token_range()


def dim_ranges(
    args: LlavaArgs, recipe: Recipe | None, limits: ExportLimits, text: ClipTextArgs | None = None
) -> dict[str, tuple[int, int, int]]:
    """(min, opt, max) of every dynamic input dimension over both LLM phases (what the lint
    bounds): the union of `phase_ranges`, with the vision graph's dimensions."""
    n_min, n_opt, n_max = image_token_range(args, recipe)
    ranges = {
        "batch": (1, limits.opt_batch, limits.max_batch),
        "image_tokens": (n_min, n_opt, n_max),
        "tiles": (1, args.layout.max_tiles(), args.layout.max_tiles()),
    }
    if not args.layout.tiled:
        del ranges["tiles"]
    elif recipe is not None and recipe.selector is not None:
        ranges["grid_rows"] = args.layout.grid_rows_range()
    context, generation = (phase_ranges(args, recipe, limits)[phase] for phase in PHASES)
    for name in context:
        ranges[name] = tuple(f(context[name][i], generation[name][i]) for i, f in enumerate((min, max, max)))
    if text is not None and recipe is not None and recipe.selector is not None and recipe.selector.text_guided:
        # BOS + EOS at least; questions longer than the tower's context are truncated.
        ranges["text_len"] = (2, min(limits.opt_prompt_len, text.max_position_embeddings), text.max_position_embeddings)
    return ranges


def phase_ranges(
    args: LlavaArgs, recipe: Recipe | None, limits: ExportLimits
) -> dict[str, dict[str, tuple[int, int, int]]]:
    """(min, opt, max) of the LLM graph's dimensions in each phase: its TensorRT optimization
    profiles. Context: a prompt after empty caches; generation: one token after the caches of a
    prompt and up to max_new_tokens - 1 earlier steps (each stage its own length)."""
    n_min, n_opt, n_max = image_token_range(args, recipe)
    batch = (1, limits.opt_batch, limits.max_batch)
    prompt = (1, limits.opt_prompt_len, limits.max_prompt_len)
    empty = (0, 0, 0)
    context = {"batch": batch, "prefix_len": prompt, "image_tokens": (n_min, n_opt, n_max), "suffix_len": prompt}
    generation = {"batch": batch, "prefix_len": empty, "image_tokens": empty, "suffix_len": (1, 1, 1)}
    schedule = recipe.schedule if recipe else None
    layers = args.text.num_layers
    starts = schedule.stage_starts(layers) if schedule else [0]
    for stage, first_layer in enumerate(starts):
        low, opt, high = (
            schedule.tokens_per_layer(n, layers)[first_layer][0] if schedule else n for n in (n_min, n_opt, n_max)
        )
        low += 2
        opt += 2 * limits.opt_prompt_len + limits.max_new_tokens // 2
        high += 2 * limits.max_prompt_len + limits.max_new_tokens - 1
        context[f"past_len_{stage}"] = empty
        generation[f"past_len_{stage}"] = (low, min(opt, high), high)
    return {"context": context, "generation": generation}
