"""Architectures, aliases, weight resolution, anyres geometry and prompts."""

import json

import pytest
from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor

from vtpexport.errors import UserError
from vtpexport.models.aliases import ALIASES
from vtpexport.models.builtin import byte_tokenizer, write_builtin
from vtpexport.models.loader import architecture, load_model, meta_graph, resolve_model
from vtpexport.models.prompt import PromptParts, check_context, format_prompt


def parameters(spec):
    return sum(p.numel() for p in meta_graph(architecture(spec)).parameters())


def test_llava_15_7b_parameter_count_from_architecture_alone():
    assert parameters("llava-1.5-7b") == 7_063_427_072


def test_aliases_resolve_to_real_architectures():
    next7b = architecture("llava-next-7b")
    mistral = architecture("llava-next-mistral-7b")
    assert architecture("llava-1.5-13b").text.num_layers == 40
    assert next7b.family == "llava-next" and len(next7b.image_grid_pinpoints) == 5
    assert (mistral.text.num_heads, mistral.text.num_kv_heads, mistral.text.rope_theta) == (32, 8, 1e6)
    # LLaVA-NeXT adds only the image_newline vector to LLaVA-1.5's parameters.
    assert parameters("llava-next-7b") == 7_063_427_072 + 4096


@pytest.mark.parametrize(
    "size",
    [
        (336, 336),
        (336, 1008),
        (1008, 336),
        (480, 640),
        (640, 480),
        (100, 1000),
        (1000, 100),
        (672, 672),
        (337, 2000),
        (2000, 337),
        (500, 501),
    ],
)
def test_anyres_token_count_matches_transformers_processor(size):
    args = architecture("llava-next-7b")
    images = LlavaNextImageProcessorPil(
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        image_grid_pinpoints=[list(p) for p in args.image_grid_pinpoints],
    )
    processor = LlavaNextProcessor(
        image_processor=images,
        tokenizer=byte_tokenizer(),
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    expected = processor._get_number_of_features(*size, 336, 336) - 1
    assert args.layout.num_tokens(size) == expected
    if size == (672, 672):
        assert expected == 2928  # the largest: a 2x2 grid with nothing unpadded


def test_alias_weights_from_flag_env_and_hf_cache(tmp_path, monkeypatch):
    folder = write_builtin("tiny-llava-1.5", tmp_path / "weights")
    assert resolve_model("llava-1.5-7b", weights=str(folder)).folder == folder

    monkeypatch.setenv("VTPEXPORT_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / "weights").rename(tmp_path / "llava-1.5-7b-hf")
    assert resolve_model("llava-1.5-7b").folder == tmp_path / "llava-1.5-7b-hf"

    monkeypatch.delenv("VTPEXPORT_WEIGHTS_DIR")
    cache = tmp_path / "hub"
    repo = cache / ("models--" + ALIASES["llava-1.5-7b"].repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots").mkdir()
    (tmp_path / "llava-1.5-7b-hf").rename(repo / "snapshots" / "abc123")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    source = resolve_model("llava-1.5-7b")
    assert source.folder == repo / "snapshots" / "abc123"
    assert load_model("llava-1.5-7b").args.text.hidden_size == 64  # the folder's config wins


def test_missing_weights_message_says_where_it_looked(monkeypatch, tmp_path):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError, match=r"no weights found for llava-1.5-13b: looked in .*--weights DIR"):
        load_model("llava-1.5-13b")


def test_incomplete_checkpoints_name_what_is_missing(tmp_path):
    folder = write_builtin("tiny-llava-next", tmp_path / "m", max_shard_bytes=200_000)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (folder / shard).unlink()
    with pytest.raises(UserError, match=f"incomplete: 1 shard\\(s\\) missing, e.g. {shard}"):
        load_model(str(folder))
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != shard}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="incomplete: .* tensor\\(s\\) missing"):
        load_model(str(folder))


def test_prompt_errors():
    tokenizer = byte_tokenizer()
    template = "{{ messages[0]['content'][1]['text'] }}"
    with pytest.raises(UserError, match="empty prompt"):
        format_prompt(tokenizer, "   ", template)
    with pytest.raises(UserError, match="2 '<image>' markers"):
        format_prompt(tokenizer, "<image> and <image>", template)
    with pytest.raises(UserError, match="no room for the image: 6 prompt tokens \\+ 576 image tokens"):
        check_context(PromptParts([1, 2, 3], [4, 5, 6]), 576, 10, 512)
