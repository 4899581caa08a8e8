"""`vtpexport eval`: exports and recipes against the unpruned model, per question type, JSON and plot."""

import json

import matplotlib.image
import pytest
import torch
from click.testing import CliRunner
from conftest import write_labelled_data
from test_cli import assert_one_line_error

from vtpexport.cli import main
from vtpexport.eval import first_token_kl, normalise_answer
from vtpexport.models.loader import architecture
from vtpexport.recipe import ModelRef, Recipe, ScheduleSpec, SelectorSpec


def invoke(*args):
    return CliRunner().invoke(main, ["eval", *map(str, args)], terminal_width=160)


def write_recipe(folder, model_name, name, selector=None, schedule=None):
    args = architecture(model_name)
    path = folder / f"{name}.yaml"
    Recipe(name, ModelRef(args.family, model_name, args.config_hash()), selector, schedule).save(path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_labelled_data(tmp_path_factory.mktemp("labelled"), 5)


def test_normalise_answer():
    assert normalise_answer("  Red.</s>") == "red"
    assert normalise_answer("Blue circle") == "blue"
    assert normalise_answer("3 shapes") == "3"
    assert normalise_answer("?!") == ""


def test_first_token_kl():
    logits = torch.tensor([2.0, 0.5, -1.0])
    assert first_token_kl(logits, logits) == 0.0
    assert first_token_kl(logits, logits + 7.0) == pytest.approx(0.0, abs=1e-12)  # softmax is shift-free
    other = torch.tensor([0.0, 2.0, 0.0])
    p, q = torch.softmax(logits.double(), 0), torch.softmax(other.double(), 0)
    assert first_token_kl(logits, other) == pytest.approx(float((p * (p / q).log()).sum()))


def test_pareto_labels_do_not_overlap_even_for_recipes_on_one_point():
    from vtpexport.viz import _label_offsets, _new_figure, _overlaps

    axes = _new_figure(8, 5.5).add_subplot()
    axes.set_xlim(0, 105)
    axes.set_ylim(0, 105)
    names = ["unpruned", "fastv-s50", "pyramiddrop-s50", "fopru-rank-s50", "fitprune-s50", "prumerge-s11"]
    xy = [(100, 89), (45, 84), (45, 84), (45, 84), (45, 87), (9, 65)]
    leftward = [x > 75 for x, _ in xy]
    offsets = _label_offsets(axes, names, xy, leftward)
    to_points = 72 / axes.figure.dpi
    boxes = []
    for name, (x, y), left, dy in zip(names, xy, leftward, offsets, strict=True):
        px, py = (v * to_points for v in axes.transData.transform((x, y)))
        width = 6 + 4.0 * len(name)
        boxes.append((px - width if left else px, py + dy - 4.5, px if left else px + width, py + dy + 4.5))
    assert not any(_overlaps(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    assert offsets[0] == 0 and offsets[-1] == 0  # lone points keep their label beside them


def test_eval_export_and_recipes(tmp_path, data, exports):
    unpruned_export = exports("tiny-llava-1.5")
    fastv = write_recipe(tmp_path, "tiny-llava-1.5", "fastv", schedule=ScheduleSpec("fastv", layer=2, ratio=0.5))
    fopru = write_recipe(tmp_path, "tiny-llava-1.5", "fopru", selector=SelectorSpec("fopru-rank", ratio=0.25))
    prumerge = write_recipe(tmp_path, "tiny-llava-1.5", "prumerge", selector=SelectorSpec("prumerge"))
    out, plot = tmp_path / "results.json", tmp_path / "pareto.png"
    result = invoke(unpruned_export, fastv, fopru, prumerge, "--data", data, "--out", out, "--plot", plot)
    assert result.exit_code == 0, result.output
    assert "accuracy per question type" in result.output
    report = json.loads(out.read_text())
    assert report["samples"] == 5 and report["labelled"] and report["model"] == "tiny-llava-1.5"
    names = [entry["name"] for entry in report["entries"]]
    assert names == ["unpruned", "tiny-llava-1.5-unpruned", "fastv", "fopru", "prumerge"]
    reference, exported, fastv_entry, fopru_entry, prumerge_entry = report["entries"]
    # The unpruned export answers as the eager unpruned model.
    assert exported["runtime"] == "onnxruntime" and exported["answers"] == reference["answers"]
    assert exported["overall"]["agreement"] == 1.0 and exported["overall"]["first_token_kl"] < 1e-6
    assert reference["overall"]["first_token_kl"] == 0.0
    assert sorted(reference["by_type"]) == ["colour", "count"]
    assert sum(scores["samples"] for scores in reference["by_type"].values()) == 5
    # Compute: FastV keeps round(36 * 0.5) = 18 tokens after layer 2 of 4; FoPru 9 of 36 from the start.
    assert fastv_entry["compute"]["visual_tokens_per_layer_mean"] == pytest.approx((36 + 36 + 18 + 18) / 4)
    assert fopru_entry["compute"]["visual_tokens_entering_llm_mean"] == 9
    assert fopru_entry["compute"]["paper_flops_ratio"] < fastv_entry["compute"]["paper_flops_ratio"] < 1
    assert 0 < fastv_entry["compute"]["exact_prefill_ratio"] < 1
    # Adaptive PruMerge is counted with the tokens it kept on each image.
    assert prumerge_entry["compute"]["paper_flops_ratio"] < 1
    for entry in report["entries"]:
        scores = entry["overall"]
        assert scores["labelled"] == 5 and 0 <= scores["accuracy"] <= 1 and scores["first_token_kl"] >= 0
    assert matplotlib.image.imread(plot).shape[2] in (3, 4)


def test_accuracy_counts_matching_labels(tmp_path, data):
    """Labels equal to the unpruned model's own answers give it 100% accuracy; other labels 0%."""
    fastv = write_recipe(tmp_path, "tiny-llava-1.5", "fastv", schedule=ScheduleSpec("fastv", layer=1, ratio=0.75))
    out = tmp_path / "first.json"
    assert invoke(fastv, "--data", data, "--out", out, "--limit", 3).exit_code == 0
    answers = json.loads(out.read_text())["entries"][0]["answers"]
    rows = [json.loads(line) for line in data.read_text().splitlines()][:3]
    relabelled = data.parent / "relabelled.jsonl"
    relabelled.write_text(
        "".join(
            json.dumps({**row, "image": str(data.parent / row["image"]), "answer": answer + "."}) + "\n"
            for row, answer in zip(rows, answers, strict=True)
        )
    )
    assert invoke(fastv, "--data", relabelled, "--out", out).exit_code == 0
    report = json.loads(out.read_text())
    assert report["entries"][0]["overall"]["accuracy"] == 1.0
    pruned = report["entries"][1]["overall"]
    assert pruned["accuracy"] == pruned["agreement"]


def test_eval_without_labels_reports_agreement(tmp_path, image_file):
    data = tmp_path / "unlabelled.jsonl"
    data.write_text(json.dumps({"image": str(image_file), "question": "What is it?"}) + "\n")
    schedule = ScheduleSpec("pyramiddrop", layers=(1, 2), ratio=0.5)
    recipe = write_recipe(tmp_path, "tiny-llava-next", "pdrop", schedule=schedule)
    out, plot = tmp_path / "r.json", tmp_path / "p.png"
    result = invoke(recipe, "--data", data, "--out", out, "--plot", plot)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert not report["labelled"] and report["model"] == "tiny-llava-next"
    entry = report["entries"][1]
    assert entry["overall"]["accuracy"] is None and entry["by_type"] == {}
    assert entry["compute"]["visual_token_share"] < 1
    assert plot.is_file()


def test_bad_input(tmp_path, image_file):
    next_recipe = write_recipe(tmp_path, "tiny-llava-next", "fastv", schedule=ScheduleSpec("fastv"))
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"image": str(image_file), "question": "What?"}) + "\n")
    no_image = tmp_path / "no_image.jsonl"
    no_image.write_text(json.dumps({"question": "What?"}) + "\n")
    bad_label = tmp_path / "bad_label.jsonl"
    bad_label.write_text(json.dumps({"image": str(image_file), "question": "What?", "answer": 3}) + "\n")
    missing_image = tmp_path / "missing_image.jsonl"
    missing_image.write_text(json.dumps({"image": "gone.png", "question": "What?"}) + "\n")
    cases = [
        ([next_recipe, "--data", no_image], r"no_image\.jsonl:1: .*\(no 'image'\)"),
        ([next_recipe, "--data", bad_label], r"bad_label\.jsonl:1: 'answer' must be a text, got 3"),
        ([next_recipe, "--data", missing_image], r"image not found"),
        (
            [next_recipe, "--data", good, "--model", "tiny-llava-1.5"],
            r"recipe 'fastv' is for tiny-llava-next .* not for tiny-llava-1.5",
        ),
        ([tmp_path / "nothing.yaml", "--data", good], r"nothing\.yaml is neither an export folder nor a recipe"),
        ([tmp_path, "--data", good], r"is not a vtpexport export: no manifest\.json"),
        ([next_recipe, "--data", good, "--out", tmp_path], r"cannot write the results to .*: it is a folder"),
    ]
    for args, pattern in cases:
        assert_one_line_error(invoke(*args), pattern)


def test_export_of_another_model_is_refused(tmp_path, image_file, exports):
    data = tmp_path / "good.jsonl"
    data.write_text(json.dumps({"image": str(image_file), "question": "What?"}) + "\n")
    result = invoke(exports("tiny-llava-1.5"), "--data", data, "--model", "tiny-llava-next")
    assert_one_line_error(result, r"was exported from tiny-llava-1.5 .* not from tiny-llava-next")
