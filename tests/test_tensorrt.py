"""The TensorRT path without TensorRT: profiles from the manifest for every schedule, their checks,
flag and enum selection on stand-ins of TensorRT 10.0 / 10.16 / 11.1 (tests/fake_tensorrt.py),
the engine build around the builder (timing cache, errors by node, manifest), the TensorRT
runner on engines of the stand-in (which runs them with ONNX Runtime on the CPU) against the
ONNX Runtime runner, and the refusals of `build --engine trt` and `--backend trt` on a machine
without TensorRT or a GPU."""

import json
import shutil
import sys

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from fake_tensorrt import TENSORRT_NAMES, HostStream, ParserError, engine_source, fake_tensorrt

import vtpexport.export.tensorrt as tensorrt_build
import vtpexport.runtime.trt as trt_runner
from vtpexport.cli import main
from vtpexport.errors import UserError
from vtpexport.export.manifest import folder_differences, read_manifest
from vtpexport.export.spec import (
    ExportLimits,
    dim_ranges,
    graph_specs,
    phase_ranges,
    stage_of_layer,
)
from vtpexport.export.tensorrt import (
    InputProfile,
    build_engine,
    build_engines,
    check_profiles,
    engine_profiles,
    network_flags,
)
from vtpexport.models.loader import architecture
from vtpexport.recipe import ModelRef, Recipe, ScheduleSpec

MODEL = "tiny-llava-1.5"
SCHEDULES = {
    "fitprune": ScheduleSpec("fitprune", drop=(0, 12, 9, 0), visual_tokens=36),
    "pyramiddrop": ScheduleSpec("pyramiddrop", layers=(1, 2, 3), ratio=0.5),
    "fastv": ScheduleSpec("fastv", layer=2, ratio=0.5),
}


def recipe_for(method: str | None) -> Recipe | None:
    if method is None:
        return None
    args = architecture(MODEL)
    return Recipe(method, ModelRef(args.family, MODEL, args.config_hash()), None, SCHEDULES[method])


def manifest_for(recipe: Recipe | None, limits: ExportLimits | None = None) -> dict:
    """The parts of a manifest that profiles read, from the same declarations the exporter uses."""
    args, limits = architecture(MODEL), limits or ExportLimits()

    def named(ranges):
        return {name: dict(zip(("min", "opt", "max"), r, strict=True)) for name, r in ranges.items()}

    return {
        "graphs": {name: spec.to_dict() for name, spec in graph_specs(args, recipe).items()},
        "dims": named(dim_ranges(args, recipe, limits)),
        "profiles": {phase: named(r) for phase, r in phase_ranges(args, recipe, limits).items()},
    }


@pytest.mark.parametrize("method", [None, *sorted(SCHEDULES)])
def test_one_llm_engine_has_a_context_and_a_generation_profile_with_a_kv_range_per_stage(method):
    recipe = recipe_for(method)
    limits = ExportLimits(max_batch=3, max_prompt_len=50, max_new_tokens=20)
    manifest = manifest_for(recipe, limits)
    profiles = engine_profiles(manifest)
    assert {graph: list(named) for graph, named in profiles.items()} == {
        "vision": ["default"],
        "llm": ["context", "generation"],
    }
    context, generation = profiles["llm"]["context"], profiles["llm"]["generation"]
    # Context: the prompt after empty caches; generation: one token as the suffix, no prefix, no image.
    assert context["prefix_ids"] == InputProfile((1, 1), (1, 32), (3, 50))
    assert generation["prefix_ids"] == InputProfile((1, 0), (1, 0), (3, 0))
    assert generation["image_embeds"].max[1] == 0 and context["image_embeds"].min[1] > 0
    assert generation["suffix_ids"] == InputProfile((1, 1), (1, 1), (3, 1))
    args = architecture(MODEL)
    stages = stage_of_layer(recipe.schedule if recipe else None, args.text.num_layers)
    expected_stages = {None: 1, "fitprune": 3, "pyramiddrop": 4, "fastv": 2}[method]
    assert stages[-1] + 1 == expected_stages
    kv_max = []
    for stage in range(expected_stages):
        r = manifest["profiles"]["generation"][f"past_len_{stage}"]
        kv_max.append(r["max"])
        layers = [i for i, s in enumerate(stages) if s == stage]
        for layer in layers:
            key = generation[f"past_key_values.{layer}.key"]
            assert key.min[2] == r["min"] and key.opt[2] == r["opt"] and key.max[2] == r["max"]
            assert key.max == (3, args.text.num_kv_heads, r["max"], args.text.head_dim)
            assert context[f"past_key_values.{layer}.key"].max[2] == 0
        assert generation[f"past_mask.{stage}"].max == (3, r["max"])
    # Pruning shortens later stages' caches: their ranges shrink with the schedule.
    assert kv_max == sorted(kv_max, reverse=True)
    if method is not None:
        assert kv_max[-1] < kv_max[0]
    for named in profiles.values():
        for shapes in named.values():
            for p in shapes.values():
                assert all(lo <= op <= hi for lo, op, hi in zip(p.min, p.opt, p.max, strict=True))
    # Each call's caches feed the next: the KV output dims are per-stage, like the inputs'.
    assert manifest["graphs"]["llm"]["outputs"][1]["dims"][2] == "present_len_0"


def test_ort_tensorrt_provider_gets_the_same_profiles(tmp_path):
    from vtpexport.runtime.ort import tensorrt_provider_options

    manifest = manifest_for(recipe_for("pyramiddrop"))
    options = tensorrt_provider_options(tmp_path, manifest, "llm")
    r, text = manifest["profiles"]["generation"]["past_len_3"], architecture(MODEL).text
    maxima = options["trt_profile_max_shapes"].split(",")
    # One entry per profile and input: the context profile's empty caches, then the generation profile's.
    assert maxima.count(f"past_key_values.3.key:4x{text.num_kv_heads}x0x{text.head_dim}") == 1
    assert maxima.count(f"past_key_values.3.key:4x{text.num_kv_heads}x{r['max']}x{text.head_dim}") == 1
    assert [m.split(":")[0] for m in maxima].count("prefix_ids") == 2
    assert options["trt_profile_min_shapes"].startswith("prefix_ids:1x1,prefix_mask:1x1,")


def test_profiles_are_refused_before_any_build(tmp_path):
    manifest = manifest_for(recipe_for("fastv"))
    manifest["profiles"]["context"]["prefix_len"] = {"min": 8, "opt": 4, "max": 16}
    with pytest.raises(UserError, match=r"llm context profile: input prefix_ids axis 1 has min/opt/max 8/4/16"):
        check_profiles(tmp_path, manifest, engine_profiles(manifest))
    del manifest["dims"]["suffix_len"], manifest["profiles"]["generation"]["suffix_len"]
    with pytest.raises(UserError, match="no range for dimension suffix_len"):
        engine_profiles(manifest)


@pytest.mark.parametrize("version", sorted(TENSORRT_NAMES))
def test_network_is_strongly_typed_by_name_on_every_version(version):
    trt = fake_tensorrt(version)
    flags = network_flags(trt)
    if version.startswith("10."):
        assert flags == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 2  # kSTRONGLY_TYPED = 1
        assert hasattr(trt.BuilderFlag, "FP16")  # weak typing is the default there, hence the flag
    else:  # 11: always strongly typed; the flag is deprecated and EXPLICIT_BATCH / FP16 are gone
        assert flags == 0
        for removed in ("FP16", "BF16", "INT8", "OBEY_PRECISION_CONSTRAINTS"):
            assert not hasattr(trt.BuilderFlag, removed)
        assert not hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")


def identity_graph(path):
    """A graph of one dynamic input, prefix_ids [batch, prefix_len] -> its copy."""
    value = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["prefix_ids"], ["copy"])],
        "identity",
        [value("prefix_ids", onnx.TensorProto.INT64, ["batch", "prefix_len"])],
        [value("copy", onnx.TensorProto.INT64, ["batch", "prefix_len"])],
    )
    onnx.save(onnx.helper.make_model(graph), path)
    return path


@pytest.mark.parametrize("version", sorted(TENSORRT_NAMES))
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_engine_calls_on_each_version(tmp_path, version, precision):
    trt = fake_tensorrt(version)
    profiles = {
        "context": {"prefix_ids": InputProfile((1, 1), (1, 32), (4, 256))},
        "generation": {"prefix_ids": InputProfile((1, 0), (1, 0), (4, 0))},
    }
    engine, cache = build_engine(trt, identity_graph(tmp_path / "llm.onnx"), profiles, precision, 1 << 30, b"old;")
    assert engine_source(engine)["onnx"] == str(tmp_path / "llm.onnx") and engine_source(engine)["tensorrt"] == version
    assert cache == b"old;llm.onnx;"
    calls = trt.calls
    assert ("create_network", network_flags(trt)) in calls
    assert ("set_memory_pool_limit", trt.MemoryPoolType.WORKSPACE, 1 << 30) in calls
    # One engine, both profiles, in the order the runner selects them by.
    assert [c[1] for c in calls if c[0] == "add_optimization_profile"] == [
        {"prefix_ids": ((1, 1), (1, 32), (4, 256))},
        {"prefix_ids": ((1, 0), (1, 0), (4, 0))},
    ]
    assert ("create_timing_cache", b"old;") in calls
    # Precision is the graph's: no precision flag is ever set, and fp32 turns TF32 off.
    assert not [c for c in calls if c[0] == "set_flag"]
    assert (("clear_flag", trt.BuilderFlag.TF32) in calls) == (precision == "fp32")


def test_parser_and_builder_errors_name_the_node(tmp_path):
    trt = fake_tensorrt("11.1.0", parse_errors=[ParserError(17, "node_TopK_3", "TopK", "K exceeds the maximum")])
    with pytest.raises(UserError, match=r"cannot parse llm.onnx: node 17 'node_TopK_3' \(TopK\): K exceeds"):
        build_engine(trt, tmp_path / "llm.onnx", {}, "fp16", 1 << 20, b"")
    trt = fake_tensorrt("10.16.0", build_error="[node_softmax_2]: no implementation for this shape")
    vision = identity_graph(tmp_path / "vision.onnx")
    with pytest.raises(UserError, match=r"could not build vision.onnx: \[node_softmax_2\]: no implementation"):
        build_engine(trt, vision, {}, "fp32", 1 << 20, b"")
    # The builder's own check of the profiles: a dynamic input missing from one is an error.
    with pytest.raises(UserError, match=r"prefix_ids: dynamic input is missing dimensions in profile 1"):
        profiles = {"a": {"prefix_ids": InputProfile((1, 1), (1, 1), (1, 1))}, "b": {}}
        build_engine(fake_tensorrt("11.1.0"), vision, profiles, "fp32", 1 << 20, b"")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(result) -> str:
    """The command failed with exit 2 and its only non-progress line is one 'error:' line."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if not line.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.fixture(scope="module")
def refused_export(tmp_path_factory):
    """`build --recipe R --engine trt` without TensorRT: the export is written, the build refused."""
    root = tmp_path_factory.mktemp("trt")
    recipe = recipe_for("fastv")
    recipe.save(root / "fastv.yaml")
    out = root / "exported" / "fastv"
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "tensorrt", None)  # import tensorrt fails, even where it is installed
        result = invoke("build", "--recipe", root / "fastv.yaml", "--engine", "trt", "--out", out, "--workspace", 2)
    return out, result


def test_build_trt_without_tensorrt_writes_the_export_and_says_how_to_finish(refused_export):
    out, result = refused_export
    line = one_error_line(result)
    assert "TensorRT is not installed here" in line
    assert line.endswith(
        f"finish on a GPU machine with TensorRT: vtpexport build --from {out} --engine trt --workspace 2"
    )
    manifest = read_manifest(out)
    assert folder_differences(out, manifest) == []
    assert {"vision.onnx", "llm.onnx", "profiles.json"} <= set(manifest["files"])
    profiles = json.loads((out / "profiles.json").read_text())
    derived = engine_profiles(manifest)["llm"]["generation"]["past_key_values.3.key"]
    assert profiles["llm"]["generation"]["past_key_values.3.key"]["max"] == list(derived.max)
    assert "tensorrt" not in manifest and not list(out.glob("*.plan"))


def test_build_from_without_gpu_refuses_then_builds_with_fake_tensorrt(refused_export, tmp_path, monkeypatch):
    folder = tmp_path / "fastv"
    shutil.copytree(refused_export[0], folder)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("11.1.0"))

    def no_gpu():
        raise UserError("no CUDA GPU is visible here")

    monkeypatch.setattr(tensorrt_build, "cuda_device", no_gpu)
    line = one_error_line(invoke("build", "--from", folder, "--engine", "trt"))
    assert line == (
        f"error: no CUDA GPU is visible here: {folder} has the ONNX graphs, manifest.json and profiles.json; "
        f"finish on a GPU machine with TensorRT: vtpexport build --from {folder} --engine trt"
    )

    monkeypatch.setattr(tensorrt_build, "cuda_device", lambda: ("Fake GPU", "8.9"))
    cache = tmp_path / "timing.cache"
    result = invoke("build", "--from", folder, "--engine", "trt", "--timing-cache", cache)
    assert result.exit_code == 0, result.output
    manifest = read_manifest(folder)
    assert manifest["engine"] == "trt"
    assert manifest["tensorrt"] | {"workspace_bytes": None} == {
        "version": "11.1.0",
        "gpu": "Fake GPU",
        "compute_capability": "8.9",
        "workspace_bytes": None,
        "engines": {"vision": "vision.plan", "llm": "llm.plan"},
        "profiles": "profiles.json",
    }
    assert engine_source((folder / "llm.plan").read_bytes())["onnx"] == str(folder / "llm.onnx")
    assert folder_differences(folder, manifest) == [] and "llm.plan" in manifest["files"]
    assert "building llm.plan" in result.output and "profiles context, generation" in result.output
    # One cache across the two builds, saved, then loaded by the next build.
    assert cache.read_bytes() == b"vision.onnx;llm.onnx;"
    assert invoke("build", "--from", folder, "--engine", "trt", "--timing-cache", cache).exit_code == 0
    assert cache.read_bytes().startswith(b"vision.onnx;llm.onnx;vision.onnx;")

    # Engines from a fake TensorRT cannot run here, and the runner says why in one line.
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    line = one_error_line(invoke("verify", folder, "--backend", "trt"))
    assert "TensorRT is not installed here" in line and "--backend trt runs engines on a CUDA GPU" in line


def test_build_from_refuses_a_tampered_export_and_wrong_options(refused_export, tmp_path, monkeypatch):
    import vtpexport.export.lint as lint

    folder = tmp_path / "fastv"
    shutil.copytree(refused_export[0], folder)
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "tensorrt", fake_tensorrt("11.1.0"))
        patch.setattr(lint, "TOPK_MAX_K", 4)  # FastV's selection now breaks TensorRT's TopK limit
        line = one_error_line(invoke("build", "--from", folder, "--engine", "trt"))
        assert "llm.onnx fails the TensorRT lint over its profile" in line and "TopK" in line
        assert not list(folder.glob("*.plan"))
    assert "--from needs --engine trt or --triton-repo" in one_error_line(invoke("build", "--from", folder))
    assert "do not apply" in one_error_line(invoke("build", "--from", folder, "--engine", "trt", "--model", MODEL))
    (folder / "llm.onnx").write_bytes(b"changed")
    assert "llm.onnx (changed)" in one_error_line(invoke("build", "--from", folder, "--engine", "trt"))


def test_trt_backend_on_an_export_without_engines(refused_export, image_file):
    out, _ = refused_export
    line = one_error_line(invoke("run", out, "--image", image_file, "--prompt", "What?", "--backend", "trt"))
    assert line == f"error: {out} has no TensorRT engines; build them with: vtpexport build --from {out} --engine trt"
    bench = ("bench", out, "--baseline", out, "--image", image_file, "--prompt", "What?", "--backend", "trt")
    assert one_error_line(invoke(*bench)) == line


def parse_config(path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_triton_repo_configs_parse_with_tritons_model_config(refused_export, tmp_path):
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    out, _ = refused_export
    repo = tmp_path / "triton"
    result = invoke("build", "--from", out, "--triton-repo", repo)
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out)
    models = sorted(p.name for p in repo.iterdir())
    assert models == ["fastv_generate", "fastv_llm", "fastv_vision"]
    for graph in ("vision", "llm"):
        config = parse_config(repo / f"fastv_{graph}" / "config.pbtxt")
        assert config.name == f"fastv_{graph}" and config.backend == "onnxruntime"
        assert (repo / f"fastv_{graph}" / "1" / "model.onnx").read_bytes() == (out / f"{graph}.onnx").read_bytes()
        declared = manifest["graphs"][graph]
        for kind, values in (("inputs", config.input), ("outputs", config.output)):
            assert [v.name for v in values] == [t["name"] for t in declared[kind]]
            for value, tensor in zip(values, declared[kind], strict=True):
                assert list(value.dims) == [-1 if isinstance(d, str) else d for d in tensor["dims"]]
                assert value.data_type == parse_config_type(tensor["dtype"])
    generate = parse_config(repo / "fastv_generate" / "config.pbtxt")
    assert generate.backend == "python" and [i.name for i in generate.input] == ["image", "prompt", "max_new_tokens"]
    assert json.loads(generate.parameters["graph_models"].string_value)["llm"] == "fastv_llm"
    assert (repo / "fastv_generate" / "1" / "export" / "tokenizer.json").is_file()
    assert not list((repo / "fastv_generate" / "1" / "export").glob("*.onnx"))
    assert "already exists" in one_error_line(invoke("build", "--from", out, "--triton-repo", repo))


def parse_config_type(dtype: str) -> int:
    from tritonclient.grpc import model_config_pb2

    from vtpexport.export.triton import TRITON_TYPES

    return model_config_pb2.DataType.Value(TRITON_TYPES[dtype])


def test_triton_repo_uses_engines_when_built(refused_export, tmp_path, monkeypatch):
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    folder = tmp_path / "fastv"
    shutil.copytree(refused_export[0], folder)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("10.16.0"))
    monkeypatch.setattr(tensorrt_build, "cuda_device", lambda: ("Fake GPU", "9.0"))
    result = invoke("build", "--from", folder, "--engine", "trt", "--triton-repo", tmp_path / "repo")
    assert result.exit_code == 0, result.output
    config = parse_config(tmp_path / "repo" / "fastv_llm" / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    assert list(config.instance_group[0].profile) == ["0", "1"]  # context, generation: one engine
    assert list(parse_config(tmp_path / "repo" / "fastv_vision" / "config.pbtxt").instance_group[0].profile) == []
    plan = tmp_path / "repo" / "fastv_llm" / "1" / "model.plan"
    assert plan.read_bytes() == (folder / "llm.plan").read_bytes()


def test_triton_python_model_generates_like_the_ort_runner(refused_export, tmp_path, monkeypatch, image_file):
    """model.py run against a stand-in of Triton's pb_utils whose BLS requests go to ONNX Runtime
    sessions of the repository's own model files: the same tokens as OrtRunner."""
    import importlib.util
    import types

    import numpy as np
    import onnxruntime as ort
    from google.protobuf import json_format
    from PIL import Image

    from vtpexport.runtime.ort import OrtRunner

    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    out, _ = refused_export
    repo = tmp_path / "repo"
    assert invoke("build", "--from", out, "--triton-repo", repo).exit_code == 0
    sessions = {}

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    class Response:
        def __init__(self, output_tensors=(), error=None):
            self.output_tensors, self.error_value = list(output_tensors), error

        def has_error(self):
            return self.error_value is not None

    class InferenceRequest:
        def __init__(self, model_name, requested_output_names, inputs):
            self.model, self.outputs, self.inputs = model_name, requested_output_names, inputs

        def exec(self):
            if self.model not in sessions:
                sessions[self.model] = ort.InferenceSession(str(repo / self.model / "1" / "model.onnx"))
            values = sessions[self.model].run(self.outputs, {t.name: t.array for t in self.inputs})
            return Response([Tensor(n, v) for n, v in zip(self.outputs, values, strict=True)])

    def by_name(holder, name):
        tensors = holder.inputs if isinstance(holder, InferenceRequest) else holder.output_tensors
        return next((t for t in tensors if t.name == name), None)

    pb_utils = types.ModuleType("triton_python_backend_utils")
    pb_utils.Tensor, pb_utils.InferenceRequest, pb_utils.InferenceResponse = Tensor, InferenceRequest, Response
    pb_utils.get_input_tensor_by_name = pb_utils.get_output_tensor_by_name = by_name
    pb_utils.TritonError = pb_utils.TritonModelException = RuntimeError
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb_utils)
    spec = importlib.util.spec_from_file_location("triton_model", repo / "fastv_generate" / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    model = module.TritonPythonModel()
    # Triton hands the model its config as JSON with the proto's field names.
    config = json_format.MessageToJson(
        parse_config(repo / "fastv_generate" / "config.pbtxt"), preserving_proto_field_name=True
    )
    model.initialize({"model_config": config, "model_repository": str(repo / "fastv_generate"), "model_version": "1"})
    image = np.asarray(Image.open(image_file).convert("RGB"))
    request = InferenceRequest(
        "fastv_generate",
        ["text"],
        [
            Tensor("image", image),
            Tensor("prompt", np.array([b"What is it?"], dtype=np.object_)),
            Tensor("max_new_tokens", np.array([6], dtype=np.int32)),
        ],
    )
    (response,) = model.execute([request])
    assert not response.has_error(), response.error_value
    text = by_name(response, "text").as_numpy()[0].decode()
    runner = OrtRunner(out)
    pil = Image.fromarray(image)
    expected = runner.tokenizer.decode(
        runner.generate(runner.prepare([pil], ["What is it?"], 6), 6)[0], skip_special_tokens=True
    ).strip()
    assert text == expected and set(sessions) == {"fastv_vision", "fastv_llm"}


@pytest.fixture(params=["10.0.1", "11.1.0"])
def engines_on_the_stand_in(request, refused_export, tmp_path, monkeypatch):
    """The FastV export with engines built by a stand-in TensorRT of each generation, and the
    TensorRT runner pointed at it: torch CPU tensors for device memory, host streams."""
    folder = tmp_path / "fastv"
    shutil.copytree(refused_export[0], folder)
    trt = fake_tensorrt(request.param)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    for module in (tensorrt_build, trt_runner):
        monkeypatch.setattr(module, "cuda_device", lambda: ("Fake GPU", "8.9"))
    build_engines(folder)
    monkeypatch.setattr(trt_runner, "DEVICE", "cpu")
    monkeypatch.setattr(torch.cuda, "Stream", HostStream)
    monkeypatch.setattr(torch.cuda, "current_stream", HostStream)
    return folder, trt


def test_builder_writes_one_llm_engine_with_the_context_and_generation_profiles(engines_on_the_stand_in):
    folder, trt = engines_on_the_stand_in
    assert read_manifest(folder)["tensorrt"]["engines"] == {"vision": "vision.plan", "llm": "llm.plan"}
    declared = json.loads((folder / "profiles.json").read_text())
    runtime = trt.Runtime(tensorrt_build.collecting_logger(trt))
    for graph, profiles in declared.items():
        engine = runtime.deserialize_cuda_engine((folder / f"{graph}.plan").read_bytes())
        assert engine.num_optimization_profiles == len(profiles) == (2 if graph == "llm" else 1)
        for index, shapes in enumerate(profiles.values()):
            for name, p in shapes.items():
                assert engine.get_tensor_profile_shape(name, index) == [
                    tuple(p["min"]),
                    tuple(p["opt"]),
                    tuple(p["max"]),
                ]


def test_trt_runner_generates_like_the_ort_runner(engines_on_the_stand_in, image_file):
    """Prefill in the context profile, decode steps in the generation profile of the one
    context, each step's caches fed back in place (the output memory of the last step is the
    input memory of the next): the same tokens and logits as ONNX Runtime."""
    from PIL import Image

    from vtpexport.runtime.ort import OrtRunner

    folder, trt = engines_on_the_stand_in
    runner, reference = trt_runner.TrtRunner(folder), OrtRunner(folder)
    images = [Image.open(image_file).convert("RGB")]
    for prompt in ("What is it?", "Describe the picture."):  # the second prefill switches back to context
        del trt.calls[:]
        ((tokens, logits),) = runner.generate_with_logits(runner.prepare(images, [prompt], 5), 5, stop_token_ids=())
        ((expected, expected_logits),) = reference.generate_with_logits(reference.prepare(images, [prompt], 5), 5, ())
        assert tokens == expected and len(tokens) == 5
        torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)
        steps = [call for call in trt.calls if call[0] == "execute_async_v3" and call[1] == "llm.onnx"]
        assert [profile for _, _, profile, _ in steps] == [0, 1, 1, 1, 1]
        assert [c[1] for c in trt.calls if c[0] == "set_optimization_profile_async"] == [0, 1][
            prompt == "What is it?" :
        ]
        for (_, _, _, before), (_, _, _, after) in zip(steps, steps[1:], strict=False):
            fed = {name: address for name, address in before.items() if name.startswith("present")}
            assert fed and all(after[runner.cache_feedback[name]] == address for name, address in fed.items())

    result = invoke("run", folder, "--image", image_file, "--prompt", "What is it?", "--backend", "trt")
    assert result.exit_code == 0, result.output
    assert result.output == invoke("run", folder, "--image", image_file, "--prompt", "What is it?").output


def test_trt_runner_refuses_a_shape_outside_the_profile(engines_on_the_stand_in):
    folder, _ = engines_on_the_stand_in
    runner = trt_runner.TrtRunner(folder)
    too_long = read_manifest(folder)["profiles"]["context"]["prefix_len"]["max"] + 1
    prompt = {name: np.ones((1, too_long), np.int64) for name in ("prefix_ids", "prefix_mask")}
    prompt |= {"image_embeds": runner._empty("image_embeds", 1)[:, :0], "suffix_ids": np.ones((1, 1), np.int64)}
    with pytest.raises(
        UserError, match=rf"input prefix_ids of shape \(1, {too_long}\) is outside the engine's context"
    ):
        runner.run_prompt(prompt | {"suffix_mask": np.ones((1, 1), np.int64)})
