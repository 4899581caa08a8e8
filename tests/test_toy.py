"""The toy task and the trained built-in `toy` model."""

import json
import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from vtpexport.models.builtin import SHIPPED_MODELS
from vtpexport.models.loader import load_model, resolve_model
from vtpexport.runtime.eager import greedy_generate, prefill, prepare
from vtpexport.zoo import toy_data
from vtpexport.zoo.train_toy import (
    EVAL_SEED,
    TrainSettings,
    build_model,
    hidden_image_tokens,
    image_embeddings,
    pack,
    packed_logits,
    questions_about,
    train,
)

# Small enough to train in seconds; the shipped model uses the defaults.
TINY = replace(
    TrainSettings(),
    vision_width=16,
    text_width=32,
    text_layers=2,
    vision_batch=2,
    vision_steps=3,
    images_per_batch=2,
    text_steps=3,
    refine_steps=2,
    warmup_steps=2,
    threads=1,
)


def test_samples_are_reproducible_from_the_seed():
    first, again, other = toy_data.samples(7, 24), toy_data.samples(7, 24), toy_data.samples(8, 24)
    assert first == again
    assert first != other
    assert {q.type for _, q in first} == set(toy_data.QUESTION_TYPES)


def test_objects_fill_their_patch_cells_and_leave_the_rest_background():
    scene, _ = toy_data.samples(3, 1)[0]
    pixels = np.asarray(toy_data.render(scene)).reshape(toy_data.GRID, toy_data.CELL, toy_data.GRID, toy_data.CELL, 3)
    touched = (pixels != toy_data.BACKGROUND).any(axis=(1, 3, 4))  # [row, column] cells with any object pixel
    expected = np.zeros_like(touched)
    for obj in scene:
        expected[obj.row, obj.column] = True
    assert (touched == expected).all()


def test_answers_follow_the_scene():
    scene = [
        toy_data.ToyObject("red", "circle", "big", 0, 0),
        toy_data.ToyObject("blue", "circle", "small", 11, 11),
        toy_data.ToyObject("red", "square", "small", 5, 6),
    ]
    rng = random.Random(0)
    by_type = {q.type: q for q in questions_about(rng, scene)}
    assert by_type["total"].answer == "3"
    assert by_type["colour"] == toy_data.Question("What colour is the square?", "red", "colour")
    assert by_type["shape"] == toy_data.Question("What shape is the blue object?", "circle", "shape")
    count = by_type["count"]
    word = count.text.split()[2]
    assert count.answer == str(sum(word in (o.colour, o.shape + "s") for o in scene))


def test_extra_questions_follow_one_of_each_type():
    scene = [toy_data.ToyObject("red", "circle", "big", 0, 0), toy_data.ToyObject("blue", "cross", "small", 7, 3)]
    once = questions_about(random.Random(0), scene)
    more = questions_about(random.Random(0), scene, extra=(("position", 2), ("size", 1)))
    assert more[: len(once)] == once
    assert [q.type for q in more[len(once) :]] == ["position", "position", "size"]


def test_every_question_word_is_in_the_vocabulary():
    _, kit = build_model(TINY)
    for _, question in toy_data.samples(11, 400):
        prefix, suffix = kit.prompt(question.text)
        assert kit.tokenizer.unk_token_id not in prefix + suffix, question.text
        assert kit.answer_id(question.answer) != kit.tokenizer.unk_token_id


def test_written_dataset_has_the_eval_format(tmp_path):
    out = toy_data.write_dataset(tmp_path / "held_out", 10, seed=5)
    rows = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
    assert len(rows) == 10
    assert set(rows[0]) == {"image", "question", "answer", "type"}
    assert all((out / r["image"]).is_file() and len(r["answer"].split()) == 1 for r in rows)
    assert [r["question"] for r in rows] == [q.text for _, q in toy_data.samples(5, 10)]


def test_training_pixels_equal_the_image_processor(tmp_path):
    _, kit = build_model(TINY)
    scenes = [scene for scene, _ in toy_data.samples(2, 3)]
    reference = kit.processor.image_processor(images=[toy_data.render(s) for s in scenes], return_tensors="pt")
    torch.testing.assert_close(kit.pixels(scenes), reference["pixel_values"], atol=1e-5, rtol=0)


def test_packed_training_prompts_equal_the_runtime_prompt_alone(tmp_path):
    """Several questions packed after one image give each the logits of its own runtime prompt."""
    from vtpexport.models.builtin import save_model

    graph, kit = build_model(TINY)
    save_model(graph, kit.config, kit.tokenizer, tmp_path / "model")
    loaded = load_model(str(tmp_path / "model"))
    scene, _ = toy_data.samples(4, 1)[0]
    questions = questions_about(random.Random(1), scene)
    batch = pack(kit, [scene], [questions], graph.args.vision.num_patches)
    with torch.no_grad():
        logits = packed_logits(graph.eval(), batch, image_embeddings(graph, kit, [scene]))[0]
    ends = [i for i in range(batch.targets.shape[1]) if batch.targets[0, i] != -100][::2]
    assert len(ends) == len(questions)
    image = toy_data.render(scene)
    for question, at in zip(questions, ends, strict=True):
        alone = prefill(loaded, prepare(loaded, [image], [question.text], max_new_tokens=2)).logits[0]
        torch.testing.assert_close(logits[at], alone, atol=1e-4, rtol=0)


def test_thinning_hides_background_and_whole_images_only():
    scenes = [scene for scene, _ in toy_data.samples(6, 64)]
    settings = replace(TINY, text_layers=4, background_drop=0.8, background_drop_max=0.9, image_cutoff=0.5)
    hidden_from = hidden_image_tokens(random.Random(0), scenes, settings, num_layers=4)
    thinned = cut = 0
    for scene, row in zip(scenes, hidden_from.tolist(), strict=True):
        objects = [obj.row * toy_data.GRID + obj.column for obj in scene]
        cutoff = min(row[cell] for cell in objects)  # objects only vanish with the whole image
        assert all(row[cell] == cutoff for cell in objects)
        assert all(layer <= cutoff for layer in row)
        assert cutoff == 4 or cutoff >= settings.image_cutoff_from
        cut += cutoff < 4
        hidden = sum(layer < cutoff for layer in row)
        assert hidden <= round(0.9 * (len(row) - len(objects)))
        thinned += hidden > 0
    assert 0 < cut < len(scenes) and 0 < thinned < len(scenes)


def test_hiding_a_token_from_a_layer_on_is_the_runtime_fitprune_drop_before_it(tmp_path):
    """Training's hidden tokens are what FitPrune's drop at the layer before leaves: the same logits."""
    from vtpexport.models.builtin import save_model
    from vtpexport.recipe import ScheduleSpec

    graph, kit = build_model(TINY)
    save_model(graph, kit.config, kit.tokenizer, tmp_path / "model")
    loaded = load_model(str(tmp_path / "model"))
    scene, question = toy_data.samples(4, 1)[0]
    n = graph.args.vision.num_patches
    dropped = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:50]
    hidden_from = torch.full((1, n), TINY.text_layers)
    hidden_from[0, dropped] = 1
    batch = pack(kit, [scene], [[question]], n, hidden_from)
    with torch.no_grad():
        logits = packed_logits(graph.eval(), batch, image_embeddings(graph, kit, [scene]))[0]
    at = int((batch.targets[0] != -100).long().argmax())
    kept = torch.tensor([i for i in range(n) if i not in set(dropped.tolist())])[None]
    schedule = ScheduleSpec("fitprune", drop=(50, 0), visual_tokens=n)
    prompt = prepare(loaded, [toy_data.render(scene)], [question.text], max_new_tokens=2)
    with torch.no_grad():
        pruned = loaded.graph.prefill(*prompt.prompt_tensors(), schedule, {0: kept}).logits[0]
    torch.testing.assert_close(logits[at], pruned, atol=1e-4, rtol=0)


def test_training_twice_from_one_seed_gives_the_same_weights():
    first, _ = train(TINY, log=lambda _: None)
    second, _ = train(TINY, log=lambda _: None)
    other, _ = train(replace(TINY, seed=1), log=lambda _: None)
    a, b, c = first.state_dict(), second.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.fixture(scope="module")
def toy():
    return load_model("toy")


def test_toy_is_a_shipped_builtin_in_the_hugging_face_layout(toy):
    source = resolve_model("toy")
    assert source.kind == "builtin" and source.folder == SHIPPED_MODELS["toy"]
    assert toy.args.vision.num_patches >= 144 and toy.args.vision_feature_layer == -2
    weights = sum(p.stat().st_size for p in source.folder.glob("*.safetensors"))
    assert weights <= 25 * 2**20


def test_toy_answers_held_out_questions(toy):
    """The issue's bar, 85% held-out accuracy, on the first 100 held-out questions."""
    held_out = toy_data.samples(EVAL_SEED, 100)
    images = [toy_data.render(scene) for scene, _ in held_out]
    batch = prepare(toy, images, [q.text for _, q in held_out], max_new_tokens=3)
    answers = [toy.tokenizer.decode(t, skip_special_tokens=True).strip() for t in greedy_generate(toy, batch, 3)]
    right = sum(a == q.answer for a, (_, q) in zip(answers, held_out, strict=True))
    assert right >= 85, list(zip(answers, [q.answer for _, q in held_out], strict=True))


def test_the_deep_toy_never_saw_a_hidden_token_and_reads_the_image():
    """`toy-deep`: 12 decoder layers (so FastV and PyramidDrop reach ~11% of the tokens), trained
    without hiding tokens; on 100 held-out questions it beats its blind baseline's 37.5%."""
    source = resolve_model("toy-deep")
    report = json.loads((source.folder / "training_report.json").read_text())
    assert source.kind == "builtin" and source.folder == SHIPPED_MODELS["toy-deep"]
    assert report["settings"]["background_drop"] == 0 and report["settings"]["image_cutoff"] == 0
    deep = load_model("toy-deep")
    assert deep.args.text.num_layers == 12
    held_out = toy_data.samples(EVAL_SEED, 100)
    images = [toy_data.render(scene) for scene, _ in held_out]
    batch = prepare(deep, images, [q.text for _, q in held_out], max_new_tokens=3)
    answers = [deep.tokenizer.decode(t, skip_special_tokens=True).strip() for t in greedy_generate(deep, batch, 3)]
    right = sum(a == q.answer for a, (_, q) in zip(answers, held_out, strict=True))
    assert right >= 50 > 100 * report["blind_accuracy"]["overall"], right


def test_toy_logits_match_transformers(toy):
    hf = AutoModelForImageTextToText.from_pretrained(toy.source.folder).eval()
    processor = AutoProcessor.from_pretrained(toy.source.folder, backend="pil")
    scene, question = toy_data.samples(EVAL_SEED, 1)[0]
    image = toy_data.render(scene)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question.text}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    batch = prepare(toy, [image], [question.text], max_new_tokens=2)
    with torch.no_grad():
        reference = hf(**inputs).logits[0, -1]
    torch.testing.assert_close(prefill(toy, batch).logits[0], reference, atol=1e-4, rtol=0)


def test_resuming_before_the_refine_stage_gives_the_weights_of_one_run(tmp_path):
    from vtpexport.models.builtin import save_model

    before_refine, kit = train(replace(TINY, refine_steps=0), log=lambda _: None)
    save_model(before_refine, kit.config, kit.tokenizer, tmp_path / "stage2")
    resumed, _ = train(TINY, log=lambda _: None, resume_from=tmp_path / "stage2")
    whole, _ = train(TINY, log=lambda _: None)
    a, b = resumed.state_dict(), whole.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_toy_data_writes_refuses_and_replaces(tmp_path):
    from click.testing import CliRunner

    from vtpexport.cli import main

    out = tmp_path / "held-out"
    args = ["toy-data", "--out", str(out), "--count", "3", "--seed", "5"]
    assert CliRunner().invoke(main, args).exit_code == 0
    rows = (out / "data.jsonl").read_text().splitlines()
    assert len(rows) == 3 and all((out / json.loads(r)["image"]).is_file() for r in rows)
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 2 and refused.output.startswith("error: ") and "--force" in refused.output
    assert CliRunner().invoke(main, [*args, "--force"]).exit_code == 0
    assert (out / "data.jsonl").read_text().splitlines() == rows
