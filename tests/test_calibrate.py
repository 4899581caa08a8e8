"""`vtpexport calibrate`: FitPrune's search and the analytic PyramidDrop / FastV solutions meet
their budgets exactly, deterministically, and refuse bad input in one line."""

import json
import random
import re
from dataclasses import replace
from fractions import Fraction
from itertools import accumulate
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import random_image
from torch import Tensor

from vtpexport.calibrate import (
    Budget,
    CalibrationRequest,
    FitPruneCalibrator,
    calibrate,
    lowest_removable,
    parse_budget,
    prepare_prompts,
    reference_image,
    total_mass,
    visual_masses,
)
from vtpexport.cli import main
from vtpexport.dataset import load_samples, read_dataset, select_records
from vtpexport.errors import UserError
from vtpexport.flops import paper_flops
from vtpexport.graph.decoder import Sequence
from vtpexport.models.loader import architecture
from vtpexport.pruning.fitprune import scored_rows_probs
from vtpexport.pruning.prefill import PrefillHook
from vtpexport.pruning.pyramiddrop import default_stage_layers, solve_pyramiddrop
from vtpexport.pruning.registry import schedule_method
from vtpexport.recipe import ModelRef, Recipe, ScheduleSpec, SelectorSpec
from vtpexport.runtime.eager import greedy_generate, image_embeddings, prepare

DATA = Path(__file__).resolve().parents[1] / "calibration_data" / "calibration.jsonl"
CPU = torch.device("cpu")


def budget_for(model_name: str, fraction, selector=None) -> Budget:
    args = architecture(model_name)
    _, n_image, _ = reference_image(args)
    return Budget(
        parse_budget(fraction), args, ModelRef(args.family, model_name, args.config_hash()), n_image, selector
    )


def meets(budget: Budget, recipe: Recipe) -> bool:
    report = paper_flops(budget.args, recipe, budget.n_image)
    return report.total * budget.fraction.denominator <= report.unpruned * budget.fraction.numerator


@pytest.fixture(scope="module")
def calibrators(tiny_models):
    """Each tiny model with six samples of the shipped set at the LLM's input, reference taken."""
    samples = load_samples(select_records(read_dataset(DATA), 6, seed=0))
    out = {}
    for name, model in tiny_models.items():
        calibrator = FitPruneCalibrator(model.graph.decoder, prepare_prompts(model, samples, None, CPU), None)
        calibrator.collect_reference()
        out[name] = calibrator
    return out


def with_budget(calibrator: FitPruneCalibrator, name: str, fraction) -> FitPruneCalibrator:
    calibrator.budget = budget_for(name, fraction)
    return calibrator


# --- the pieces --------------------------------------------------------------------------------


def test_lowest_removable_keeps_the_asked_mass():
    values = torch.tensor([0.125, 0.5, 0.25, 0.375])
    # Removing 0.125 and 0.25 leaves exactly 0.875; removing 0.375 too would leave 0.5.
    assert lowest_removable(values, 0.875).tolist() == [True, False, True, False]
    assert not lowest_removable(values, 1.25).any()  # alpha = 0: nothing can go
    assert lowest_removable(values, 0.0).all()  # alpha = 1: everything can go
    assert not lowest_removable(values, 2.0).any()  # asked for more than there is
    assert total_mass(values) == 1.25


def test_visual_masses_are_head_max_means_of_text_and_visual_rows():
    # [prefix(1) | image(2) | text(2)]; head 1 puts more on image token 1 from the text rows.
    probs = torch.zeros(1, 2, 5, 5)
    probs[0, 0, 3:, 1:3] = torch.tensor([[0.2, 0.1], [0.4, 0.3]])
    probs[0, 1, 3:, 2] = 0.6
    probs[0, :, 1:3, 1:3] = torch.tensor([[0.5, 0.0], [0.25, 0.75]])
    seq = Sequence(torch.zeros(1, 5, 4), torch.ones(1, 5, dtype=torch.long), torch.arange(5)[None], None, 1, 2)
    cross, visual = visual_masses(probs[:, :, 1:], seq)  # the image and text rows
    torch.testing.assert_close(cross, torch.tensor([0.3, 0.6]))
    torch.testing.assert_close(visual, torch.tensor([0.375, 0.375]))


def test_reading_data(tmp_path):
    random_image(40, 50).save(tmp_path / "b.png")
    random_image(30, 30).save(tmp_path / "a.jpg")
    (tmp_path / "notes.md").write_text("not an image")
    folder = read_dataset(tmp_path)
    assert [(r.image.name, r.question) for r in folder][:2] == [
        ("a.jpg", "Describe the image in detail."),
        ("a.jpg", "What is the main object in the picture?"),
    ]
    (tmp_path / "questions.txt").write_text("What?\n\nWhere?\n")
    assert [(r.image.name, r.question) for r in read_dataset(tmp_path)] == [
        ("a.jpg", "What?"),
        ("a.jpg", "Where?"),
        ("b.png", "What?"),
        ("b.png", "Where?"),
    ]
    shipped = read_dataset(DATA)
    assert len({r.image for r in shipped}) >= 16 and all(r.image.is_file() for r in shipped)
    chosen = select_records(shipped, 5, seed=3)
    assert chosen == select_records(shipped, 5, seed=3) != select_records(shipped, 5, seed=4)
    assert [shipped.index(r) for r in chosen] == sorted(shipped.index(r) for r in chosen)
    assert select_records(shipped, 1000, seed=0) == shipped


@pytest.mark.parametrize("name", ["tiny-llava-1.5", "tiny-llava-next"])
def test_prompts_match_eager_prepare(tiny_models, name):
    model = tiny_models[name]
    samples = load_samples(select_records(read_dataset(DATA), 2, seed=1))
    selector = SelectorSpec("fopru-rank", ratio=0.5) if name == "tiny-llava-1.5" else None
    recipe = Recipe("s", ModelRef(model.args.family, name, model.args.config_hash()), selector)
    for prompt, image, question in zip(
        prepare_prompts(model, samples, selector, CPU), samples.images, samples.questions, strict=True
    ):
        batch = prepare(model, [image], [question], 1, recipe)
        seq = prompt.sequence
        embeds = seq.x[:, seq.image_start : seq.image_start + seq.image_len]
        assert torch.equal(embeds, batch.image_embeds)
        assert prompt.n_visual == batch.num_image_tokens[0]


# --- FitPrune ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-llava-1.5", "tiny-llava-next"])
def test_fitprune_meets_the_budget_and_runs_in_the_graph(tiny_models, name):
    request = CalibrationRequest(name, "0.5", data=str(DATA), samples=4)
    result = calibrate(request)
    recipe = result.recipe
    budget = budget_for(name, "0.5")
    assert meets(budget, recipe) and result.report.ratio <= 0.5
    assert recipe.schedule.method == "fitprune" and sum(recipe.schedule.drop) > 0
    assert recipe.provenance["samples"] == 4 and recipe.provenance["alpha"] == result.fitprune.alpha
    assert [fit.meets for fit in result.fitprune.fits if fit.alpha == round(100 * result.fitprune.alpha)] == [True]
    assert "created" not in recipe.provenance  # so the same inputs give the same bytes
    model = tiny_models[name]
    batch = prepare(model, [random_image(60, 90)], ["What is it?"], 4, recipe)
    assert len(greedy_generate(model, batch, 4, stop_token_ids=(), recipe=recipe)[0]) == 4


@pytest.mark.parametrize("fraction", ["0.7", "0.5"])
def test_alpha_found_is_the_smallest_meeting_one(calibrators, fraction):
    """Against a brute-force sweep of every alpha on the 0.01 grid. FitPrune does not make meeting
    the budget monotone in alpha (each alpha's simulated forward diverges), and bisection assumes
    it: with only 36 visual tokens tiny-llava-1.5 has budgets where it is not, so this runs on
    tiny-llava-next (about 90 tokens per image), where it is."""
    calibrator = with_budget(calibrators["tiny-llava-next"], "tiny-llava-next", fraction)
    sweep = [calibrator.fit(alpha) for alpha in range(101)]
    smallest = next(fit.alpha for fit in sweep if fit.meets)
    best, fits = calibrator.search()
    assert best.alpha == smallest and best.meets and len(fits) <= 8
    assert best.schedule == sweep[smallest].schedule


def test_tightening_the_budget_never_prunes_less(calibrators):
    calibrator = calibrators["tiny-llava-1.5"]
    previous = None
    for fraction in ("0.9", "0.75", "0.6", "0.5", "0.4", "0.3", "0.2"):
        best, _ = with_budget(calibrator, "tiny-llava-1.5", fraction).search()
        cumulative = list(accumulate(best.schedule.drop))
        if previous is not None:
            assert all(now >= before for now, before in zip(cumulative, previous, strict=True)), (fraction, best)
        previous = cumulative


def test_the_stop_rules(calibrators):
    """ "recipe" stops at the first layer where the recipe so far meets the budget; "samples" (the
    reference code) where the mean per-sample projection does. Both searches return a recipe
    that meets the budget."""
    base = with_budget(calibrators["tiny-llava-1.5"], "tiny-llava-1.5", "0.6")
    for alpha in (30, 60, 90):
        fit = base.fit(alpha)
        stop, drop = fit.stop_layer, fit.schedule.drop
        assert drop[stop:] == (0,) * (4 - stop)
        assert base.budget.meets(fit.schedule) or stop == 4
        if stop > 0:  # it did not stop one layer earlier: the recipe then did not meet the budget
            earlier = ScheduleSpec("fitprune", drop=drop[: stop - 1] + (0,) * (5 - stop), visual_tokens=36)
            assert not base.budget.meets(earlier)
    reference = FitPruneCalibrator(base.decoder, base.prompts, base.budget, stop_rule="samples")
    for calibrator in (base, reference):
        best, _ = calibrator.search()
        assert best.meets


class _MassesFromThisForward(PrefillHook):
    """An un-reused fit(alpha) of one sample, as METHODS.md states it: at every layer, the drop
    from this very forward's attention (with W from the unpruned pass); or, without `keep`, the
    unpruned pass itself, recording W_c and W_s."""

    def __init__(self, reference: Tensor, keep: float | None = None):
        super().__init__()
        self.reference, self.keep = reference, keep
        self.counts = []

    def after_attention(self, decoder, index, seq, attention):
        cross, self_ = visual_masses(scored_rows_probs(decoder, index, seq, attention), seq)
        if self.keep is None:
            self.reference[index] = torch.tensor([total_mass(cross), total_mass(self_)], dtype=torch.float64)
            return seq, None
        keep_cross, keep_self = (self.keep * w for w in self.reference[index].tolist())
        dropped = lowest_removable(cross, keep_cross) & lowest_removable(self_, keep_self)
        self.counts.append(int(dropped.sum()))
        if not dropped.any():
            return seq, None
        return seq.keep_image((~dropped).nonzero().flatten()[None], renumber=False)


@pytest.mark.parametrize("name", ["tiny-llava-1.5", "tiny-llava-next"])
@torch.inference_mode()
def test_fits_reusing_earlier_forwards_equal_fits_run_from_the_prompt(tiny_models, name):
    """The search's reuse (masses of drops already seen, layer 0 from the reference pass, no
    forward after the stop) changes no count: alphas in shuffled order, so each fit follows
    others, against every sample run from its prompt through every layer for that alpha alone."""
    model = tiny_models[name]
    samples = load_samples(select_records(read_dataset(DATA), 4, seed=2))
    calibrator = FitPruneCalibrator(model.graph.decoder, prepare_prompts(model, samples, None, CPU), None)
    calibrator.budget = budget_for(name, "0.45")
    reference = torch.zeros_like(calibrator.collect_reference())
    for i, prompt in enumerate(calibrator.prompts):
        calibrator.decoder.run_layers(prompt.sequence, _MassesFromThisForward(reference[:, i]))
    assert torch.equal(calibrator.reference, reference)
    layers = calibrator.num_layers
    for alpha in random.Random(0).sample(range(101), 16):
        fit = calibrator.fit(alpha)
        for i, prompt in enumerate(calibrator.prompts):
            oracle = _MassesFromThisForward(reference[:, i], (100 - alpha) / 100)
            calibrator.decoder.run_layers(prompt.sequence, oracle)
            stop = fit.stop_layer
            assert fit.counts[i] == tuple(oracle.counts[:stop]) + (0,) * (layers - stop), (alpha, i)
    assert calibrator.passes < calibrator.passes_without_reuse


def test_alpha_zero_prunes_nothing_and_alpha_one_everything(calibrators):
    calibrator = with_budget(calibrators["tiny-llava-1.5"], "tiny-llava-1.5", "0.1")
    assert sum(calibrator.fit(0).schedule.drop) == 0
    assert calibrator.fit(100).schedule.drop == (36, 0, 0, 0)


def test_selector_composes_with_fitprune(tiny_models):
    selector = SelectorSpec("fopru-rank", ratio=0.5)
    result = calibrate(CalibrationRequest("tiny-llava-1.5", 0.3, selector=selector, data=str(DATA), samples=3))
    recipe = result.recipe
    assert recipe.selector == selector and recipe.schedule.visual_tokens == 18
    assert meets(budget_for("tiny-llava-1.5", 0.3, selector), recipe)
    assert (
        result.report.layers[0].tokens == 18
        and result.report.unpruned == paper_flops(architecture("tiny-llava-1.5"), None, 36).unpruned
    )
    model = tiny_models["tiny-llava-1.5"]
    batch = prepare(model, [random_image(60, 90)], ["What?"], 3, recipe)
    assert len(greedy_generate(model, batch, 3, stop_token_ids=(), recipe=recipe)[0]) == 3


# --- PyramidDrop and FastV, solved -----------------------------------------------------------------


@pytest.mark.parametrize("model", ["llava-1.5-7b", "llava-next-7b", "tiny-llava-1.5"])
@pytest.mark.parametrize("fraction", ["0.9", "0.5", "0.35"])
def test_pyramiddrop_lambda_is_the_largest_meeting_the_budget(model, fraction):
    budget = budget_for(model, fraction)
    layers = default_stage_layers(budget.args.text.num_layers)
    schedule = solve_pyramiddrop(budget, layers)
    assert budget.meets(schedule)
    if schedule.ratio < 1:
        assert not budget.meets(ScheduleSpec("pyramiddrop", layers=layers, ratio=round(schedule.ratio + 0.001, 3)))


@pytest.mark.parametrize("model", ["llava-1.5-7b", "llava-next-7b", "tiny-llava-next"])
@pytest.mark.parametrize("fraction", ["0.95", "0.6", "0.55"])
def test_fastv_ratio_is_the_smallest_meeting_the_budget(model, fraction):
    budget = budget_for(model, fraction)
    schedule, _ = schedule_method("fastv").solve(budget, {"layer": 2})
    assert budget.meets(schedule)
    if schedule.ratio > 0:
        assert not budget.meets(ScheduleSpec("fastv", layer=2, ratio=round(schedule.ratio - 0.001, 3)))


# --- LLaVA-NeXT: a selector keeps a count per tile, so a budget holds at an image size -------------


def spent_at(recipe: Recipe, size: tuple[int, int], model) -> tuple[Fraction, int]:
    """The paper-convention fraction `recipe` spends on an image of `size`, and the visual tokens
    that enter the LLM, counted by running the selector on such an image (not by the layout)."""
    image = random_image(*size)
    n_image = image_embeddings(model, image).shape[0]
    entering = n_image if recipe.selector is None else image_embeddings(model, image, recipe, "What?").shape[0]
    report = paper_flops(model.args, recipe, n_image, size)
    assert report.layers[0].tokens == entering
    return Fraction(report.total, report.unpruned), entering


NEXT_SIZES = [None, (40, 70)]  # None: the reference size, the largest tiling (64x64 on the tiny model)


@pytest.mark.parametrize("size", NEXT_SIZES)
def test_a_selector_alone_on_next_keeps_the_most_per_tile_that_meets_the_budget_at_the_size(tiny_models, size):
    model = tiny_models["tiny-llava-next"]
    result = calibrate(
        CalibrationRequest("tiny-llava-next", "0.45", selector=SelectorSpec("divprune"), image_size=size)
    )
    recipe, at = result.recipe, size or (64, 64)
    assert recipe.schedule is None and recipe.provenance["image_size"] == list(at) == list(result.image_size)
    spent, entering = spent_at(recipe, at, model)
    assert spent <= Fraction(45, 100) and result.report.layers[0].tokens == entering
    more = Recipe("more", recipe.model, SelectorSpec("divprune", tokens=recipe.selector.tokens + 1))
    assert spent_at(more, at, model)[0] > Fraction(45, 100)
    # The count is the size's: 7 of 16 per tile at 64x64 (88 tokens unpruned), 4 at 40x70 (52).
    assert recipe.selector.tokens == (7 if size is None else 4)
    loaded = Recipe.from_dict(recipe.to_dict())
    assert loaded == recipe
    loaded.check_model(model.args, "tiny-llava-next")


def test_a_ratio_selector_alone_takes_the_smallest_ratio_of_the_most_tokens_meeting_the_budget(tiny_models):
    model = tiny_models["tiny-llava-1.5"]
    recipe = calibrate(CalibrationRequest("tiny-llava-1.5", "0.45", selector=SelectorSpec("fopru-rank"))).recipe
    ratio = Fraction(recipe.selector.ratio).limit_denominator(1000)
    spent, entering = spent_at(recipe, (48, 48), model)
    assert spent <= Fraction(45, 100) and entering == int(36 * ratio) and recipe.schedule is None
    assert int(36 * (ratio - Fraction(1, 1000))) == entering - 1  # a smaller ratio keeps fewer
    more = Recipe("more", recipe.model, SelectorSpec("fopru-rank", ratio=(entering + 1) / 36))
    assert spent_at(more, (48, 48), model)[0] > Fraction(45, 100)


@pytest.mark.parametrize("size", NEXT_SIZES)
@pytest.mark.parametrize("method", ["fastv", "pyramiddrop"])
def test_a_fixed_selector_count_on_next_leaves_only_the_schedule_to_solve(tiny_models, method, size):
    model = tiny_models["tiny-llava-next"]
    selector = SelectorSpec("divprune", tokens=6)
    result = calibrate(CalibrationRequest("tiny-llava-next", "0.35", method, selector=selector, image_size=size))
    recipe, at = result.recipe, size or (64, 64)
    assert recipe.selector == selector and recipe.provenance["image_size"] == list(at)
    spent, _ = spent_at(recipe, at, model)
    assert spent <= Fraction(35, 100)
    # One step less pruning on the 0.001 grid (a smaller R, a larger lambda) spends more than the budget.
    step = -0.001 if method == "fastv" else 0.001
    looser = replace(recipe.schedule, ratio=round(recipe.schedule.ratio + step, 3))
    assert spent_at(Recipe("looser", recipe.model, selector, looser), at, model)[0] > Fraction(35, 100)
    batch = prepare(model, [random_image(*at)], ["What?"], 2, recipe)
    assert len(greedy_generate(model, batch, 2, stop_token_ids=(), recipe=recipe)[0]) == 2


def test_a_per_tile_ratio_composes_with_fitprune_on_next(tiny_models):
    """--selector-ratio: a share of each tile's patches (fopru-rank 0.5: 8 of 16)."""
    model = tiny_models["tiny-llava-next"]
    selector = SelectorSpec("fopru-rank", ratio=0.5)
    request = CalibrationRequest("tiny-llava-next", 0.45, selector=selector, image_size=(40, 70), data=str(DATA))
    recipe = calibrate(replace(request, samples=2)).recipe
    spent, entering = spent_at(recipe, (40, 70), model)
    # 5 tiles (the base and a 2x2 grid), 8 of each, and the grid's 4 image_newline tokens.
    assert spent <= Fraction(45, 100) and recipe.schedule.visual_tokens == entering == 5 * 8 + 4


def test_calibrate_on_next_states_the_image_size(tmp_path):
    out = tmp_path / "r.yaml"
    result = invoke(
        "--model", "tiny-llava-next", "--flops-budget", "0.45", "--selector", "divprune", "--image-size", "40x70",
        "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "40x70 image: 52 visual tokens" in result.output and "24 entering the LLM" in result.output
    recipe = Recipe.load(out)
    assert recipe.provenance["image_size"] == [40, 70] and recipe.selector.tokens == 4


def test_default_stages_scale_with_depth():
    assert default_stage_layers(32) == (8, 16, 24)
    assert default_stage_layers(40) == (10, 20, 30)
    assert default_stage_layers(4) == (1, 2, 3)
    assert default_stage_layers(2) == (1,)


def test_published_defaults_are_the_solutions_of_their_own_budgets():
    # PyramidDrop 576 -> 288 -> 144 -> 72 and FastV K=2 R=50% on LLaVA-1.5-7B (3.82 -> 1.78 / 2.01 T).
    budget = budget_for("llava-1.5-7b", 1)
    solvers = {
        "pyramiddrop": lambda b: solve_pyramiddrop(b, (8, 16, 24)),
        "fastv": lambda b: schedule_method("fastv").solve(b, {"layer": 2})[0],
    }
    for schedule in (ScheduleSpec("pyramiddrop", layers=(8, 16, 24)), ScheduleSpec("fastv")):
        spend = budget.report(schedule)
        exact = Budget(Fraction(spend.total, spend.unpruned), budget.args, budget.model, budget.n_image)
        solved = solvers[schedule.method](exact)
        assert solved.tokens_per_layer(576, 32) == schedule.tokens_per_layer(576, 32)


# --- the command ---------------------------------------------------------------------------------


def invoke(*args):
    return CliRunner().invoke(main, ["calibrate", *args], env={"COLUMNS": "160"})


def assert_one_line_error(result, pattern):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert re.search(pattern, lines[0]), lines[0]


def fitprune_args(out: Path, *extra: str) -> list[str]:
    return ["--model", "tiny-llava-1.5", "--flops-budget", "0.45", "--samples", "4", "--out", str(out), *extra]


def test_same_data_and_seed_give_identical_bytes(tmp_path):
    first, second = tmp_path / "a" / "r.yaml", tmp_path / "b" / "r.yaml"
    for out in (first, second):
        result = invoke(*fitprune_args(out, "--data", str(DATA), "--seed", "7"))
        assert result.exit_code == 0, result.output
    assert first.read_bytes() == second.read_bytes()
    recipe = Recipe.load(first)
    assert (
        recipe.name == "r"
        and recipe.provenance["seed"] == 7
        and recipe.provenance["produced_by"] == "vtpexport calibrate"
    )
    assert list(first.parent.iterdir()) == [first]  # no temporary file left beside it


def test_the_command_says_what_it_produced(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("--model", "tiny-llava-1.5", "--flops-budget", "0.45", "--samples", "3")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "wrote recipes/fitprune-tiny-llava-1.5-b045.yaml" in out
    assert re.search(r"alpha 0\.\d\d \(bisected on the 0\.01 grid\): its recipe meets the budget", out)
    assert "samples: 3 used, 0 skipped" in out and "wall time" in out
    assert re.search(
        r"flops budget 0\.45 of the unpruned visual-token LLM FLOPs at a 48x48 image: spends 0\.4\d{3}", out
    )
    assert "exact whole model, prefill" in out and "paper MACs" in out
    recipe = Recipe.load(tmp_path / "recipes" / "fitprune-tiny-llava-1.5-b045.yaml")
    assert recipe.provenance["data"] == "calibration_data/calibration.jsonl (default)"


@pytest.mark.parametrize("method, value", [("pyramiddrop", "lambda = 0.\\d+"), ("fastv", "R = 0.\\d+")])
def test_analytic_methods_need_no_data_or_weights(tmp_path, method, value):
    out = tmp_path / "r.yaml"
    result = invoke(
        "--model", "llava-1.5-7b", "--method", method, "--flops-budget", "0.5", "--data", "x.jsonl", "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    assert re.search(value, result.output) and "note: --data ignored" in result.output
    recipe = Recipe.load(out)
    assert recipe.schedule.method == method and recipe.provenance["flops_ratio"] <= 0.5


@pytest.mark.parametrize("budget", ["0", "-0.1", "1.5", "abc", "nan"])
def test_bad_budgets(tmp_path, budget):
    out = tmp_path / "r.yaml"
    assert_one_line_error(
        invoke(*fitprune_args(out)[:2], "--flops-budget", budget, "--out", str(out)), "--flops-budget"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--flops-budget", "0.01"], r"below what fitprune can reach on tiny-llava-1.5: the minimum is 0\.08\d\d"),
        (["--method", "fastv", "--flops-budget", "0.3"], r"below what fastv can reach .* minimum is 0\.5000 \(R = 1"),
        (["--method", "pyramiddrop", "--flops-budget", "0.2"], r"below what pyramiddrop can reach .* minimum is 0\.25"),
    ],
)
def test_unreachable_budget_names_the_minimum(tmp_path, args, pattern):
    out = tmp_path / "r.yaml"
    assert_one_line_error(invoke("--model", "tiny-llava-1.5", "--out", str(out), *args), pattern)
    assert not out.exists()


def write_data(folder: Path, rows: list[tuple[str, str]]) -> Path:
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps({"image": image, "question": q}) + "\n" for image, q in rows))
    return path


def test_unreadable_images_name_the_file_or_are_skipped(tmp_path):
    random_image(40, 50).save(tmp_path / "good.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "out" / "r.yaml"
    for bad, pattern in (("missing.jpg", r"image not found: .*missing\.jpg"), ("corrupt.png", r"corrupt\.png")):
        data = write_data(tmp_path, [("good.png", "What?"), (bad, "Why?")])
        assert_one_line_error(invoke(*fitprune_args(out, "--data", str(data))), pattern)
    assert not out.parent.exists()
    rows = [("good.png", "What?"), ("corrupt.png", "What?"), ("missing.jpg", "Why?"), ("good.png", "Where?")]
    result = invoke(*fitprune_args(out, "--data", str(write_data(tmp_path, rows)), "--skip-bad"))
    assert result.exit_code == 0, result.output
    assert "samples: 2 used, 2 skipped" in result.output and "missing.jpg" in result.output
    assert Recipe.load(out).provenance["skipped"] == 2


@pytest.mark.parametrize(
    "content, pattern",
    [("", r"holds no samples"), ('{"image": "a.png"}\n', r"data\.jsonl:1: expected a JSON object")],
)
def test_empty_or_malformed_dataset(tmp_path, content, pattern):
    data = tmp_path / "data.jsonl"
    data.write_text(content)
    out = tmp_path / "r.yaml"
    assert_one_line_error(invoke(*fitprune_args(out, "--data", str(data))), pattern)
    assert not out.exists()


def test_all_images_bad_even_with_skip_bad(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"image": "nope.png", "question": "What?"}) + "\n")
    out = tmp_path / "r.yaml"
    assert_one_line_error(invoke(*fitprune_args(out, "--data", str(data), "--skip-bad")), r"all 1 were skipped")


def test_unwritable_out(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a regular file")
    out = blocker / "r.yaml"
    assert_one_line_error(invoke(*fitprune_args(out)), r"cannot write the recipe to .*file is not a folder")
    assert_one_line_error(invoke(*fitprune_args(tmp_path)), r"it is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--selector", "prumerge", "--method", "fitprune"], r"give the count of selector prumerge \(--selector-tok"),
        (["--selector", "divprune", "--method", "fastv"], r"or leave out --method to solve the selector's tokens"),
        (["--selector", "recover"], r"data-dependent number of tokens"),
        (["--selector", "divprune", "--flops-budget", "0.01"], r"the minimum is 0\.0254 \(tokens = 1\)"),
        (["--image-size", "40x"], r"--image-size wants HEIGHTxWIDTH"),
        (["--selector-ratio", "0.5"], r"--selector-ratio and --selector-tokens need --selector"),
        (
            ["--selector", "fopru-rank", "--method", "fastv"],
            r"give the count of selector fopru-rank \(--selector-ratio\)",
        ),
        (["--selector", "fopru-rank", "--selector-tokens", "3"], r"tokens does not apply to method fopru-rank"),
        (["--device", "cuda:7"], r"--device cuda:7"),
        (
            ["--model", "tiny-llava-next", "--selector", "fopru-row"],
            r"selector fopru-row does not run per tile on llava-next's anyres images: it keeps whole patch-grid rows",
        ),
        (["--method", "pyramiddrop", "--stage-layers", "2,x"], r"--stage-layers wants layer numbers"),
        (["--method", "fastv", "--fastv-layer", "4"], r"fastv layer must be in \[1, 4\)"),
    ],
)
def test_bad_options(tmp_path, args, pattern):
    out = tmp_path / "r.yaml"
    assert_one_line_error(invoke(*fitprune_args(out), *args), pattern)
    assert not out.exists()


def test_a_model_too_big_for_memory_is_refused_before_any_weight_is_read(tmp_path, monkeypatch):
    """llava-1.5-7b in float32 (7.06 B parameters: 28 GB) on a 24 GiB machine: one line naming the
    fix, nothing written, and no weights needed to say so; `auto` calibrates it in bfloat16 instead."""
    from vtpexport import devices

    args = architecture("llava-1.5-7b")
    assert round(devices.weight_bytes(args, torch.float32) / 4e9, 2) == 7.06
    monkeypatch.setattr(devices, "available_bytes", lambda device: 22 << 30)
    out = tmp_path / "r.yaml"
    result = invoke("--model", "llava-1.5-7b", "--flops-budget", "0.45", "--dtype", "float32", "--out", str(out))
    assert_one_line_error(result, r"weights need 28\.3 GB in float32 .* use --dtype bfloat16 \(14\.1 GB\)")
    assert not out.exists()
    assert devices.resolve_dtype("auto", args, torch.device("cpu")) == torch.bfloat16
    assert devices.resolve_dtype("auto", architecture("tiny-llava-1.5"), torch.device("cpu")) == torch.float32
    monkeypatch.setattr(devices, "available_bytes", lambda device: 4 << 30)
    with pytest.raises(UserError, match="use a machine \\(or --device\\) with more memory"):
        devices.resolve_dtype("bfloat16", args, torch.device("cpu"))
