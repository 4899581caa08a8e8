"""The TensorRT-compatibility lint: what it reports on tiny hand-built graphs and on a real export."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from vtpexport.errors import UserError
from vtpexport.export.lint import TOPK_MAX_K, LintIssue, attention_layers, format_issues, lint_model

GRAPH = "prefill.onnx"


def make_model(nodes, inputs, outputs, initializers=(), *, opset: int = 18, ir_version: int = 10) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def topk_model(
    length: str | int | None, k: int | None = None, *, parts: tuple[str, ...] = (), **kwargs
) -> onnx.ModelProto:
    """TopK over the last axis of `scores` [2, length]; K is the constant `k`, else length // 2 computed in the graph.

    Without `parts`, scores is the input. With `parts`, scores is the Concat of one input [2, part] per name and
    `length` is the dim recorded for it in value_info, the way the dynamo exporter records its symbolic shapes
    (shape inference leaves a symbolic Concat length unknown, so the recorded one is kept).
    """
    if parts:
        inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, name]) for name in parts]
        nodes = [helper.make_node("Concat", list(parts), ["scores"], name="concat", axis=1)]
        recorded = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [2, length])]
    else:
        inputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [2, length])]
        nodes, recorded = [], []
    if k is not None:
        init = [numpy_helper.from_array(np.array([k], dtype=np.int64), "k")]
    else:
        init = [numpy_helper.from_array(np.array([2], dtype=np.int64), "two")]
        nodes += [
            helper.make_node("Shape", ["scores"], ["length"], name="shape", start=-1),
            helper.make_node("Div", ["length", "two"], ["k"], name="half"),
        ]
    nodes.append(helper.make_node("TopK", ["scores", "k"], ["values", "indices"], name="topk", axis=-1))
    outputs = [
        helper.make_tensor_value_info("values", TensorProto.FLOAT, [2, None]),
        helper.make_tensor_value_info("indices", TensorProto.INT64, [2, None]),
    ]
    model = make_model(nodes, inputs, outputs, init, **kwargs)
    model.graph.value_info.extend(recorded)
    return model


def lint(model, dim_ranges, **kwargs) -> list[LintIssue]:
    return lint_model(model, graph_name=GRAPH, dim_ranges=dim_ranges, **kwargs)


PROMPT = {"prefix_len": (1, 32, 256), "suffix_len": (1, 32, 256)}


# --- TopK ---------------------------------------------------------------------------------


def test_topk_within_limit_passes():
    assert lint(topk_model("n"), {"n": (2, 576, 3000)}) == []


def test_topk_over_limit_names_the_node():
    issues = lint(topk_model("n"), {"n": (2, 576, 5000)})
    assert len(issues) == 1
    issue = issues[0]
    assert (issue.graph, issue.node, issue.op_type) == (GRAPH, "topk", "TopK")
    assert "5000" in issue.message and str(TOPK_MAX_K) in issue.message
    assert str(issue).startswith("prefill.onnx: node 'topk' (TopK): K can reach 5000")


def test_limit_is_inclusive():
    assert lint(topk_model("n"), {"n": (2, 576, TOPK_MAX_K)}) == []
    assert len(lint(topk_model("n"), {"n": (2, 576, TOPK_MAX_K + 1)})) == 1


def test_constant_k_is_its_value():
    issues = lint(topk_model(5000, k=4000), {})
    assert [(i.node, i.op_type) for i in issues] == [("topk", "TopK")]
    assert "constant 4000" in issues[0].message
    # A small constant K passes even when the input is longer than the limit.
    assert lint(topk_model("n", k=100), {"n": (2, 576, 10000)}) == []


def test_constant_node_k_is_read():
    model = topk_model(5000, k=4000)
    model.graph.ClearField("initializer")
    k = helper.make_node("Constant", [], ["k"], name="k_const", value_ints=[4000])
    model.graph.node.insert(0, k)
    assert "constant 4000" in lint(model, {})[0].message


SUM = "prefix_len + image_tokens + suffix_len"
SUM_PARTS = ("prefix_len", "image_tokens", "suffix_len")


@pytest.mark.parametrize(
    ("image_max", "expected"),
    [(2880, None), (3500, 256 + 3500 + 256)],
)
def test_sum_of_dimension_names(image_max, expected):
    issues = lint(topk_model(SUM, parts=SUM_PARTS), {**PROMPT, "image_tokens": (1, 576, image_max)})
    if expected is None:
        assert issues == []  # 256 + 2880 + 256 = 3392
    else:
        assert len(issues) == 1 and f"K can reach {expected}" in issues[0].message


@pytest.mark.parametrize(
    ("prefix_max", "image_max", "expected"),
    [(256, 24000, None), (3300, 2880, 3300 + 256 + 2880 // 8)],
)
def test_floor_division_in_dimension(prefix_max, image_max, expected):
    ranges = {**PROMPT, "prefix_len": (1, 32, prefix_max), "image_tokens": (1, 576, image_max)}
    model = topk_model("prefix_len + suffix_len + ((image_tokens//8))", parts=SUM_PARTS)
    issues = lint(model, ranges)
    if expected is None:
        assert issues == []  # 256 + 256 + 24000 // 8 = 3512: the division counts
    else:
        assert len(issues) == 1 and f"K can reach {expected}" in issues[0].message  # 3916


def test_subtraction_takes_the_worst_corner():
    # The maximum of a - b is at a's max and b's *min*: substituting every max would say 4700.
    issues = lint(topk_model("Max(0, a - b)", parts=("a", "b")), {"a": (0, 10, 5000), "b": (100, 200, 300)})
    assert len(issues) == 1 and "K can reach 4900" in issues[0].message
    assert lint(topk_model("Max(0, a - b)", parts=("a", "b")), {"a": (0, 10, 3000), "b": (100, 200, 300)}) == []


def test_unboundable_length_is_reported():
    issues = lint(topk_model("n + extra", parts=("n",)), {"n": (2, 50, 100)})
    assert len(issues) == 1
    assert "could not bound K" in issues[0].message and "extra" in issues[0].message
    # Mod is not monotone: reported rather than guessed.
    issues = lint(topk_model("n % 8", parts=("n",)), {"n": (2, 50, 100)})
    assert len(issues) == 1 and "could not bound K" in issues[0].message


def test_unknown_length_is_reported():
    issues = lint(topk_model(None), {})
    assert any(i.op_type == "TopK" and "could not bound K" in i.message for i in issues)


def test_topk_with_k_computed_from_values_is_reported():
    """An adaptive outlier count: K = ReduceSum(scores > threshold)."""
    inputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [2, "n"])]
    init = [numpy_helper.from_array(np.array(0.5, dtype=np.float32), "threshold")]
    nodes = [
        helper.make_node("Greater", ["scores", "threshold"], ["above"], name="above"),
        helper.make_node("Cast", ["above"], ["above_int"], name="cast", to=TensorProto.INT64),
        helper.make_node("ReduceSum", ["above_int"], ["count"], name="count", keepdims=1),
        helper.make_node("Reshape", ["count", "one"], ["k"], name="k"),
        helper.make_node("TopK", ["scores", "k"], ["values", "indices"], name="topk", axis=-1),
    ]
    init.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "one"))
    outputs = [helper.make_tensor_value_info("indices", TensorProto.INT64, [2, None])]
    issues = lint(make_model(nodes, inputs, outputs, init), {"n": (2, 50, 100)})
    assert [(i.node, i.op_type) for i in issues] == [("topk", "TopK")]
    assert "computed from tensor values" in issues[0].message
    # Shape arithmetic stays allowed (length // 2 in topk_model).
    assert lint(topk_model("n"), {"n": (2, 50, 100)}) == []


def test_topk_is_not_checked_for_onnx_runtime():
    assert lint(topk_model("n"), {"n": (2, 576, 5000)}, for_tensorrt=False) == []


# --- ops ----------------------------------------------------------------------------------


def nonzero_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    out = helper.make_tensor_value_info("kept", TensorProto.INT64, [1, None])
    return make_model([helper.make_node("NonZero", ["x"], ["kept"], name="mask_keep")], [x], [out])


def test_contrib_op_is_reported():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    node = helper.make_node("FastGelu", ["x"], ["y"], name="gelu", domain="com.microsoft")
    model = make_model([node], [x], [y])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    for for_tensorrt in (True, False):
        issues = lint(model, {}, for_tensorrt=for_tensorrt)
        assert [(i.node, i.op_type) for i in issues] == [("gelu", "FastGelu")]
        assert "com.microsoft" in issues[0].message


def test_nonzero_is_reported_for_tensorrt_only():
    issues = lint(nonzero_model(), {})
    assert [(i.node, i.op_type) for i in issues] == [("mask_keep", "NonZero")]
    assert "data-dependent" in issues[0].message
    assert lint(nonzero_model(), {}, for_tensorrt=False) == []


def test_nonzero_inside_if_branch_is_reported():
    branch = nonzero_model().graph
    branch.ClearField("input")  # a branch reads x from the outer graph
    other = helper.make_graph(
        [helper.make_node("Constant", [], ["none"], value=numpy_helper.from_array(np.zeros((1, 0), np.int64)))],
        "else",
        [],
        [helper.make_tensor_value_info("none", TensorProto.INT64, [1, None])],
    )
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    out = helper.make_tensor_value_info("kept", TensorProto.INT64, [1, None])
    node = helper.make_node("If", ["cond"], ["kept"], name="branch", then_branch=branch, else_branch=other)
    issues = lint(make_model([node], [x, cond], [out]), {})
    assert ("branch/then_branch/mask_keep", "NonZero") in [(i.node, i.op_type) for i in issues]
    assert ("branch", "If") in [(i.node, i.op_type) for i in issues]  # control flow is reported too
    assert lint(make_model([node], [x, cond], [out]), {}, for_tensorrt=False) == []


def test_local_function_bodies_are_linted_not_their_call():
    # TensorRT's parser imports model-local functions, so the call is fine; what the body does is not.
    body = [helper.make_node("NonZero", ["x"], ["y"], name="nz")]
    function = helper.make_function("local.fns", "KeepNonZero", ["x"], ["y"], body, [helper.make_opsetid("", 18)])
    model = nonzero_model()
    model.graph.ClearField("node")
    model.graph.node.append(helper.make_node("KeepNonZero", ["x"], ["kept"], name="keep", domain="local.fns"))
    model.opset_import.append(helper.make_opsetid("local.fns", 1))
    model.functions.append(function)
    issues = lint(model, {})
    assert [i.op_type for i in issues] == ["NonZero"]
    assert lint(model, {}, for_tensorrt=False) == []


# --- versions and inputs ------------------------------------------------------------------


def test_ir_version_14_is_reported():
    issues = lint(topk_model(8, k=2, ir_version=14), {})
    assert [(i.node, i.op_type) for i in issues] == [("", "")]
    assert "IR version 14" in issues[0].message
    assert str(issues[0]).startswith("prefill.onnx: IR version 14")


def test_opset_outside_range_is_reported():
    issues = lint(topk_model(8, k=2, opset=25), {})
    assert len(issues) == 1 and "opset 25" in issues[0].message
    assert lint(topk_model(8, k=2, opset=25), {}, opset_range=(17, 25)) == []


def test_input_dims_must_be_named_and_ranged():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", None, "seq"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", None, "seq"])
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [x], [y])
    messages = [i.message for i in lint(model, {"batch": (1, 1, 4)})]
    assert len(messages) == 2
    assert any("dim 1 is dynamic but unnamed" in m for m in messages)
    assert any("'seq' has no (min, opt, max)" in m for m in messages)
    assert lint(model, {"batch": (1, 1, 4)}, for_tensorrt=False) != []  # profiles need names either way


@pytest.mark.parametrize("bad", [(10, 5, 3), (1, 8, 4), (-1, 0, 4)])
def test_invalid_ranges_are_reported(bad):
    issues = lint(topk_model("n"), {"n": bad})
    assert any("0 <= min <= opt <= max" in i.message and i.node == "" for i in issues)


def test_issues_are_sorted_and_formatted():
    model = topk_model("n", ir_version=14)
    issues = lint(model, {"n": (2, 576, 5000)})
    assert issues == sorted(issues)
    lines = format_issues(issues).splitlines()
    assert lines == [str(i) for i in issues] and len(lines) == 2
    assert format_issues([]) == ""


# --- files --------------------------------------------------------------------------------


def attention_model(island: bool, scores_only: bool = False, attention_op: bool = False) -> onnx.ModelProto:
    """One fp16 attention over q, k, v [1, 2, 4, 8] with a mask: the fusable primitive form, or with
    an fp32 Cast island around the softmax, or a softmax that feeds only a score, or ONNX Attention."""
    half = TensorProto.FLOAT16
    inputs = [helper.make_tensor_value_info(n, half, [1, 2, 4, 8]) for n in ("q", "k", "v")]
    inputs.append(helper.make_tensor_value_info("mask", half, [1, 1, 4, 4]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT if scores_only else half, None)]
    if attention_op:
        return make_model(
            [helper.make_node("Attention", ["q", "k", "v", "mask"], ["y"], name="attn")], inputs, outputs, opset=23
        )
    scale = numpy_helper.from_array(np.array(8**-0.5, dtype=np.float16), "scale")
    nodes = [
        helper.make_node("Mul", ["q", "scale"], ["qs"], name="fold_scale"),
        helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["qs", "kt"], ["logits"], name="qk"),
        helper.make_node("Add", ["logits", "mask"], ["masked"], name="mask_add"),
    ]
    if island:
        nodes += [
            helper.make_node("Cast", ["masked"], ["masked32"], name="up", to=TensorProto.FLOAT),
            helper.make_node("Softmax", ["masked32"], ["probs32"], name="softmax", axis=-1),
            helper.make_node("Cast", ["probs32"], ["probs"], name="down", to=half),
        ]
    else:
        nodes.append(helper.make_node("Softmax", ["masked"], ["probs"], name="softmax", axis=-1))
    if scores_only:
        nodes += [
            helper.make_node("Cast", ["probs"], ["probs_f"], name="to_fp32", to=TensorProto.FLOAT),
            helper.make_node("ReduceMax", ["probs_f"], ["y"], name="score", keepdims=0),
        ]
    else:
        nodes.append(helper.make_node("MatMul", ["probs", "v"], ["y"], name="pv"))
    return make_model(nodes, inputs, outputs, [scale])


def test_fusable_attention_forms_pass_and_are_counted():
    for model in (attention_model(island=False), attention_model(island=False, attention_op=True)):
        assert lint(model, {}, opset_range=(18, 24)) == []
        assert [layer.fusable for layer in attention_layers(model)] == [True]


def test_cast_island_around_softmax_is_reported_for_tensorrt_only():
    model = attention_model(island=True)
    assert [(i.node, i.op_type) for i in lint(model, {})] == [("softmax", "Softmax")]
    assert "will not fuse" in lint(model, {})[0].message
    assert lint(model, {}, for_tensorrt=False) == []
    assert [layer.fusable for layer in attention_layers(model)] == [False]


def test_softmax_feeding_only_a_score_is_not_an_attention_layer():
    model = attention_model(island=False, scores_only=True)
    assert attention_layers(model) == []
    assert lint(model, {}) == []


def test_lints_a_file_without_reading_its_external_data(tmp_path):
    model = topk_model("n")
    weights = numpy_helper.from_array(np.zeros((64, 64), np.float32), "unused_weight")
    model.graph.initializer.append(weights)
    path = tmp_path / "prefill.onnx"
    onnx.save(model, path, save_as_external_data=True, location="prefill.onnx.data", size_threshold=0)
    (tmp_path / "prefill.onnx.data").unlink()  # a lint that read weights would fail now
    assert lint(path, {"n": (2, 576, 3000)}) == []
    assert len(lint(str(path), {"n": (2, 576, 5000)})) == 1


def test_unreadable_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        lint(tmp_path / "missing.onnx", {})
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\x00not onnx")
    with pytest.raises(UserError, match="not a readable ONNX model"):
        lint(garbage, {})


# --- a real dynamo export -----------------------------------------------------------------


class HalfTopKThenSort(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, index = torch.topk(x, x.shape[-1] // 2)
        kept_index, _ = torch.sort(index)
        return values, kept_index


@pytest.fixture(scope="module")
def exported_topk(tmp_path_factory):
    path = tmp_path_factory.mktemp("lint") / "topk.onnx"
    n = torch.export.Dim("n", min=2, max=1 << 15)
    torch.onnx.export(HalfTopKThenSort().eval(), (torch.randn(2, 16),), path, dynamo=True, dynamic_shapes=({1: n},))
    model = onnx.load(path)
    assert [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [2, "n"]
    return path


def test_dynamo_export_passes_with_small_range(exported_topk):
    assert lint(exported_topk, {"n": (2, 16, 64)}) == []


def test_dynamo_export_fails_with_large_range(exported_topk):
    issues = lint(exported_topk, {"n": (2, 16, 10000)})
    assert issues and all(i.op_type == "TopK" for i in issues)
    # torch.topk over n = 10000, then torch.sort (a TopK too) over the (n//2) = 5000 kept indices.
    assert any("K can reach 10000" in i.message for i in issues)
    assert any("K can reach 5000" in i.message for i in issues)
