"""Pruning off, our graph equals transformers' model: logits, greedy tokens, batching."""

import shutil

import pytest
import torch
from conftest import random_image
from transformers import AutoModelForImageTextToText, AutoProcessor

from vtpexport.models.builtin import write_builtin
from vtpexport.models.loader import load_model
from vtpexport.runtime.eager import greedy_generate, prefill, prepare

FAMILIES = ["tiny-llava-1.5", "tiny-llava-next"]
# Several aspect ratios, so LLaVA-NeXT goes through different tile grids and unpadding.
IMAGE_SIZES = [(60, 90), (90, 60), (64, 64), (30, 100), (100, 28)]
QUESTION = "What is in the picture?"


@pytest.fixture(scope="module")
def hf_models(tiny_models):
    out = {}
    for name, model in tiny_models.items():
        hf = AutoModelForImageTextToText.from_pretrained(model.source.folder, attn_implementation="eager").eval()
        hf.generation_config.eos_token_id = None  # compare full 20-token runs
        out[name] = (hf, AutoProcessor.from_pretrained(model.source.folder, backend="pil"))
    return out


def hf_inputs(processor, image, question):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(images=[image], text=[text], return_tensors="pt")


def our_logits(model, images, questions):
    batch = prepare(model, images, questions, max_new_tokens=20)
    out = prefill(model, batch)
    return batch, out.logits


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("size", IMAGE_SIZES)
def test_prompt_ids_and_logits_match_transformers(tiny_models, hf_models, name, size):
    model, (hf, processor) = tiny_models[name], hf_models[name]
    image = random_image(*size, seed=sum(size))
    inputs = hf_inputs(processor, image, QUESTION)
    batch, logits = our_logits(model, [image], [QUESTION])
    assert (
        batch.parts[0].expanded(model.args.image_token_id, batch.num_image_tokens[0]) == inputs["input_ids"][0].tolist()
    )
    with torch.no_grad():
        reference = hf(**inputs).logits[0, -1]
    torch.testing.assert_close(logits[0], reference, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_greedy_tokens_match_transformers_generate(tiny_models, hf_models, name):
    model, (hf, processor) = tiny_models[name], hf_models[name]
    image = random_image(60, 90)
    inputs = hf_inputs(processor, image, QUESTION)
    with torch.no_grad():
        reference = hf.generate(**inputs, max_new_tokens=20, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    batch = prepare(model, [image], [QUESTION], max_new_tokens=20)
    ours = greedy_generate(model, batch, 20, stop_token_ids=())[0]
    assert len(ours) == 20
    assert ours == reference.tolist()


@pytest.mark.parametrize("name", FAMILIES)
def test_batch_of_three_equals_each_alone(tiny_models, name):
    model = tiny_models[name]
    # Different prompt lengths and (for LLaVA-NeXT) different image token counts.
    images = [random_image(60, 90, 1), random_image(30, 100, 2), random_image(64, 64, 3)]
    questions = ["Hi?", "What colour is the large square on the left?", "Count the shapes."]
    batch, logits = our_logits(model, images, questions)
    generated = greedy_generate(model, batch, 20, stop_token_ids=())
    for i, (image, question) in enumerate(zip(images, questions, strict=True)):
        alone, alone_logits = our_logits(model, [image], [question])
        torch.testing.assert_close(logits[i], alone_logits[0], atol=1e-5, rtol=0)
        assert generated[i] == greedy_generate(model, alone, 20, stop_token_ids=())[0]
    if name == "tiny-llava-next":
        assert len(set(batch.num_image_tokens)) == 3


def _reference_logits(folder, image):
    hf = AutoModelForImageTextToText.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        return hf(**hf_inputs(AutoProcessor.from_pretrained(folder, backend="pil"), image, QUESTION)).logits[0, -1]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("layout", ["sharded-safetensors", "transformers-save", "pytorch-bin"])
def test_saved_and_reloaded_checkpoint_keeps_parity(tmp_path, name, layout):
    folder = tmp_path / "hub"
    write_builtin(name, folder, seed=7, max_shard_bytes=200_000 if layout == "sharded-safetensors" else None)
    if layout == "sharded-safetensors":
        assert len(list(folder.glob("model-*-of-*.safetensors"))) > 1
    if layout == "transformers-save":  # re-saved by transformers itself, in its own layout
        resaved = tmp_path / "resaved"
        AutoModelForImageTextToText.from_pretrained(folder).save_pretrained(resaved)
        for extra in folder.iterdir():
            if not extra.name.startswith(("model", "config")):
                shutil.copy(extra, resaved / extra.name)
        folder = resaved
    if layout == "pytorch-bin":
        from safetensors.torch import load_file

        torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    image = random_image(70, 40, 5)
    model = load_model(str(folder))
    _, logits = our_logits(model, [image], [QUESTION])
    torch.testing.assert_close(logits[0], _reference_logits(folder, image), atol=1e-4, rtol=0)
