"""`vtpexport random-weights`: an alias's architecture with random weights, in its family's
folder layout, loadable as that alias. The aliases' real widths are written in bench/; here
each alias is given a tiny built-in's config, so that every family's path runs in seconds."""

import json
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from vtpexport.cli import main
from vtpexport.models import builtin
from vtpexport.models.aliases import ALIASES
from vtpexport.models.loader import architecture, load_model
from vtpexport.models.random_weights import write_random_checkpoint
from vtpexport.runtime.eager import greedy_generate, prepare

TINY = {
    "llava-1.5-7b": lambda: builtin._tiny_llava_15().to_dict(),
    "llava-next-7b": lambda: builtin._tiny_llava_next().to_dict(),
    "llava-hr-7b": lambda: builtin._tiny_llava_hr().to_diff_dict() | {"model_type": "llava"},
}


@pytest.fixture
def tiny_alias(monkeypatch):
    def make(name: str) -> str:
        monkeypatch.setitem(ALIASES, name, replace(ALIASES[name], config=TINY[name]()))
        return name

    return make


@pytest.mark.parametrize("name", sorted(TINY))
def test_random_weights_load_as_the_alias_and_generate(tmp_path, tiny_alias, image_file, name):
    from PIL import Image

    alias = tiny_alias(name)
    out = write_random_checkpoint(alias, tmp_path / "ckpt", max_shard_bytes=40_000, seed=1)
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 1 and shards[-1] == f"model-{len(shards):05d}-of-{len(shards):05d}.safetensors"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    stored = [t for shard in shards for t in load_file(out / shard).values()]
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in stored)
    model = load_model(alias, weights=str(out), dtype=torch.float32)
    # The folder's config is the alias's: recipes made for the alias apply to it.
    assert model.args.config_hash() == architecture(alias).config_hash()
    config = json.loads((out / "config.json").read_text())
    if name == "llava-hr-7b":  # original-LLaVA layout: a Llama config with LLaVA-HR's keys, no processor
        assert config["model_type"] == "llava" and config["is_multipath_encoder"] is True
        assert not (out / "processor_config.json").exists()
    else:
        assert model.tokenizer.convert_ids_to_tokens(model.args.image_token_id) == "<image>"
    assert model.graph.decoder.embed_tokens.weight.std() > 0
    batch = prepare(model, [Image.open(image_file)], ["What is in the picture?"], 3)
    assert len(greedy_generate(model, batch, 3)[0]) == 3


def test_layers_cut_the_llm_and_the_command_says_how_to_use_it(tmp_path, tiny_alias):
    alias = tiny_alias("llava-1.5-7b")
    out = tmp_path / "two"
    result = CliRunner().invoke(main, ["random-weights", "--model", alias, "--layers", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"--model {alias} --weights {out}" in result.output
    assert architecture(alias, str(out)).text.num_layers == 2
    assert architecture(alias).text.num_layers == 4
    refused = CliRunner().invoke(main, ["random-weights", "--model", alias, "--layers", "2", "--out", str(out)])
    assert refused.exit_code == 2 and "already exists; pass --force" in refused.output
    assert (out / "model.safetensors").is_file()  # under one shard's size: one file and no index, as the Hub's
    forced = CliRunner().invoke(
        main, ["random-weights", "--model", alias, "--layers", "2", "--out", str(out), "--force"]
    )
    assert forced.exit_code == 0, forced.output
    bad = CliRunner().invoke(main, ["random-weights", "--model", alias, "--layers", "9", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--layers must be in 1..4" in bad.output
    assert not (tmp_path / "x").exists()
    unknown = CliRunner().invoke(main, ["random-weights", "--model", "tiny-llava-1.5", "--out", str(tmp_path / "y")])
    assert unknown.exit_code == 2 and "unknown model 'tiny-llava-1.5' for random weights" in unknown.output
