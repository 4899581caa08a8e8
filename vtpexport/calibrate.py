"""Calibration: a FLOPs budget (and, for FitPrune, statistics over a dataset) -> a recipe.

The budget is a fraction of the unpruned model's visual-token LLM MACs in the papers'
convention (`flops.paper_flops`), computed on the composed plan (selector + schedule) at one
image size: the model's reference size, or the one the user states. On LLaVA-NeXT a selector
keeps a count per tile, so the tokens entering the LLM, and the budget, follow from that size.
Every check against it is exact integer arithmetic.

- FitPrune (METHODS.md): per layer and sample, the attention masses text rows and visual rows
  give the visual tokens in the unpruned model (W_c, W_s); fit(alpha), a layer-by-layer
  simulated forward in which each sample drops its own intersection of the lowest-mass tokens;
  a bisection on the 0.01 grid of alpha; the recipe of an alpha whose recipe meets the budget by
  `paper_flops` while the next lower alpha's does not (the reference code can return one that
  does not meet it).
- Methods declared "analytic" (PyramidDrop, FastV): their free parameter (lambda, R) solved for
  the budget on a 0.001 grid, without data, by the method's own `solve` (pruning/<method>.py).
- A selector alone, its count left out: the count its declaration names (`count_field`) that
  keeps the most tokens while meeting the budget, without data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from . import __version__, files
from .dataset import Samples, load_samples, read_dataset, select_records
from .devices import dtype_name, resolve_device, resolve_dtype
from .errors import UserError
from .flops import ExactMacs, FlopsReport, exact_prefill_macs, paper_flops, paper_layer_macs
from .graph.args import LlavaArgs
from .graph.decoder import Decoder, Sequence
from .progress import progress_bar, track
from .pruning.fitprune import scored_rows_probs
from .pruning.prefill import PrefillHook
from .pruning.registry import schedule_method
from .recipe import ModelRef, Recipe, ScheduleSpec, SelectorSpec, check_selector
from .schema import slugify
from .viz import parse_image_size

DEFAULT_DATA = Path(__file__).resolve().parents[1] / "calibration_data" / "calibration.jsonl"
ALPHA_STEPS = 100  # alpha is searched on the grid k / 100
STOP_RULES = ("recipe", "samples")


# --- the budget ------------------------------------------------------------------------------


def parse_budget(value: str | float) -> Fraction:
    """The budget as an exact fraction (0.45 -> 9/20); UserError outside (0, 1]."""
    try:
        budget = Fraction(str(value).strip())
    except (ValueError, ZeroDivisionError):
        raise UserError(f"--flops-budget wants a number in (0, 1], got {value!r}") from None
    if not 0 < budget <= 1:
        raise UserError(
            f"--flops-budget must be in (0, 1] (the fraction of the unpruned visual-token FLOPs to spend), got {value}"
        )
    return budget


def reference_image(args: LlavaArgs, size: tuple[int, int] | None = None) -> tuple[tuple[int, int], int, int]:
    """(height, width), visual tokens and CLIP tiles of the image size a budget is computed at:
    `size` where the layout's counts depend on it (LLaVA-NeXT), else the reference size (the
    native input, or LLaVA-NeXT's largest tiling, as `vtpexport inspect` counts by default)."""
    size = size if size is not None and args.layout.tiled else args.layout.reference_size()
    return size, args.layout.num_tokens(size), args.layout.num_tiles(size)


@dataclass(frozen=True)
class Budget:
    """`fraction` of the unpruned visual-token LLM MACs of `model` for an image of `image_size`
    (height, width; None: the layout's reference size) and `n_image` tokens."""

    fraction: Fraction
    args: LlavaArgs
    model: ModelRef
    n_image: int
    selector: SelectorSpec | None = None
    image_size: tuple[int, int] | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.image_size or self.args.layout.reference_size()

    def recipe(self, schedule: ScheduleSpec | None, name: str = "candidate", provenance: dict | None = None) -> Recipe:
        return Recipe(name, self.model, self.selector, schedule, provenance or {})

    def report(self, schedule: ScheduleSpec | None) -> FlopsReport:
        return paper_flops(self.args, self.recipe(schedule), self.n_image, self.size)

    def allows(self, macs: int, unpruned: int) -> bool:
        return macs * self.fraction.denominator <= unpruned * self.fraction.numerator

    def meets(self, schedule: ScheduleSpec | None) -> bool:
        report = self.report(schedule)
        return self.allows(report.total, report.unpruned)

    @property
    def visual_tokens(self) -> int:
        """Visual tokens entering the LLM at the budget's image size (after the selector)."""
        n = self.recipe(None).visual_tokens(self.args, self.n_image, self.size)
        if n is None:
            raise UserError(
                f"selector {self.selector.method} keeps a data-dependent number of tokens, so no FLOPs budget "
                "can be checked; give it a fixed count (--selector-tokens K)"
            )
        return n

    def unreachable(self, method: str, floor: ScheduleSpec | None, how: str) -> UserError:
        return UserError(
            f"flops budget {float(self.fraction):g} is below what {method} can reach on {self.model.name}: "
            f"the minimum is {_ratio_up(self.report(floor))} ({how})"
        )


def _ratio_up(report: FlopsReport, digits: int = 4) -> str:
    """The spent fraction rounded up at `digits` decimals: a budget of that value is reachable."""
    scale = 10**digits
    return f"{math.ceil(Fraction(report.total * scale, report.unpruned)) / scale:.{digits}f}"


# --- FitPrune ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptState:
    """One calibration sample at the LLM's input: its sequence and its visual-token counts."""

    sequence: Sequence
    n_image: int  # image tokens before any pruning (the unpruned FLOPs count these)
    n_visual: int  # visual tokens entering the LLM (after the selector)


@dataclass(frozen=True)
class Fit:
    """fit(alpha): the per-sample drop counts of the simulated forward and the recipe they give."""

    alpha: int  # hundredths
    counts: tuple[tuple[int, ...], ...]  # [sample][layer] tokens the sample dropped
    stop_layer: int  # first layer where the projected FLOPs met the budget (num_layers: never)
    schedule: ScheduleSpec
    report: FlopsReport
    meets: bool


def visual_masses(rows_probs: Tensor, seq: Sequence) -> tuple[Tensor, Tensor]:
    """Per visual token j of batch row 0, from head-max probabilities (fp32) of the image and text
    rows [B, H, n + T, S] (`scored_rows_probs`): the mean attention of the text rows after the
    image (c_j) and of the visual rows (s_j) to j."""
    start, n = seq.image_start, seq.image_len
    to_image = rows_probs[0, :, :, start : start + n].amax(dim=0)  # [n + T, n]
    valid = seq.key_mask[0, start:].to(to_image.dtype)

    def mean_of_rows(rows: slice) -> Tensor:
        weights = valid[rows]
        return (to_image[rows] * weights[:, None]).sum(dim=0) / weights.sum().clamp(min=1)

    return mean_of_rows(slice(n, None)), mean_of_rows(slice(0, n))


def _remaining_mass(values: Tensor) -> tuple[Tensor, Tensor]:
    """Ascending order of `values` and, for k = 0..n, the float64 sum left after removing the k lowest."""
    order = torch.sort(values, stable=True).indices
    suffix = values[order].double().flip(0).cumsum(0).flip(0)
    return order, torch.cat([suffix, suffix.new_zeros(1)])


def total_mass(values: Tensor) -> float:
    """The sum of `values`, computed exactly as `lowest_removable` computes what is left."""
    return float(_remaining_mass(values)[1][0])


def lowest_removable(values: Tensor, keep: float) -> Tensor:
    """Mask of the largest number of lowest `values` whose removal leaves a sum >= keep."""
    order, remaining = _remaining_mass(values)
    count = max(int((remaining >= keep).sum()) - 1, 0)  # remaining never increases with k
    mask = torch.zeros(values.shape, dtype=torch.bool, device=values.device)
    mask[order[:count]] = True
    return mask


@dataclass
class _Node:
    """One sample's simulated forward at one layer, for one history of drops before it: the masses
    c_j and s_j its attention gives the visual tokens, and the nodes of the next layer, keyed by
    the tokens dropped at this one. The state entering a layer is a function of the drops made
    before it, so a node's masses serve every alpha whose drops lead to it."""

    cross: Tensor
    self_: Tensor
    children: dict[bytes, _Node] = field(default_factory=dict)


@dataclass
class ForwardCount:
    """Half-layer stages run by a calibration, summed over samples: attention (with the masses
    read from it) and o_proj + MLP. A full forward pass is one of each per layer."""

    attention: int = 0
    mlp: int = 0

    def passes(self, samples: int, layers: int) -> float:
        """Full forward passes per sample that the stages add up to."""
        return (self.attention + self.mlp) / (2 * layers * max(samples, 1))


class _Walk:
    """One sample's path through its tree of `_Node`s during one fit(alpha). Known nodes cost
    nothing; an unknown one needs the state entering its layer, made from the last state this
    walk holds (the prompt with layer 0's attention, from the reference pass) by running the
    layers between with this walk's drops."""

    def __init__(self, calibrator: FitPruneCalibrator, sample: int):
        self.calibrator = calibrator
        self.parent: _Node | None = None
        self.node: _Node | None = calibrator.roots[sample]
        self.key = b""
        self.drops: list[Tensor] = []  # per layer walked: the mask of dropped visual tokens
        # The latest state held: its layer, the sequence entering it, and that layer's attention
        # output (before o_proj) when it has run.
        self.layer, self.seq = 0, calibrator.prompts[sample].sequence
        self.output: Tensor | None = calibrator.root_outputs[sample]

    def masses(self, index: int) -> tuple[Tensor, Tensor]:
        """c and s at layer `index`, the layer after the drops walked so far."""
        if self.node is None:
            decoder, count = self.calibrator.decoder, self.calibrator.forwards
            seq = self._state(index)
            seq, attention, _ = decoder.layer_attention(index, seq, PrefillHook())
            count.attention += 1
            self.seq, self.output = seq, attention.output
            self.node = _Node(*visual_masses(scored_rows_probs(decoder, index, seq, attention), seq))
            self.parent.children[self.key] = self.node
        return self.node.cross, self.node.self_

    def drop(self, dropped: Tensor) -> None:
        """Drop the tokens of mask `dropped` at the current layer and move to the next."""
        self.drops.append(dropped)
        self.parent, self.key = self.node, dropped.cpu().numpy().tobytes()
        self.node = self.node.children.get(self.key)

    def _state(self, index: int):
        """The sequence entering layer `index` after this walk's drops."""
        decoder, count = self.calibrator.decoder, self.calibrator.forwards
        while self.layer < index:
            seq, output = self.seq, self.output
            if output is None:
                seq, attention, _ = decoder.layer_attention(self.layer, seq, PrefillHook())
                output = attention.output
                count.attention += 1
            rows = None
            if self.drops[self.layer].any():
                seq, rows = seq.keep_image((~self.drops[self.layer]).nonzero().flatten()[None], renumber=False)
            self.seq, self.output = decoder.finish_layer(self.layer, seq, output, rows), None
            count.mlp += 1
            self.layer += 1
        return self.seq


class FitPruneCalibrator:
    """The FitPrune search over prepared samples (held at the LLM's input, batch 1 each).

    stop_rule: when fit(alpha) stops pruning — at the first layer where the projected MACs
    (spent so far + every remaining layer at the current counts) meet the budget, projected
      "recipe" (default; a deliberate fix): for the recipe the counts so far give (floor of the
        mean), so that "reached" means "the recipe meets the budget";
      "samples" (the reference code): as the mean over samples of each one's own counts, which
        the floored recipe can miss, and which makes meeting the budget non-monotone in alpha.
    """

    def __init__(self, decoder: Decoder, prompts: list[PromptState], budget: Budget, stop_rule: str = "recipe"):
        if stop_rule not in STOP_RULES:
            raise UserError(f"unknown stop rule {stop_rule!r} (known: {', '.join(STOP_RULES)})")
        self.decoder = decoder
        self.prompts = prompts
        self.budget = budget
        self.stop_rule = stop_rule
        self.num_layers = len(decoder.layers)
        self.reference: Tensor | None = None  # [layers, samples, 2]: W_c, W_s of the unpruned model
        self.roots: list[_Node] = []  # per sample, layer 0 (filled by the reference pass)
        self.root_outputs: list[Tensor] = []  # per sample, layer 0's attention output before o_proj
        self.forwards = ForwardCount()
        self.stops: list[int] = []  # each fit's stop layer, to say what the search cost without reuse

    def _macs(self, tokens: int, kept: int) -> int:
        return paper_layer_macs(self.decoder.args, tokens, kept)

    @torch.inference_mode()
    def collect_reference(self, progress: Callable[[Iterator], Iterator] = iter) -> Tensor:
        """W_c and W_s per layer and sample, from the unpruned model. Its masses are the nodes of
        the no-drop path (every fit starts there), and layer 0's attention output is kept for
        the fits, whose layer 0 sees the same prompt."""
        reference = torch.zeros(self.num_layers, len(self.prompts), 2, dtype=torch.float64)
        self.roots, self.root_outputs = [], []
        no_drop = None
        for i, prompt in progress(enumerate(self.prompts)):
            seq, parent = prompt.sequence, None
            for index in range(self.num_layers):
                seq, attention, _ = self.decoder.layer_attention(index, seq, PrefillHook())
                self.forwards.attention += 1
                node = _Node(*visual_masses(scored_rows_probs(self.decoder, index, seq, attention), seq))
                reference[index, i, 0], reference[index, i, 1] = total_mass(node.cross), total_mass(node.self_)
                if parent is None:
                    self.roots.append(node)
                    self.root_outputs.append(attention.output)
                    no_drop = torch.zeros(seq.image_len, dtype=torch.bool).numpy().tobytes()
                else:
                    parent.children[no_drop] = node
                parent = node
                if index + 1 < self.num_layers:  # the last layer's o_proj and MLP change no mass
                    seq = self.decoder.finish_layer(index, seq, attention.output, None)
                    self.forwards.mlp += 1
        self.reference = reference
        return reference

    @property
    def passes(self) -> float:
        """Full forward passes per sample run so far (reference pass and fits)."""
        return self.forwards.passes(len(self.prompts), self.num_layers)

    @property
    def passes_without_reuse(self) -> float:
        """Full forward passes per sample of the same reference pass and fits, each fit run from
        the prompt through every layer before its stop."""
        return 1 + sum(self.stops) / self.num_layers

    @torch.inference_mode()
    def fit(self, alpha: int) -> Fit:
        """Simulate pruning with alpha = `alpha` / 100 over every sample, layer by layer: each
        sample drops its own intersection of lowest-mass tokens; the recipe takes the mean.

        Nothing is computed that an earlier fit or the reference pass already did for the same
        drops (see `_Node`), nor after pruning stops (o_proj and the MLP of the last layer that
        drops only make a state no mass is read from)."""
        if not self.roots:  # the reference pass makes the tree's roots, and W
            self.collect_reference()
        keep = (ALPHA_STEPS - alpha) / ALPHA_STEPS
        walks = [_Walk(self, i) for i in range(len(self.prompts))]
        counts = [[0] * self.num_layers for _ in self.prompts]
        stop = self.num_layers
        # Layer-major: whether pruning stops before a layer depends on every sample's counts so far.
        for index in range(self.num_layers):
            if self._reached(index, counts):
                stop = index
                break
            for i, walk in enumerate(walks):
                keep_cross, keep_self = (keep * w for w in self.reference[index, i].tolist())
                cross, self_ = walk.masses(index)
                dropped = lowest_removable(cross, keep_cross) & lowest_removable(self_, keep_self)
                counts[i][index] = int(dropped.sum())
                walk.drop(dropped)
        self.stops.append(stop)
        schedule = self._schedule(counts)
        report = self.budget.report(schedule)
        return Fit(
            alpha, tuple(map(tuple, counts)), stop, schedule, report, self.budget.allows(report.total, report.unpruned)
        )

    def _reached(self, index: int, counts: list[list[int]]) -> bool:
        """Do the projected MACs before layer `index` (no pruning from it on) meet the budget?"""
        if self.stop_rule == "recipe":
            return self.budget.meets(self._schedule(counts))
        projected = unpruned = 0
        for prompt, dropped in zip(self.prompts, counts, strict=True):
            n = prompt.n_visual
            for layer in range(index):
                projected += self._macs(n, n - dropped[layer])
                n -= dropped[layer]
            projected += (self.num_layers - index) * self._macs(n, n)
            unpruned += self.num_layers * self._macs(prompt.n_image, prompt.n_image)
        return self.budget.allows(projected, unpruned)

    def _schedule(self, counts: list[list[int]]) -> ScheduleSpec:
        """D_l = floor of the mean over samples, each sample's count taken relative to its own
        visual tokens and scaled to the recipe's (they differ only for LLaVA-NeXT anyres)."""
        n = self.budget.visual_tokens
        drop = []
        for index in range(self.num_layers):
            share = sum(Fraction(c[index], p.n_visual) for c, p in zip(counts, self.prompts, strict=True) if p.n_visual)
            drop.append(int(n * share / len(self.prompts)))
        return ScheduleSpec("fitprune", drop=tuple(drop), visual_tokens=n)

    def search(self, on_step: Callable[[Fit], None] = lambda fit: None) -> tuple[Fit, list[Fit]]:
        """Bisect alpha on the 0.01 grid for one whose recipe meets the budget while the next lower
        alpha's does not. Meeting is not monotone in alpha for every data set, so a smaller
        meeting alpha can exist below a failing one; the search does not look for it.

        Returns that fit and every fit evaluated, in order. Dropping every token after layer 0's
        attention (alpha = 1) is the cheapest plan, so the search starts knowing it meets when
        the budget is reachable at all (checked analytically before any data is read).
        """
        fits: dict[int, Fit] = {}

        def evaluate(alpha: int) -> Fit:
            if alpha not in fits:
                fits[alpha] = self.fit(alpha)
                on_step(fits[alpha])
            return fits[alpha]

        lo, hi = -1, ALPHA_STEPS  # invariant: alpha lo fails (or is below the grid), alpha hi meets
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if evaluate(mid).meets else (mid, hi)
        best = evaluate(hi)
        if not best.meets:
            raise UserError(
                f"no alpha meets flops budget {float(self.budget.fraction):g} on this data: alpha = 1 reaches "
                f"{_ratio_up(best.report)}"
            )
        return best, list(fits.values())


def fitprune_floor(budget: Budget) -> ScheduleSpec:
    """FitPrune's cheapest plan: every visual token dropped after layer 0's attention."""
    n = budget.visual_tokens
    return ScheduleSpec("fitprune", drop=(n,) + (0,) * (budget.args.text.num_layers - 1), visual_tokens=n)


# --- a selector alone --------------------------------------------------------------------------


def solve_selector(budget: Budget) -> tuple[SelectorSpec, str]:
    """The count of `budget.selector` (its declaration's `count_field`, left out) that keeps the
    most visual tokens while meeting the budget with no schedule, and a line saying what was
    solved. Of the settings that keep the same count, the first (the smallest ratio) is taken."""
    spec, args = budget.selector, budget.args
    method, key = spec.declaration, spec.declaration.count_field
    patches, grid = args.vision.num_patches, args.vision.grid_size
    by_count: dict[int, SelectorSpec] = {}  # kept per tile -> the first setting keeping it
    for value in method.count_settings(patches, grid):
        candidate = replace(spec, **{key: value})
        try:
            by_count.setdefault(candidate.output_tokens(patches, grid), candidate)
        except UserError:  # a setting the method refuses for this grid (pool's non-square counts)
            continue
    candidates = [by_count[count] for count in sorted(by_count) if count > 0]  # an image must keep a token
    floor = candidates[0]
    floor.validate()  # the user's other fields
    check_selector(args, floor)  # the refusals (tiles, probes) before any count is weighed
    if not replace(budget, selector=floor).meets(None):
        raise replace(budget, selector=floor).unreachable(spec.method, None, f"{key} = {getattr(floor, key)}")
    # Tokens entering the LLM, and so the MACs, never decrease along `candidates`: bisect for the last that meets.
    lo, hi = 0, len(candidates)  # candidates[lo] meets; candidates[hi] (past the end) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if replace(budget, selector=candidates[mid]).meets(None) else (lo, mid)
    best = candidates[lo]
    kept = best.output_tokens(patches, grid)
    where = f" of each tile's {patches} patches" if args.layout.tiled else f" of {patches} patches"
    solved = (
        f"{key} = {getattr(best, key)} ({kept} kept{where}), the most kept meeting the budget with no schedule; "
        f"{replace(budget, selector=best).visual_tokens} visual tokens enter the LLM at "
        f"{budget.size[0]}x{budget.size[1]}"
    )
    return best, solved


def prepare_prompts(model, samples: Samples, selector: SelectorSpec | None, device: torch.device, progress=iter):
    """Each sample at the LLM's input: prompt tokens embedded, image through the vision stage
    (and the selector), on `device`. One prompt per batch, so there is no padding."""
    from .models.text_encoder import check_recipe_applies
    from .runtime.batch import build_batch
    from .runtime.eager import image_embeddings

    graph, args = model.graph, model.args
    recipe = None
    if selector is not None:
        recipe = Recipe("selector", ModelRef(args.family, model.source.name, args.config_hash()), selector)
        check_recipe_applies(model, recipe)

    def embed(image: Image.Image, question: str) -> Tensor:
        return image_embeddings(model, image, recipe, question)

    prompts = []
    with torch.inference_mode():
        for image, question in progress(zip(samples.images, samples.questions, strict=True)):
            batch = build_batch(model.tokenizer, model.chat_template, args, [image], [question], 1, embed)
            prompts.append(
                PromptState(
                    prompt_sequence(graph.decoder, batch, device),
                    args.layout.num_tokens((image.height, image.width)),
                    batch.num_image_tokens[0],
                )
            )
    return prompts


def prompt_sequence(decoder: Decoder, batch, device: torch.device) -> Sequence:
    """`Decoder.prompt_sequence` of a prepared batch, on `device`."""
    return decoder.prompt_sequence(*(t.to(device) for t in batch.prompt_tensors()))


# --- the command -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationRequest:
    model: str
    flops_budget: str | float
    # The schedule solved. None: fitprune, or, for a selector whose count is left out, no
    # schedule (the selector's count is solved alone).
    method: str | None = None
    weights: str | None = None
    selector: SelectorSpec | None = None
    image_size: tuple[int, int] | None = None  # (height, width) the budget holds at; None: the reference size
    data: str | None = None  # None: the shipped calibration_data/
    samples: int = 64
    seed: int = 0
    skip_bad: bool = False
    stop_rule: str = "recipe"  # fitprune: see FitPruneCalibrator
    fastv_layer: int = 2
    stage_layers: tuple[int, ...] | None = None  # pyramiddrop; None: L/4, L/2, 3L/4
    device: str = "auto"
    dtype: str = "auto"
    name: str | None = None  # None: [<selector>-]<method>-<model>-b<budget digits>, e.g. fitprune-llava-1.5-7b-b045

    @classmethod
    def from_options(
        cls,
        model: str,
        out: str | None = None,
        selector: str | None = None,
        selector_ratio: float | None = None,
        selector_tokens: int | None = None,
        stage_layers: str | None = None,
        image_size: str | None = None,
        **fields,
    ) -> CalibrationRequest:
        """A request from the command line's options (the recipe is named after --out's file)."""
        if selector is None and (selector_ratio is not None or selector_tokens is not None):
            raise UserError("--selector-ratio and --selector-tokens need --selector")
        layers = None
        if stage_layers is not None:
            try:
                layers = tuple(int(x) for x in stage_layers.split(","))
            except ValueError:
                raise UserError(f"--stage-layers wants layer numbers like 8,16,24, got {stage_layers!r}") from None
        spec = SelectorSpec(selector, ratio=selector_ratio, tokens=selector_tokens) if selector else None
        size = parse_image_size(image_size) if image_size is not None else None
        name = Path(out).stem if out else None
        return cls(model, selector=spec, stage_layers=layers, image_size=size, name=name, **fields)

    @property
    def selector_count_left_out(self) -> bool:
        """Whether the selector's count (its declaration's `count_field`) is left for calibrate."""
        key = self.selector.declaration.count_field if self.selector else None
        return key is not None and getattr(self.selector, key) is None

    @property
    def schedule(self) -> str | None:
        """The schedule solved; None when the selector's count is solved alone."""
        if self.method is None and self.selector_count_left_out:
            return None
        return self.method or "fitprune"

    @property
    def recipe_name(self) -> str:
        if self.name:
            return slugify(self.name)  # from --out's file name; a recipe name is a file-name slug
        model = Path(self.model).name if Path(self.model).is_dir() else self.model
        digits = str(float(parse_budget(self.flops_budget))).replace(".", "")
        methods = [self.selector.method] if self.selector else []
        methods += [self.schedule] if self.schedule else []
        return slugify(f"{'-'.join(methods)}-{model}-b{digits}")


@dataclass
class FitPruneRun:
    """What a FitPrune calibration used and tried."""

    alpha: float
    fits: list[Fit]  # every fit evaluated, in order
    samples: int
    skipped: list[str]
    text_tokens: tuple[int, int]  # median prompt lengths before / after the image
    forwards: ForwardCount  # what the reference pass and the fits ran, over every sample
    passes: float  # full forward passes per sample that adds up to
    passes_without_reuse: float  # the same search recomputing every fit from the prompt


@dataclass
class CalibrationResult:
    recipe: Recipe
    args: LlavaArgs
    report: FlopsReport  # paper convention at the budget's image size
    exact: ExactMacs  # whole-model prefill, pruned
    exact_unpruned: ExactMacs
    text_tokens: tuple[int, int]  # (prefix, suffix) prompt lengths the exact count assumes
    image_size: tuple[int, int]  # (height, width) the budget holds at
    tiles: int
    seconds: float
    fitprune: FitPruneRun | None = None
    notes: list[str] = field(default_factory=list)


ILLUSTRATIVE_TEXT = (35, 40)  # prompt lengths for the exact count when no prompt is seen (as `inspect`)


def calibrate(request: CalibrationRequest, progress: bool = False) -> CalibrationResult:
    """Solve (PyramidDrop, FastV, a selector's count) or calibrate (FitPrune) for the budget at
    the request's image size; nothing is written.

    Every input is checked before a model is loaded: the budget, its reachability, the data.
    """
    from .models.loader import resolve_model

    start = time.monotonic()
    fraction = parse_budget(request.flops_budget)
    name = request.schedule
    method = schedule_method(name) if name else None
    source = resolve_model(request.model, request.weights)
    args = source.args
    if request.selector is not None and method is not None:
        if request.selector_count_left_out:
            key = request.selector.declaration.count_field
            raise UserError(
                f"give the count of selector {request.selector.method} (--selector-{key}) to solve {name} for "
                f"the budget, or leave out --method to solve the selector's {key} alone"
            )
        request.selector.validate()
        check_selector(args, request.selector)
    size, n_image, tiles = reference_image(args, request.image_size)
    notes = []
    if request.image_size is not None and size != request.image_size:
        notes.append(f"--image-size ignored: {args.family} takes every image as one {size[0]}x{size[1]} tile")
    model = ModelRef(args.family, source.name, args.config_hash())
    budget = Budget(fraction, args, model, n_image, request.selector, size)
    provenance = {
        "tool": f"vtpexport {__version__}",
        "produced_by": "vtpexport calibrate",
        "method": name or request.selector.method,
        "flops_budget": float(fraction),
        "image_size": list(size),  # the budget holds at this size (on LLaVA-NeXT, counts follow from it)
        "image_tokens": n_image,
    }
    run, text = None, ILLUSTRATIVE_TEXT
    if method is not None and method.calibration == "data":
        schedule, run, extra = _calibrate_fitprune(request, budget, progress)
        text = run.text_tokens
    else:
        if request.data is not None:
            notes.append(f"--data ignored: {provenance['method']} is solved analytically for the budget, without data")
        if method is None:
            selector, solved = solve_selector(budget)
            budget, schedule = replace(budget, selector=selector), None
        else:
            schedule, solved = method.solve(budget, {"layer": request.fastv_layer, "layers": request.stage_layers})
        extra = {"solved": solved}
    report = budget.report(schedule)
    provenance.update(extra)
    provenance["flops_ratio"] = round(report.ratio, 6)
    provenance["tokens_per_layer"] = [[row.tokens, row.kept] for row in report.layers]  # entering, after drop
    provenance["macs_per_layer"] = [row.macs for row in report.layers]
    recipe = budget.recipe(schedule, request.recipe_name, provenance)
    recipe.check_model(args, source.name)
    return CalibrationResult(
        recipe,
        args,
        report,
        exact_prefill_macs(args, recipe, n_image, *text, tiles, size),
        exact_prefill_macs(args, None, n_image, *text, tiles),
        text,
        size,
        tiles,
        time.monotonic() - start,
        run,
        notes,
    )


def _calibrate_fitprune(
    request: CalibrationRequest, budget: Budget, progress: bool
) -> tuple[ScheduleSpec, FitPruneRun, dict]:
    from .models.loader import load_model

    if budget.visual_tokens == 0:
        raise UserError("the selector leaves no visual tokens: there is nothing for fitprune to prune")
    if not budget.meets(fitprune_floor(budget)):
        raise budget.unreachable("fitprune", fitprune_floor(budget), "every visual token dropped after layer 0")
    device = resolve_device(request.device)
    dtype = resolve_dtype(request.dtype, budget.args, device)  # before a weight is read
    if request.data is None and not DEFAULT_DATA.is_file():
        raise UserError(f"the default calibration set is missing ({DEFAULT_DATA}); pass --data")
    records = read_dataset(DEFAULT_DATA if request.data is None else request.data)
    samples = load_samples(select_records(records, request.samples, request.seed), request.skip_bad)

    def bar(description: str, total: int):
        return lambda items: track(items, description, total, "sample", progress)

    model = load_model(request.model, request.weights, dtype)
    model.graph.to(device)
    count = len(samples.images)
    prompts = prepare_prompts(model, samples, request.selector, device, bar("embedding samples", count))
    calibrator = FitPruneCalibrator(model.graph.decoder, prompts, budget, request.stop_rule)
    calibrator.collect_reference(bar("reference statistics", count))
    with progress_bar("searching alpha", 7, "fit", progress) as steps:

        def on_step(fit: Fit) -> None:
            steps.set_postfix(alpha=f"{fit.alpha / ALPHA_STEPS:.2f}", ratio=f"{fit.report.ratio:.4f}", refresh=False)
            steps.update()

        best, fits = calibrator.search(on_step)
    text = (_median([p.sequence.image_start for p in prompts]), _median([_suffix_len(p.sequence) for p in prompts]))
    run = FitPruneRun(
        best.alpha / ALPHA_STEPS,
        fits,
        count,
        samples.skipped,
        text,
        calibrator.forwards,
        calibrator.passes,
        calibrator.passes_without_reuse,
    )
    provenance = {
        "alpha": run.alpha,
        "stop_rule": request.stop_rule,
        "search": [[fit.alpha / ALPHA_STEPS, round(fit.report.ratio, 6), fit.meets] for fit in fits],
        "data": "calibration_data/calibration.jsonl (default)" if request.data is None else str(request.data),
        "data_sha256": samples.sha256,
        "samples": count,
        "skipped": len(samples.skipped),
        "seed": request.seed,
        "dtype": dtype_name(dtype),
        "device": str(device),
    }
    return best.schedule, run, provenance


def _suffix_len(seq: Sequence) -> int:
    return seq.x.shape[1] - seq.image_start - seq.image_len


def _median(values: list[int]) -> int:
    return sorted(values)[len(values) // 2]


# --- writing the recipe ------------------------------------------------------------------------


def check_writable(path: str | Path, force: bool = False) -> Path:
    """Refuse an --out that cannot be written, or that exists without `force`, before any work is done."""
    path = files.check_writable(path, "the recipe")
    if path.exists() and not force:
        raise UserError(f"{path} already exists; pass --force to replace it")
    return path


def write_recipe(recipe: Recipe, path: str | Path, force: bool = False) -> Path:
    """Write atomically (a temporary file in the same folder, renamed into place); an existing
    file is replaced only with `force`, even one that appeared during the calibration."""
    path = check_writable(path, force)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot write the recipe to {path}: {error.strerror or error}") from None
    text = recipe.to_yaml().encode()
    return files.write_atomically(path, lambda stream: stream.write(text), "the recipe", replace=force)


def calibrate_to_file(
    request: CalibrationRequest, out: str | Path | None, force: bool = False, progress: bool = False
) -> tuple[CalibrationResult, Path]:
    """Calibrate and write the recipe (default recipes/<name>.yaml); the output is checked first,
    so a calibration is never lost to an unwritable path."""
    path = check_writable(out or Path("recipes") / f"{request.recipe_name}.yaml", force)
    result = calibrate(request, progress)
    return result, write_recipe(result.recipe, path, force)


# --- what the command prints -------------------------------------------------------------------


def calibration_view(result: CalibrationResult):
    """The per-layer table and totals of `vtpexport inspect`, under a summary of the calibration."""
    from rich.console import Group
    from rich.text import Text

    from .flops import cache_lengths, exact_decode_macs
    from .viz import flops_view

    recipe, report, args, run = result.recipe, result.report, result.args, result.fitprune
    prefix, suffix = result.text_tokens
    provenance = recipe.provenance
    lines = []
    if run is not None:
        tried = ", ".join(f"{fit.alpha / ALPHA_STEPS:.2f} {'meets' if fit.meets else 'over'}" for fit in run.fits)
        below = f", alpha {run.alpha - 1 / ALPHA_STEPS:.2f}'s does not" if run.alpha > 0 else ""
        lines.append(f"alpha {run.alpha:.2f} (bisected on the 0.01 grid): its recipe meets the budget{below} ({tried})")
        lines.append(f"samples: {run.samples} used, {len(run.skipped)} skipped (seed {provenance['seed']})")
        lines.append(
            f"forward passes per sample: {run.passes:.2f} ({run.forwards.attention} attention and "
            f"{run.forwards.mlp} MLP layer stages over {run.samples} samples, {args.text.num_layers} layers; "
            f"{run.passes_without_reuse:.2f} without reuse, {1 + len(run.fits)} as one pass per alpha tried)"
        )
    else:
        lines.append(provenance["solved"])
    height, width = result.image_size
    lines.append(
        f"flops budget {provenance['flops_budget']:g} of the unpruned visual-token LLM FLOPs at a {height}x{width} "
        f"image: spends {report.ratio:.4f} (paper convention, {report.n_image} visual tokens unpruned, "
        f"{report.layers[0].tokens} entering the LLM); exact whole-model prefill "
        f"{result.exact.total / result.exact_unpruned.total:.4f} of unpruned"
    )
    lines.append(f"wall time {result.seconds:.1f} s")
    lines += [f"note: {note}" for note in result.notes]
    if run is not None and run.skipped:
        lines.append("skipped: " + ", ".join(run.skipped))
    view = flops_view(
        f"{recipe.name} on {recipe.model.name}, {height}x{width} image: {report.n_image} visual tokens",
        report,
        result.exact,
        result.exact_unpruned,
        exact_decode_macs(args, cache_lengths(args, recipe, report.n_image, prefix, suffix, result.image_size)),
        exact_decode_macs(args, cache_lengths(args, None, report.n_image, prefix, suffix)),
        f"P={prefix} + T={suffix} text tokens{'' if run is not None else ', illustrative'}, "
        f"{result.tiles} CLIP tile{'s' if result.tiles > 1 else ''}",
    )
    return Group(view, Text("\n".join(lines)))
