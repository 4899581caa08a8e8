"""bench/accuracy_table.py runs end to end on the tiny model (the real table is made on `toy`)."""

import importlib.util
from pathlib import Path

from conftest import write_labelled_data

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "accuracy_table.py"


def test_accuracy_table_runs_on_the_tiny_model(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("accuracy_table", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    data = write_labelled_data(tmp_path, 4)
    results = tmp_path / "results.json"
    argv = ["--model", "tiny-llava-1.5", "--data", str(data), "--calib-samples", "2", "--limit", "3"]
    table = script.main([*argv, "--workdir", str(tmp_path / "recipes"), "--json", str(results)])
    assert table in capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows] == ["| method", *(f"| {m}" for m in script.METHODS)]
    assert all(row.count("|") == 5 for row in rows)
    # PyramidDrop cannot reach 11% of the tokens' FLOPs on a 4-layer LLM: said so, with the reason.
    assert "not run" in rows[2] and "pyramiddrop at ~11%: flops budget" in table
    assert "fopru-rank" in table and results.is_file()
    assert len(list((tmp_path / "recipes").glob("*.yaml"))) >= 10


def test_early_pyramiddrop_stages_start_at_fastvs_layer_and_split_the_rest():
    spec = importlib.util.spec_from_file_location("accuracy_table", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    # 16 layers from layer 1: 15 layers in three stages of 5; 4 layers leave one layer per stage.
    assert script.early_stage_layers(16, 1) == (1, 6, 11)
    assert script.early_stage_layers(32, 2) == (2, 12, 22)
    assert script.early_stage_layers(4, 1) == (1, 2, 3)
