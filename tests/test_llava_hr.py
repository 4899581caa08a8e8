"""LLaVA-HR: the original-LLaVA checkpoint layout, the real architectures' geometry, the
vision stage against independent implementations, and calibrate -> build -> verify."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from conftest import random_image
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import CLIPImageProcessorPil
from transformers.image_utils import OPENAI_CLIP_MEAN

from vtpexport.cli import main
from vtpexport.errors import UserError
from vtpexport.flops import paper_flops
from vtpexport.graph.llava import LlavaGraph
from vtpexport.models.builtin import write_builtin
from vtpexport.models.loader import architecture, load_model, meta_graph
from vtpexport.models.prompt import split_prompt
from vtpexport.recipe import ModelRef, Recipe, SelectorSpec
from vtpexport.runtime.eager import image_embeddings
from vtpexport.viz import token_layout


@pytest.fixture(scope="module")
def tiny_hr_folder(tmp_path_factory):
    """A tiny LLaVA-HR saved in the original layout, outside the built-in cache."""
    return write_builtin("tiny-llava-hr", tmp_path_factory.mktemp("llava-hr") / "tiny", seed=3)


@pytest.fixture(scope="module")
def tiny_hr(tiny_hr_folder):
    return load_model("llava-hr", weights=str(tiny_hr_folder))


def test_saved_in_the_original_llava_layout(tiny_hr_folder):
    config = json.loads((tiny_hr_folder / "config.json").read_text())
    assert config["model_type"] == "llava" and config["is_multipath_encoder"] is True
    assert {"mm_vision_tower", "vision_tower_slow", "input_image_size", "freeze_vision"} <= set(config)
    names = set(load_file(tiny_hr_folder / "model.safetensors"))
    clip = "model.vision_tower.fast_vision_tower.vision_tower.vision_model."
    convnext = "model.vision_tower.slow_vision_tower.vision_tower."
    assert {
        clip + "embeddings.position_embedding.weight",
        clip + "encoder.layers.3.mlp.fc2.weight",
        clip + "pre_layrnorm.weight",
        convnext + "stem.0.weight",
        convnext + "stem.1.weight",
        convnext + "stages.1.downsample.1.weight",
        convnext + "stages.2.blocks.1.conv_dw.weight",
        convnext + "stages.2.blocks.1.weight",  # the layer scale, as LLaVA-HR's ConvNeXt names it
        "model.vision_tower.align_stages_latent.2.gate.2.weight",
        "model.vision_tower.align_stages.0.slow_proj.weight",
        "model.mm_projector.0.weight",
        "model.mm_projector.2.bias",
        "model.layers.0.self_attn.q_proj.weight",
        "lm_head.weight",
    } <= names
    assert not any("gamma" in n or n.startswith(("vision.", "decoder.")) for n in names)
    tokenizer = json.loads((tiny_hr_folder / "tokenizer.json").read_text())
    assert "<image>" not in tokenizer["model"]["vocab"]  # original LLaVA: no image token


def test_loads_through_the_alias_and_ignores_the_convnext_head(tiny_hr_folder, tmp_path):
    reference = LlavaGraph(architecture("llava-hr", str(tiny_hr_folder)))
    from vtpexport.models.builtin import init_weights

    init_weights(reference, seed=3)
    # Real checkpoints carry timm's unused classifier head; the loader must skip it.
    state = load_file(tiny_hr_folder / "model.safetensors")
    state["model.vision_tower.slow_vision_tower.vision_tower.head.fc.weight"] = torch.zeros(2, 40)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((tiny_hr_folder / name).read_bytes())
    save_file(state, str(tmp_path / "model.safetensors"))
    model = load_model("llava-hr", weights=str(tmp_path))
    assert model.args.family == "llava-hr" and model.args.image_token_id is None
    loaded = dict(model.graph.named_parameters())
    for name, param in reference.named_parameters():
        assert torch.equal(loaded[name], param), name
    assert torch.equal(model.graph.vision.patch_positions, reference.vision.patch_positions)
    del state["model.mm_projector.0.weight"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(UserError, match="model.mm_projector.0.weight"):
        load_model("llava-hr", weights=str(tmp_path))


def test_position_table_is_resampled_with_antialiased_bicubic(tiny_hr):
    vision = tiny_hr.graph.vision
    table = vision.fast.position_embedding.weight[1:].detach()  # 4x4 (+ CLS, unused)
    square = table.reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(square, size=(6, 6), mode="bicubic", antialias=True)
    plain = F.interpolate(square, size=(6, 6), mode="bicubic")
    assert torch.allclose(vision.patch_positions, expected.permute(0, 2, 3, 1).reshape(36, -1))
    assert not torch.allclose(vision.patch_positions, plain.permute(0, 2, 3, 1).reshape(36, -1), atol=1e-3)


def test_prompt_is_split_at_the_text_marker_as_original_llava(tiny_hr):
    tokenizer = tiny_hr.tokenizer
    parts = split_prompt(tokenizer, "USER: <image>\nWhat? ASSISTANT:", None)
    assert parts.prefix_ids == tokenizer("USER: ")["input_ids"]
    # tokenizer_image_token: every chunk tokenized alone, later chunks without their BOS.
    assert parts.suffix_ids == tokenizer("\nWhat? ASSISTANT:")["input_ids"][1:]
    assert parts.prefix_ids[0] == tokenizer.bos_token_id and tokenizer.bos_token_id not in parts.suffix_ids


def test_real_architectures_feed_1024_visual_tokens_at_1024_px():
    for name, slow_width in (("llava-hr-7b", 1536), ("llava-hr-x-13b", 3072)):
        args = architecture(name)
        assert (args.input_image_size, args.vision.image_size, args.vision.num_patches) == (1024, 448, 1024)
        assert args.multipath.slow.dims[-1] == slow_width and args.multipath.adapter_layers == (5, 11, 17)
    args = architecture("llava-hr-7b")
    graph = meta_graph(args)
    with torch.device("meta"):
        image_embeds = graph.tile_features(torch.empty(1, 3, 1024, 1024))
        assert image_embeds.shape == (1, 1024, 4096)
        ids, mask = torch.ones(1, 5, dtype=torch.long), torch.ones(1, 5, dtype=torch.long)
        out = graph.prefill(ids, image_embeds, ids, mask, torch.ones(1, 1024, dtype=torch.long), mask)
    assert out.caches[0].key.shape == (1, 32, 5 + 1024 + 5, 128)


def test_cls_selectors_are_refused_and_fopru_runs(tiny_hr):
    args = tiny_hr.args
    ref = ModelRef(args.family, "llava-hr", args.config_hash())
    for method in ("prumerge", "prumerge+", "recover"):
        with pytest.raises(
            UserError, match="CLS token.*use dart / divprune / fopru-rank / fopru-row / pool / random or an in-LLM sch"
        ):
            Recipe("r", ref, SelectorSpec(method, tokens=8 if method == "prumerge" else None)).check_model(
                args, "llava-hr"
            )
    recipe = Recipe("r", ref, SelectorSpec("fopru-rank", ratio=0.5))
    recipe.check_model(args, "llava-hr")
    embeds = image_embeddings(tiny_hr, random_image(50, 70), recipe)
    assert embeds.shape == (18, args.text.hidden_size)


def _expand2square(image: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    """Original LLaVA's pad for image_aspect_ratio "pad", from its definition: the image centred
    on a square of its longer side, the rest filled with `colour` (offsets rounded down)."""
    width, height = image.size
    square = Image.new("RGB", (max(width, height),) * 2, colour)
    square.paste(image, ((max(width, height) - width) // 2, (max(width, height) - height) // 2))
    return square


@pytest.mark.parametrize("width, height", [(37, 20), (20, 37), (51, 50), (101, 7), (33, 33)])
def test_preprocessing_pads_to_a_square_of_the_mean_colour(tiny_hr, width, height):
    """The processor LLaVA-HR loads with against expand2square with CLIP's mean colour, then a plain
    CLIP processor (resize, crop, normalise) at the model's input size."""
    size = tiny_hr.args.input_image_size
    image = random_image(height, width, seed=width)
    mean_colour = tuple(int(x * 255) for x in OPENAI_CLIP_MEAN)  # (122, 116, 104), as LLaVA's train/eval code
    clip = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    expected = clip(images=[_expand2square(image, mean_colour)], return_tensors="pt")["pixel_values"]
    ours = tiny_hr.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    if max(width, height) > 1.5 * min(
        width, height
    ):  # the padded corners: the mean colour rounded down to bytes, normalised to about zero
        assert ours[0, :, 0, 0].abs().max() < 0.015 and ours[0, :, -1, -1].abs().max() < 0.015


def test_viz_grid_spans_the_padded_square(tiny_hr):
    """120 x 80 pads to 120 x 120: the ViT grid's cells are 120 / grid wide and start 20 px above the image."""
    grid = tiny_hr.args.vision.grid_size
    layout = token_layout(tiny_hr.args, tiny_hr.image_processor, 120, 80)
    assert len(layout.boxes) == grid * grid
    assert layout.boxes[0] == (0, 0.0, -20.0, 120 / grid, -20 + 120 / grid)
    assert layout.boxes[-1][3:] == (120.0, 100.0)


def test_convnext_matches_timm(tiny_hr):
    try:
        from timm.models.convnext import ConvNeXt
    except Exception as error:  # timm needs torchvision, whose wheels may not load next to a CPU torch
        pytest.skip(f"timm is not importable here ({type(error).__name__}: {error})")
    c = tiny_hr.args.multipath.slow
    timm_convnext = ConvNeXt(depths=c.depths, dims=c.dims, num_classes=0).eval()
    ours = tiny_hr.graph.vision.slow
    missing, unexpected = timm_convnext.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all(name.startswith("head.") for name in missing)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels), timm_convnext.forward_features(pixels), rtol=1e-5, atol=1e-5)


def test_fast_path_matches_transformers_clip_run_the_same_way(tiny_hr):
    """The fast path alone (adapters off, fusion set to pass the ViT tokens through) against
    transformers' CLIPVisionModel with our weights: pixels resized to 48 (bilinear,
    align_corners=True), embeddings with the resampled positions, CLS dropped, every layer."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    graph = tiny_hr.graph
    vision = graph.vision
    clip_config = CLIPVisionConfig(
        **json.loads((tiny_hr.source.folder / "config.json").read_text())["fast_vision_config"]
    )
    clip = CLIPVisionModel(clip_config).eval()
    missing, unexpected = clip.load_state_dict(dict(_transformers_clip_state(vision)), strict=False)
    assert not unexpected and missing == ["embeddings.position_ids"] * len(missing)
    pixels = torch.randn(1, 3, 192, 192, generator=torch.Generator().manual_seed(1))
    adapters, fusion = vision.adapter_layers, vision.fusion.state_dict()
    try:
        vision.adapter_layers = ()
        with torch.no_grad():
            vision.fusion.fast_proj.weight.copy_(torch.eye(32))
            vision.fusion.fast_proj.bias.zero_()
            vision.fusion.slow_proj.weight.zero_()
            vision.fusion.slow_proj.bias.zero_()
            ours = vision(pixels, feature_layer=3).features
    finally:
        vision.adapter_layers = adapters
        vision.fusion.load_state_dict(fusion)
    with torch.no_grad():
        small = F.interpolate(pixels, size=(48, 48), mode="bilinear", align_corners=True)
        embeddings = clip.embeddings
        patches = embeddings.patch_embedding(small).flatten(2).transpose(1, 2)
        table = embeddings.position_embedding.weight[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
        positions = F.interpolate(table, size=(6, 6), mode="bicubic", antialias=True).flatten(2).transpose(1, 2)
        hidden = clip.pre_layrnorm(patches + positions)
        theirs = clip.encoder(inputs_embeds=hidden).last_hidden_state
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def _mr_adapter_by_the_paper(weights: dict, fast: torch.Tensor, slow_map: torch.Tensor) -> torch.Tensor:
    """The MR-adapter as Luo et al. describe it (Feast Your Eyes, sec. 4.2), in plain tensor ops:
    F'_vl = F_vl + f_l(F_vl) + g * f_h(F_vh), with f_l a depthwise 7x7 conv -> GELU -> 1x1 conv on
    the ViT tokens laid out as their grid, f_h a 1x1 conv -> GELU -> 1x1 conv on the ConvNeXt map,
    and the gate g = tanh(W2 GELU(W1 [mean over tokens of both paths])). Where the released code
    (which the checkpoints were trained with) is more precise than the paper, it is followed: the
    gate pools F_vl + f_l(F_vl), not f_l(F_vl) alone."""
    b, n, d = fast.shape
    side = math.isqrt(n)
    grid = fast.permute(0, 2, 1).reshape(b, d, side, side)  # token i sits at row i // side, column i % side

    def pointwise(x, name):  # a 1x1 convolution is a per-pixel linear map over channels
        w = weights[name + ".weight"][:, :, 0, 0]
        return torch.einsum("oc,bchw->bohw", w, x) + weights[name + ".bias"][None, :, None, None]

    low = F.conv2d(grid, weights["fast_conv.weight"], weights["fast_conv.bias"], padding=3, groups=d)
    low = grid + pointwise(F.gelu(low), "fast_proj")
    high = pointwise(F.gelu(pointwise(slow_map, "slow_conv")), "slow_proj")
    pooled = torch.cat([low.mean(dim=(2, 3)), high.mean(dim=(2, 3))], dim=-1)  # [B, 2D]
    hidden = F.gelu(pooled @ weights["gate.0.weight"].T + weights["gate.0.bias"])
    g = torch.tanh(hidden @ weights["gate.2.weight"].T + weights["gate.2.bias"])  # [B, 1]
    mixed = low + g[:, :, None, None] * high
    return mixed.flatten(2).permute(0, 2, 1)


def test_mr_adapters_and_fusion_match_the_papers_description(tiny_hr):
    """LLaVA-HR's vision stage recomputed from the loaded weights: our ViT layers (checked against
    transformers above) and ConvNeXt (against timm), with an MR-adapter after each of the first
    three quarters of the ViT and the final fusion (Linear(ViT tokens) + Linear(ConvNeXt tokens))
    written from the paper."""
    vision = tiny_hr.graph.vision
    layers = len(vision.fast.layers)
    pixels = torch.randn(2, 3, 192, 192, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = vision(pixels, feature_layer=layers - 1).features
        slow_map = vision.slow(pixels)
        small = F.interpolate(pixels, size=(vision.fast_size,) * 2, mode="bilinear", align_corners=True)
        x = vision.fast.patch_embedding(small).flatten(2).transpose(1, 2)
        x = vision.fast.pre_layrnorm(x + vision.patch_positions)
        unadapted = x
        adapters = iter(vision.adapters)
        for index, layer in enumerate(vision.fast.layers):
            x, unadapted = layer(x)[0], layer(unadapted)[0]
            if (index + 1) % (layers // 4) == 0 and index + 1 < layers:  # after the 1st, 2nd and 3rd quarter
                x = _mr_adapter_by_the_paper(next(adapters).state_dict(), x, slow_map)
        fusion = vision.fusion.state_dict()
        slow_tokens = slow_map.flatten(2).permute(0, 2, 1)

        def fused(fast):
            slow = F.linear(slow_tokens, fusion["slow_proj.weight"], fusion["slow_proj.bias"])
            return F.linear(fast, fusion["fast_proj.weight"], fusion["fast_proj.bias"]) + slow

        expected, without_adapters = fused(x), fused(unadapted)
    assert next(adapters, None) is None  # as many adapters as the paper places
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    assert (ours - without_adapters).abs().max() > 0.1  # the adapters change the features: the check can fail


def _transformers_clip_state(vision):
    """Our fast CLIP's weights under CLIPVisionTransformer's names."""
    for name, tensor in vision.fast.state_dict().items():
        if name.startswith(("patch_embedding", "class_embedding", "position_embedding")):
            name = "embeddings." + name
        elif name.startswith("layers."):
            name = "encoder." + name
        yield name, tensor


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], terminal_width=200)


def test_models_prints_the_real_parameter_counts():
    result = invoke("models")
    assert result.exit_code == 0, result.output
    for name, size in (("llava-hr-7b", "7.280 B"), ("llava-hr-x-13b", "14.243 B"), ("tiny-llava-hr", "0.33 M")):
        assert any(name in line and size in line for line in result.output.splitlines()), (name, result.output)


def test_cli_calibrate_build_verify_on_a_saved_checkpoint(tiny_hr_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    weights = ("--model", "llava-hr", "--weights", tiny_hr_folder)
    refused = invoke("calibrate", *weights, "--flops-budget", 0.45, "--selector", "prumerge", "--selector-tokens", 8)
    assert refused.exit_code == 2 and "has no CLS token" in refused.output, refused.output
    result = invoke("calibrate", *weights, "--flops-budget", 0.45, "--samples", 4, "--out", "hr.yaml")
    assert result.exit_code == 0, result.output
    recipe = Recipe.load(tmp_path / "hr.yaml")
    args = architecture("llava-hr", str(tiny_hr_folder))
    assert paper_flops(args, recipe, args.vision.num_patches).ratio <= 0.45
    result = invoke("build", "--recipe", "hr.yaml", *weights, "--engine", "onnx", "--out", "out")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["graphs"]["vision"]["inputs"][0]["dims"] == ["batch", 3, 192, 192]
    result = invoke("verify", "out", "--max-new-tokens", 4)
    assert result.exit_code == 0 and "verify passed" in result.output, result.output


def test_exact_vision_macs_match_torch_flop_counter(tiny_hr):
    """Our analytic count of LLaVA-HR's vision stage (ConvNeXt, ViT, adapters, fusion) against
    torch's FlopCounterMode on the tiny model; attention runs as SDPA, which the counter skips
    on CPU, so only the convolution and linear MACs are compared."""
    from torch.utils.flop_counter import FlopCounterMode

    from vtpexport.flops import exact_prefill_macs

    args = tiny_hr.args
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        tiny_hr.graph.vision(torch.randn(1, 3, 192, 192), feature_layer=args.feature_layer_index)
    exact = exact_prefill_macs(args, None, args.vision.num_patches, 5, 7)
    n, d = args.vision.num_patches, args.vision.hidden_size
    assert exact.vision == counter.get_total_flops() // 2
    assert exact.attention >= args.vision.num_layers * 2 * n * n * d
