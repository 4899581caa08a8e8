"""fp16 / bf16 exports: valid ONNX that passes our lint, norms and pruning scores in fp32 between
explicit casts, every attention layer fused in the low precision, weights in the low precision,
and outputs within that precision's tolerance of the fp32 eager graph. fp16 runs on ONNX
Runtime's CPU kernels; bf16, which ONNX Runtime's CPU provider cannot run, on onnx's reference
evaluator."""

import json

import ml_dtypes
import numpy as np
import onnx
import pytest
import torch
from onnx.reference import ReferenceEvaluator
from test_export import N_TINY, SCHEDULES, SELECTORS, write_recipe

from vtpexport.export.build import build_onnx
from vtpexport.export.lint import attention_layers, lint_model
from vtpexport.export.onnx_export import export_all
from vtpexport.export.precision import PRECISIONS
from vtpexport.export.spec import ExportLimits, dim_ranges, graph_specs
from vtpexport.models.loader import load_model
from vtpexport.models.text_encoder import check_recipe_applies
from vtpexport.recipe import Recipe, ScheduleSpec, SelectorSpec
from vtpexport.verify import verify_export

MODEL = "tiny-llava-1.5"
# Each precision also carries a selector and a schedule, so every scoring op is exported low-precision.
RECIPES = {
    "fp16": (SelectorSpec("fopru-rank", ratio=0.75), ScheduleSpec("fitprune", drop=(0, 6, 4, 0), visual_tokens=27)),
    "bf16": (SelectorSpec("prumerge", tokens=24), ScheduleSpec("pyramiddrop", layers=(1, 2, 3), ratio=0.5)),
}
# Ops whose inputs must be fp32 in a low-precision graph: the norms' reductions, the selections
# (TopK also re-sorts int64 indices); softmaxes too, except the attention layers' own.
FP32_OPS = {"ReduceMean", "LayerNormalization", "TopK"}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """fp16 through the whole build (manifest included); bf16 as vision and LLM graphs, exported
    the same way without the rest of the build, to keep this file fast."""
    root = tmp_path_factory.mktemp("precision")
    selector, schedule = RECIPES["fp16"]
    recipe = write_recipe(root, MODEL, "fp16-recipe", selector, schedule)
    folders = {"fp16": build_onnx(MODEL, str(recipe), str(root / "fp16"), precision="fp16")}
    model = load_model(MODEL, dtype=torch.bfloat16)
    recipe = Recipe.load(write_recipe(root, MODEL, "bf16-recipe", *RECIPES["bf16"]))
    specs = graph_specs(model.args, recipe, "bfloat16")
    folders["bf16"] = root / "bf16"
    folders["bf16"].mkdir()
    export_all(model.graph, recipe, {k: specs[k] for k in ("vision", "llm")}, folders["bf16"], 18)
    return folders


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({t.name: t.data_type for t in inferred.graph.initializer})
    return types


@pytest.mark.parametrize("precision", sorted(RECIPES))
def test_low_precision_graphs_are_valid_and_keep_sensitive_ops_fp32(exports, precision):
    folder = exports[precision]
    low = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(PRECISIONS[precision].dtype_name))
    recipe = Recipe.load(folder.parent / f"{precision}-recipe.yaml")
    args = load_model(MODEL).args
    ranges = dim_ranges(args, recipe, ExportLimits())
    specs = graph_specs(args, recipe, PRECISIONS[precision].dtype_name)
    for path in sorted(folder.glob("*.onnx")):
        model = onnx.load(path)
        onnx.checker.check_model(model, full_check=True)
        assert lint_model(path, graph_name=path.name, dim_ranges=ranges) == []
        types = _elem_types(model)
        assert_every_layer_fusable(path, args, recipe)
        layers = {layer.node for layer in attention_layers(model)}
        for node in model.graph.node:
            if node.name in layers:
                assert types[node.input[0]] == low, (path.name, node.name)
        checked = [
            n for n in model.graph.node if n.op_type in FP32_OPS or (n.op_type == "Softmax" and n.name not in layers)
        ]
        assert checked, path.name
        for node in checked:
            assert types[node.input[0]] in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64), (path.name, node.name)
        weights = [t for t in model.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, low) and t.dims]
        low_count = sum(np.prod(t.dims) for t in weights if t.data_type == low)
        # bf16 keeps the patch convolution's weight fp32 (ONNX Conv has no bf16 before opset 22):
        # a fifth of this tiny tower, a fraction of a percent of a real one.
        assert low_count >= 0.75 * sum(np.prod(t.dims) for t in weights), path.name
        for value, declared in zip(model.graph.output, specs[path.stem].outputs, strict=True):
            assert value.type.tensor_type.elem_type == onnx.helper.np_dtype_to_tensor_dtype(np.dtype(declared.dtype)), (
                path.name,
                value.name,
            )


def assert_every_layer_fusable(path, args, recipe: Recipe, text_layers: int | None = None) -> None:
    """The lint finds one attention layer per transformer layer whose output the graph uses, each
    fusable (the scoring rows beside them read no V, so they are not attention layers to the lint)."""
    probe = recipe.selector.declaration.probe if recipe.selector else None
    # LLaVA reads its feature layer; a selector comparing the last layer's patches with the question reads on.
    reads_last = probe is not None and probe.question and probe.question_layer == "last"
    vision = args.vision.num_layers if reads_last else args.feature_layer_index + 1
    expected = {"llm": args.text.num_layers, "vision": vision, "text_encoder": text_layers}[path.stem]
    layers = attention_layers(path)
    assert [layer.fusable for layer in layers] == [True] * expected, (path.name, layers)


# Every selector and schedule in each low precision, but those the `exports` fixture above already holds.
METHODS = {name: (spec, None) for name, spec in SELECTORS.items()}
METHODS |= {name: (None, schedule(N_TINY[MODEL])) for name, schedule in SCHEDULES.items()}
COVERED = {(precision, spec.method) for precision, pair in RECIPES.items() for spec in pair}
UNCOVERED = [
    (precision, name)
    for precision in sorted(RECIPES)
    for name, pair in sorted(METHODS.items())
    if (precision, next(spec for spec in pair if spec).method) not in COVERED
]


@pytest.mark.parametrize(("precision", "method"), UNCOVERED)
def test_every_method_keeps_every_attention_layer_fusable_in_low_precision(tmp_path, precision, method):
    """Only the graphs the method shapes (a selector's vision and text encoder, a schedule's LLM),
    exported as the build does."""
    selector, schedule = METHODS[method]
    chosen = PRECISIONS[precision]
    model = load_model(MODEL, dtype=chosen.torch_dtype)
    recipe = Recipe.load(write_recipe(tmp_path, MODEL, method, selector, schedule))
    check_recipe_applies(model, recipe)  # a question-guided selector gets its text encoder
    text = model.text_encoder.module if model.text_encoder else None
    specs = graph_specs(model.args, recipe, chosen.dtype_name, text.args if text else None)
    shaped = ("vision", "text_encoder") if selector else ("llm",)
    export_all(model.graph, recipe, {k: v for k, v in specs.items() if k in shaped}, tmp_path, 18, text_encoder=text)
    paths = sorted(tmp_path.glob("*.onnx"))
    assert {p.stem for p in paths} == set(shaped) & set(specs)
    for path in paths:
        assert_every_layer_fusable(path, model.args, recipe, text.args.num_layers if text else None)


def test_manifest_records_precision(exports):
    manifest = json.loads((exports["fp16"] / "manifest.json").read_text())
    assert manifest["precision"] == "fp16"
    embeds = next(t for t in manifest["graphs"]["vision"]["outputs"] if t["name"] == "image_embeds")
    assert embeds["dtype"] == "float16"


def _run(precision: str, path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if precision == "fp16":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds), strict=True))
    evaluator = ReferenceEvaluator(str(path))
    return dict(zip(evaluator.output_names, evaluator.run(None, feeds), strict=True))


def _low(array: np.ndarray, precision: str) -> np.ndarray:
    return array.astype(np.float16 if precision == "fp16" else ml_dtypes.bfloat16)


@pytest.mark.parametrize("precision", sorted(RECIPES))
@torch.no_grad()
def test_low_precision_outputs_within_tolerance_of_fp32(exports, precision):
    """Vision and the LLM's context phase of the low-precision files against the fp32 eager graph
    on the same inputs."""
    folder, tolerance = exports[precision], PRECISIONS[precision].verify_tolerance
    selector, schedule = RECIPES[precision]
    reference = load_model(MODEL).graph
    side = reference.args.vision.image_size
    pixels = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    vision = _run(precision, folder / "vision.onnx", {"pixel_values": pixels.numpy()})
    expected = reference.select_image_tokens(pixels, selector)
    assert np.array_equal(vision["patch_index"], expected.patch_index.numpy())
    embeds = vision["image_embeds"].astype(np.float32)
    assert np.abs(embeds - expected.embeds.numpy()).max() <= tolerance

    generator = torch.Generator().manual_seed(2)
    prefix = torch.randint(0, reference.args.text.vocab_size, (2, 4), generator=generator)
    suffix = torch.randint(0, reference.args.text.vocab_size, (2, 6), generator=generator)
    mask_p, mask_s, image_mask = torch.ones_like(prefix), torch.ones_like(suffix), torch.ones(2, embeds.shape[1])
    image = expected.embeds
    feeds = {
        "prefix_ids": prefix.numpy(),
        "prefix_mask": mask_p.numpy(),
        "image_embeds": _low(image.numpy(), precision),
        "suffix_ids": suffix.numpy(),
        "suffix_mask": mask_s.numpy(),
    }
    spec = graph_specs(reference.args, Recipe.load(folder.parent / f"{precision}-recipe.yaml"), "float32")["llm"]
    for tensor in spec.inputs[len(feeds) :]:  # the context phase's empty caches
        empty = [2 if d == "batch" else (0 if isinstance(d, str) else d) for d in tensor.dims]
        feeds[tensor.name] = (
            _low(np.zeros(empty), precision) if tensor.dtype == "float32" else np.zeros(empty, np.int64)
        )
    prefill = _run(precision, folder / "llm.onnx", feeds)
    eager = reference.prefill(prefix, image, suffix, mask_p, image_mask.long(), mask_s, schedule)
    assert prefill["logits"].dtype == np.float32
    error = np.abs(prefill["logits"] - eager.logits.numpy()).max()
    assert error <= tolerance, error
    assert np.array_equal(prefill["logits"].argmax(-1), eager.logits.argmax(-1).numpy())
    kept = prefill["present.3.key"].shape[2]
    assert kept == eager.caches[3].key.shape[2]


def test_verify_defaults_to_the_precision_tolerance(exports):
    """verify compares with an eager run in the export's dtype, within that precision's tolerance."""
    report = verify_export(exports["fp16"], max_new_tokens=8)
    assert report.tolerance == PRECISIONS["fp16"].verify_tolerance
    assert report.passed, report
    # The fp32 tolerance would not do: fp16 rounding alone is above it.
    assert max(check.max_abs_error for check in report.graphs.values()) > PRECISIONS["fp32"].verify_tolerance
