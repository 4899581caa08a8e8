"""ONNX export: unpruned parity with transformers, pruned parity with our eager graph, and the
build / verify / lint commands' behaviour on bad input. Exports are slow-ish (seconds each), so
each one is built once per module."""

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import random_image
from transformers import AutoModelForImageTextToText, AutoProcessor

from vtpexport.cli import main
from vtpexport.export.build import build_onnx
from vtpexport.export.lint import duplicated_weights
from vtpexport.models.loader import load_model
from vtpexport.models.text_encoder import check_recipe_applies
from vtpexport.recipe import ModelRef, Recipe, ScheduleSpec, SelectorSpec
from vtpexport.runtime.eager import greedy_generate, image_embeddings, prepare
from vtpexport.runtime.ort import OrtRunner
from vtpexport.verify import DecodeRun, GraphCheck, ReferenceOutputs, Tolerance, verify_export

QUESTION = "What is in the picture?"


def write_recipe(folder, model_name, name, selector=None, schedule=None):
    args = load_model(model_name).args
    recipe = Recipe(name, ModelRef(args.family, model_name, args.config_hash()), selector, schedule)
    path = folder / f"{name}.yaml"
    recipe.save(path)
    return path


@pytest.mark.parametrize("name", ["tiny-llava-1.5", "tiny-llava-next"])
def test_unpruned_export_generates_like_transformers(exports, name):
    runner = OrtRunner(exports(name))
    image = random_image(60, 90)
    folder = load_model(name).source.folder
    hf = AutoModelForImageTextToText.from_pretrained(folder).eval()
    hf.generation_config.eos_token_id = None
    processor = AutoProcessor.from_pretrained(folder, backend="pil")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    inputs = processor(
        images=[image], text=[processor.apply_chat_template(messages, add_generation_prompt=True)], return_tensors="pt"
    )
    with torch.no_grad():
        reference = hf.generate(**inputs, max_new_tokens=20, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    ours = runner.generate(runner.prepare([image], [QUESTION], 20), 20, stop_token_ids=())[0]
    assert ours == reference.tolist()


@pytest.mark.parametrize("name", ["tiny-llava-1.5", "tiny-llava-next"])
def test_one_export_runs_many_batch_and_prompt_shapes(exports, name):
    runner, model = OrtRunner(exports(name)), load_model(name)
    images = [random_image(60, 90, 1), random_image(64, 64, 2), random_image(60, 90, 3), random_image(30, 30, 4)]
    questions = ["Hi?", "What colour is the large square on the left?", "Count the shapes.", "Is there a red one?"]
    for count in (1, 2, 4):
        batch = prepare(model, images[:count], questions[:count], 12)
        expected = greedy_generate(model, batch, 12, stop_token_ids=())
        assert runner.generate(runner.prepare(images[:count], questions[:count], 12), 12, stop_token_ids=()) == expected


N_TINY = {"tiny-llava-1.5": 36, "tiny-llava-next": 80}
SCHEDULES = {
    "fitprune": lambda n: ScheduleSpec("fitprune", drop=(0, n // 3, n // 4, 0), visual_tokens=n),
    # lambda 0.577: a calibrated value, whose stage counts the exporter once could not bound
    "pyramiddrop": lambda n: ScheduleSpec("pyramiddrop", layers=(1, 2, 3), ratio=0.577),
    "fastv": lambda n: ScheduleSpec("fastv", layer=2, ratio=0.5),
    "dart-llm": lambda n: ScheduleSpec("dart-llm", layer=2, ratio=0.5),
}


@pytest.mark.parametrize("name", ["tiny-llava-1.5", "tiny-llava-next"])
@pytest.mark.parametrize("method", sorted(SCHEDULES))
def test_pruned_export_matches_eager_reference(exports, name, method):
    folder = exports(name, method, schedule=SCHEDULES[method](N_TINY[name]))
    report = verify_export(folder, max_new_tokens=20)
    assert report.generations_identical
    for check in report.graphs.values():
        assert check.max_abs_error <= 1e-4, check
        assert check.top1_agreement in (None, 1.0), check
    assert report.passed


def test_comparator_passes_an_element_within_atol_plus_rtol_of_the_reference():
    """Polygraphy's rule, |ours - reference| <= atol + rtol * |reference|, on hand-made values."""
    reference = np.array([[10.0, -2.0, 0.0]])
    check = GraphCheck("prefill", Tolerance(atol=0.1, rtol=0.01))
    check.add(reference + [[0.15, -0.11, 0.09]], reference, logits=True)  # limits 0.2, 0.12, 0.1
    assert check.passed and check.outside == 0 and check.top1_agreement == 1.0
    check.add(reference + [[0.0, 0.0, 0.15]], reference, logits=True)  # 0.15 passes beside 10, not beside 0
    assert not check.passed and check.outside == 1 and check.max_abs_error == pytest.approx(0.15)
    check = GraphCheck("decode", Tolerance(atol=0.0, rtol=0.0))
    check.add(np.array([[1.0, 3.0]]), np.array([[2.0, 1.0]]), logits=True)  # argmax 1 vs 0
    assert check.outside == 2 and check.top1_agreement == 0.0 and check.max_abs_error == 2.0


def test_default_atol_follows_each_outputs_rms_where_above_one():
    """fp32 rounding grows with the magnitude of what is summed: the vision output of LLaVA-HR at
    real width (RMS 4.8) differs between torch and ONNX Runtime by 1.2e-4 beside an element of
    1.5, within 1e-4 x 4.8 but not within a bare 1e-4."""
    rng = np.random.default_rng(0)
    vision = rng.standard_normal((1, 64, 8)) * 4.8
    logits = rng.standard_normal((2, 10)) * 0.5
    expected = ReferenceOutputs([], [vision], None, [DecodeRun([0, 1], logits, [], [logits * 1.5])], [[], []])
    scales = expected.output_scales()
    assert scales["vision"] == pytest.approx(np.sqrt(np.mean(vision**2)))
    assert scales["prefill"] == 1.0 and scales["decode"] == 1.0  # RMS about 0.5 and 0.75: no scaling below 1
    near_cancellation = vision.copy()
    near_cancellation[0, 0, 0] = 1.5
    ours = near_cancellation.copy()
    ours[0, 0, 0] += 1.2e-4
    scaled = GraphCheck("vision", Tolerance(1e-4 * scales["vision"], 1e-5), scales["vision"])
    scaled.add(ours, near_cancellation, logits=False)
    bare = GraphCheck("vision", Tolerance(1e-4, 1e-5))
    bare.add(ours, near_cancellation, logits=False)
    assert scaled.passed and not bare.passed


SELECTORS = {
    "fopru-rank": SelectorSpec("fopru-rank", ratio=0.25),
    "fopru-row": SelectorSpec("fopru-row", ratio=0.5),
    "prumerge-k8": SelectorSpec("prumerge", tokens=8),
    "prumerge+-k10": SelectorSpec("prumerge+", tokens=10),
    "recover-fixed": SelectorSpec("recover", tokens=6, text_tokens=4, merge_tokens=3),
    "random-k12": SelectorSpec("random", tokens=12),
    "pool-k9": SelectorSpec("pool", tokens=9),
    "divprune-k12": SelectorSpec("divprune", tokens=12),
    "cdpruner-k12": SelectorSpec("cdpruner", tokens=12),
    "dart-k12": SelectorSpec("dart", tokens=12),
}


@pytest.mark.parametrize("selector", sorted(SELECTORS))
def test_selector_export_matches_eager_reference(exports, selector):
    folder = exports("tiny-llava-1.5", selector, selector=SELECTORS[selector])
    report = verify_export(folder, max_new_tokens=20)
    assert report.passed, report
    manifest = json.loads((folder / "manifest.json").read_text())
    planned = SELECTORS[selector].output_tokens(36, 6)
    # min 0: the generation phase of llm.onnx feeds no image.
    assert manifest["dims"]["image_tokens"] == {"min": 0, "opt": planned, "max": planned}
    text_guided = SELECTORS[selector].text_guided
    assert ("text_encoder" in report.graphs) == text_guided == ("text_encoder" in manifest["graphs"])
    if text_guided:
        inputs = [t["name"] for t in manifest["graphs"]["vision"]["inputs"]]
        assert inputs == ["pixel_values", "text_embeds"]
        assert (folder / manifest["text_encoder"]["tokenizer"] / "tokenizer.json").is_file()


@pytest.mark.parametrize("method", ["prumerge+", "recover"])
def test_adaptive_selector_exports_for_onnx_runtime_only(exports, method):
    folder = exports("tiny-llava-1.5", f"{method}-adaptive", selector=SelectorSpec(method))
    report = verify_export(folder, max_new_tokens=10)
    assert report.passed, report
    manifest = json.loads((folder / "manifest.json").read_text())
    assert "tokens" in manifest["onnx_runtime_only"]
    assert manifest["graphs"]["vision"]["inputs"][0]["dims"][0] == 1  # one image per call
    # The count really is computed per image, not frozen at the traced example's.
    runner, model = OrtRunner(folder), load_model("tiny-llava-1.5")
    check_recipe_applies(model, runner.recipe)  # attaches the text encoder recover reads
    counts = []
    for seed in range(6):
        image = random_image(48 + 7 * seed, 90, seed)
        exported = runner.image_embeddings(image, QUESTION)
        reference = image_embeddings(model, image, runner.recipe, QUESTION)
        assert exported.shape == reference.shape
        counts.append(exported.shape[0])
    assert len(set(counts)) > 1, counts
    result = invoke("lint", folder)
    assert result.exit_code == 1 and "vision.onnx" in result.output and "ONNX Runtime only" in result.output
    result = invoke("build", "--from", folder, "--engine", "trt")
    assert_one_line_error(result, "no TensorRT engines")


def test_manifest_describes_stages_and_dimensions(exports):
    folder = exports("tiny-llava-next", "pyramiddrop", schedule=SCHEDULES["pyramiddrop"](80))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["position_policy"] == "renumbered"
    assert manifest["layer_stage"] == [0, 1, 2, 3]
    llm_inputs = {t["name"]: t["dims"] for t in manifest["graphs"]["llm"]["inputs"]}
    assert llm_inputs["past_key_values.2.key"] == ["batch", 2, "past_len_2", 16]
    # Context: past_len_3 = 0, the prompt's stage-3 tokens; generation: image_tokens = 0, one more token.
    # Stage 3 keeps floor(N lambda^3); the minimum with the earlier stages' counts (the same
    # number) is how the graph lets the exporter see that no stage keeps more than it has.
    assert manifest["graphs"]["llm"]["output_dim_expressions"]["present_len_3"] == (
        "prefix_len + suffix_len + past_len_3 + Min(image_tokens, ((577*image_tokens)//1000), "
        "((332929*image_tokens)//1000000), ((192100033*image_tokens)//1000000000))"
    )
    assert manifest["graphs"]["llm"]["profiles"] == ["context", "generation"]
    for ranges in (manifest["dims"], *manifest["profiles"].values()):
        for name, dims in ranges.items():
            assert dims["min"] <= dims["opt"] <= dims["max"], name
    assert manifest["profiles"]["context"]["past_len_3"] == {"min": 0, "opt": 0, "max": 0}
    assert manifest["profiles"]["generation"]["image_tokens"] == {"min": 0, "opt": 0, "max": 0}
    assert set(manifest["files"]) >= {"vision.onnx", "llm.onnx", "recipe.yaml", "config.json"}
    assert duplicated_weights(folder / name for name in ("vision.onnx", "llm.onnx")) == []


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, fragment):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.output


def test_cli_build_run_verify_lint(tmp_path, image_file):
    """The TensorRT 11 attention form (ONNX Attention, opset 23) end to end on ONNX Runtime; every
    other export in the suite writes the TensorRT 10 form."""
    recipe = write_recipe(tmp_path, "tiny-llava-1.5", "fastv-tiny", schedule=SCHEDULES["fastv"](36))
    out = tmp_path / "exported" / "fastv-tiny"
    result = invoke("build", "--recipe", recipe, "--out", out, "--trt-target", "11")
    assert result.exit_code == 0, result.output
    assert "exporting llm.onnx" in result.output and f"wrote {out}" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["opset"], manifest["trt_target"]["major"]) == (23, 11)
    ops = [node.op_type for node in onnx.load(out / "llm.onnx", load_external_data=False).graph.node]
    assert ops.count("Attention") == 4 and "Softmax" in ops  # FastV's one scoring row keeps its fp32 softmax
    result = invoke("run", out, "--image", image_file, "--prompt", "What?", "--max-new-tokens", 5)
    assert result.exit_code == 0, result.output
    eager = invoke(
        "run",
        "--model",
        "tiny-llava-1.5",
        "--recipe",
        recipe,
        "--image",
        image_file,
        "--prompt",
        "What?",
        "--max-new-tokens",
        5,
    )
    assert eager.output == result.output
    result = invoke("verify", out, "--max-new-tokens", 8)
    assert result.exit_code == 0 and "verify passed" in result.output, result.output
    # Per-output tolerances: none at all fails (ONNX Runtime's fp32 is not bit-equal to torch's);
    # a generous one for every output passes; the command line names the outputs it knows.
    exact = invoke("verify", out, "--max-new-tokens", 2, "--atol", 0, "--rtol", 0)
    assert exact.exit_code == 1 and "verify FAILED" in exact.output, exact.output
    loose = invoke("verify", out, "--max-new-tokens", 2, "--atol", 0, "--rtol", 0, "--atol", "vision:1", "--atol",
                   "prefill:1", "--atol", "decode:1")  # fmt: skip
    assert loose.exit_code == 0 and "verify passed" in loose.output, loose.output
    assert_one_line_error(
        invoke("verify", out, "--atol", "logits:1"), "'logits' is not one of text_encoder, vision, prefill, decode"
    )
    assert_one_line_error(invoke("verify", out, "--rtol", "prefill:x"), "give a number")
    result = invoke("lint", out)
    assert result.exit_code == 0 and "2 graphs pass" in result.output, result.output
    assert "llm.onnx: 4 attention layers, 4 fusable" in result.output, result.output

    assert_one_line_error(invoke("build", "--recipe", recipe, "--out", out), "already exists; pass --force")
    assert invoke("build", "--recipe", recipe, "--out", out, "--force").exit_code == 0

    tampered = out / "llm.onnx"
    tampered.write_bytes(tampered.read_bytes() + b"\0")
    result = invoke("verify", out)
    assert result.exit_code == 1 and "llm.onnx (changed)" in result.output, result.output


def test_cli_build_refuses_bad_input(tmp_path):
    recipe = write_recipe(tmp_path, "tiny-llava-1.5", "fastv-tiny", schedule=SCHEDULES["fastv"](36))
    assert_one_line_error(
        invoke("build", "--recipe", recipe, "--model", "tiny-llava-next", "--out", tmp_path / "a"),
        "is for tiny-llava-1.5",
    )
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert_one_line_error(
        invoke("build", "--recipe", recipe, "--out", blocker / "sub" / "x"), "cannot write the export"
    )
    assert_one_line_error(invoke("build", "--recipe", tmp_path / "missing.yaml"), "recipe not found")
    assert_one_line_error(
        invoke("build", "--recipe", recipe, "--trt-target", "11", "--opset", "18", "--out", tmp_path / "a"),
        "needs --opset >= 23",
    )
    assert_one_line_error(invoke("verify", tmp_path), "no manifest.json")
    assert not (tmp_path / "a").exists()


def test_failed_or_interrupted_build_leaves_nothing_that_looks_finished(tmp_path, monkeypatch):
    import vtpexport.export.lint as lint
    import vtpexport.export.onnx_export as onnx_export

    monkeypatch.setattr(lint, "TOPK_MAX_K", 4)  # every selection graph now breaks TensorRT's TopK limit
    recipe = write_recipe(tmp_path, "tiny-llava-1.5", "fastv-tiny", schedule=SCHEDULES["fastv"](36))
    result = invoke("build", "--recipe", recipe, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "lint failed" in result.output and "TopK" in result.output, result.output
    monkeypatch.undo()

    calls = []
    real_export = onnx_export.export_graph

    def interrupted(*args, **kwargs):
        calls.append(args[3])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_export(*args, **kwargs)

    monkeypatch.setattr(onnx_export, "export_graph", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_onnx("tiny-llava-1.5", str(recipe), str(tmp_path / "out"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fastv-tiny.yaml"]


def test_selector_then_schedule_composes_in_export(exports):
    """FoPru keeps 18 of 36 patches, then FitPrune drops from those 18 inside the LLM."""
    schedule = ScheduleSpec("fitprune", drop=(0, 6, 3, 0), visual_tokens=18)
    folder = exports(
        "tiny-llava-1.5", "fopru-fitprune", selector=SelectorSpec("fopru-rank", ratio=0.5), schedule=schedule
    )
    report = verify_export(folder, max_new_tokens=12)
    assert report.passed, report
    manifest = json.loads((folder / "manifest.json").read_text())
    expressions = manifest["graphs"]["llm"]["output_dim_expressions"]
    assert expressions["present_len_1"] == (
        "past_len_1 + prefix_len + suffix_len + Min(image_tokens, image_tokens - ((image_tokens//3)))"
    )
