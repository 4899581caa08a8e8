"""The in-LLM schedules' kept tokens recomputed from transformers' own eager attention
(`output_attentions=True`), an oracle outside our graph: until a schedule's first drop nothing is
pruned, so the layer it scores with is the unpruned model's, which transformers computes itself.

Each oracle is written from the method's paper:
- FastV: after layer K, keep the image tokens that layer K-1's last query attends to most, by
  the mean over heads; R of them are dropped (round(n (1 - R)) kept).
- PyramidDrop: before layer l_1, keep the floor(n lambda) image tokens the last instruction token
  attends to most at layer l_1, by the mean over heads of its softmax over every key.
- FitPrune: at the layer of its first drop, a token's score is the text queries' summed
  head-max attention to it times the image queries' mean head-max attention to it.
"""

import pytest
import torch
from conftest import random_image
from test_parity import QUESTION, hf_inputs, hf_models  # noqa: F401 (hf_models: a fixture)

from vtpexport.recipe import ModelRef, Recipe, ScheduleSpec
from vtpexport.runtime.eager import prefill, prepare

FAMILIES = ["tiny-llava-1.5", "tiny-llava-next"]
IMAGES = [(60, 90), (64, 64), (90, 60)]


def attentions_and_image_range(hf, processor, model, image):
    inputs = hf_inputs(processor, image, QUESTION)
    with torch.no_grad():
        attentions = hf(**inputs, output_attentions=True).attentions  # per layer [1, H, S, S]
    positions = (inputs["input_ids"][0] == model.args.image_token_id).nonzero().flatten()
    start, n = positions[0].item(), len(positions)
    assert positions.tolist() == list(range(start, start + n))
    return attentions, start, n


def our_kept(model, image, schedule: ScheduleSpec) -> dict[int, list[int]]:
    args = model.args
    recipe = Recipe("oracle", ModelRef(args.family, model.source.name, args.config_hash()), schedule=schedule)
    out = prefill(model, prepare(model, [image], [QUESTION], 1, recipe), schedule)
    return {layer: ids[0].tolist() for layer, ids in sorted(out.kept_ids.items())}


def top(scores: torch.Tensor, k: int) -> list[int]:
    return sorted(torch.topk(scores, k).indices.tolist())


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("size", IMAGES)
def test_fastv_keeps_what_transformers_last_query_attends_to(tiny_models, hf_models, name, size):  # noqa: F811
    model, (hf, processor) = tiny_models[name], hf_models[name]
    image = random_image(*size, seed=sum(size))
    attentions, start, n = attentions_and_image_range(hf, processor, model, image)
    layer, r = 2, 0.5
    scores = attentions[layer - 1][0, :, -1, start : start + n].mean(dim=0)
    (kept,) = our_kept(model, image, ScheduleSpec("fastv", layer=layer, ratio=r)).values()
    assert len(kept) == int(n * (1 - r) + 0.5)
    assert kept == top(scores, len(kept))


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("size", IMAGES)
def test_pyramiddrop_first_stage_keeps_what_transformers_last_query_attends_to(
    tiny_models,
    hf_models,  # noqa: F811
    name,
    size,
):
    model, (hf, processor) = tiny_models[name], hf_models[name]
    image = random_image(*size, seed=sum(size))
    attentions, start, n = attentions_and_image_range(hf, processor, model, image)
    first, ratio = 1, 0.5
    scores = attentions[first][0, :, -1, start : start + n].mean(dim=0)
    kept = our_kept(model, image, ScheduleSpec("pyramiddrop", layers=(first, 3), ratio=ratio))
    assert len(kept[min(kept)]) == n // 2
    assert kept[min(kept)] == top(scores, n // 2)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("size", IMAGES)
def test_fitprune_first_drop_keeps_what_transformers_attention_scores_highest(
    tiny_models,
    hf_models,  # noqa: F811
    name,
    size,
):
    model, (hf, processor) = tiny_models[name], hf_models[name]
    image = random_image(*size, seed=sum(size))
    attentions, start, n = attentions_and_image_range(hf, processor, model, image)
    num_layers, layer = model.args.text.num_layers, 1
    drop = [0] * num_layers
    drop[layer] = n // 3
    probs = attentions[layer][0].max(dim=0).values  # [S, S], head-max
    image_rows, text_rows = probs[start : start + n], probs[start + n :]
    scores = text_rows[:, start : start + n].sum(dim=0) * image_rows[:, start : start + n].mean(dim=0)
    kept = our_kept(model, image, ScheduleSpec("fitprune", drop=tuple(drop), visual_tokens=n))
    assert len(kept[layer]) == n - n // 3
    assert kept[layer] == top(scores, n - n // 3)
