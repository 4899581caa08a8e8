"""Static TensorRT-compatibility lint of an exported ONNX graph.

It checks, without TensorRT and without reading weights, the rules of EXPORT.md that the
TensorRT ONNX parser or builder would otherwise only report on a GPU machine:

- every node is a standard ``ai.onnx`` op (no com.microsoft contrib ops);
- for TensorRT: no op whose output length depends on tensor values (NonZero, Compress,
  Unique, NonMaxSuppression) and no value-dependent control flow (If, Loop), subgraphs
  included;
- for TensorRT: every TopK's K derives from shapes and constants only (a K computed from
  tensor values, like an adaptive outlier count, is a data-dependent shape) and stays
  <= 3840 over the declared dimension ranges;
- the IR version is one ONNX Runtime loads (<= 10) and the default-domain opset is in range;
- for TensorRT: every attention layer (an ONNX Attention, or a Softmax whose output multiplies
  the values, through Casts or not) is in a form TensorRT fuses into one kernel: Attention, or
  MatMul -> (mask Add) -> Softmax -> MatMul with no Cast between (an fp32 Cast island around the
  softmax leaves it unfused). Softmaxes that feed only pruning scores are not attention layers;
- every dynamic input dimension is named and has a valid (min, opt, max) range.

TopK's K is bounded by its constant value when it is one, else by the length of the TopK
input along its axis, read from shape inference: an int, a dimension name, or an
expression over names as torch's dynamo exporter writes them ("prefix_len + image_tokens",
"(image_tokens//8)", "Max(0, a - b)"). Expressions are evaluated exactly with Python
integer arithmetic after parsing them with `ast` (never `eval`: the strings come from the
model file). Assumption: a dimension expression is monotone in each name separately, as
sums, products with positive coefficients, floor/ceil divisions by positive constants,
Max/Min and differences are; its maximum over the box of ranges is then at a corner. An
expression without subtraction or division by a name is non-decreasing in every name, so
the all-max corner is evaluated; otherwise every corner of the min/max box. Mod and other
non-monotone functions are reported as unbounded rather than guessed.
"""

from __future__ import annotations

import ast
import itertools
import math
import re
from collections import ChainMap
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
from onnx import inliner, numpy_helper, shape_inference

from ..errors import UserError
from .manifest import export_file, read_manifest

# ITopKLayer::setK: "Currently only values up to 3840 are supported"; onnx-tensorrt's
# docs/operators.md repeats the limit for the dynamic K input.
TOPK_MAX_K = 3840
# ONNX Runtime 1.31 rejects IR 14 (onnx 1.23's default); torch's exporter writes 10.
MAX_IR_VERSION = 10
STANDARD_DOMAINS = frozenset({"", "ai.onnx"})

# Ops whose output length depends on tensor values, not shapes. NonZero and
# NonMaxSuppression are the layers TensorRT's glossary calls "explicitly data-dependent
# shapes" (INonZeroLayer, INMSLayer): they parse, but their outputs fit no optimization
# profile and need an IOutputAllocator. Compress and Unique are "N" (unsupported) in
# onnx-tensorrt's docs/operators.md (TensorRT 10.x) and are data-dependent in ONNX itself.
DATA_DEPENDENT_OPS: dict[str, str] = {
    "NonZero": "its output length depends on tensor values (TensorRT: data-dependent shape)",
    "NonMaxSuppression": "its output length depends on tensor values (TensorRT: data-dependent shape)",
    "Compress": "its output length depends on tensor values and the TensorRT parser does not support it",
    "Unique": "its output length depends on tensor values and the TensorRT parser does not support it",
}

# If and Loop are reported too. TensorRT parses them with restrictions (onnx-tensorrt
# operators.md: If branches must output the same rank; a Loop's scan outputs cannot have a
# dynamic length), but our graphs are straight-line by design (EXPORT.md: avoid the
# TorchScript exporter's If control flow; kept counts derive from shapes), so either op in
# an exported graph means a value-dependent Python branch or loop was traced. Scan is not
# reported: its trip count is the scanned axis length, a shape. Their bodies are linted.
CONTROL_FLOW_OPS: dict[str, str] = {
    "If": "value-dependent control flow in a graph meant to be straight-line (TensorRT restricts If branches)",
    "Loop": "value-dependent control flow in a graph meant to be straight-line (TensorRT needs static scan lengths)",
}

_MAX_CORNER_NAMES = 12  # 2^12 corner evaluations at most per dimension expression


@dataclass(frozen=True, order=True)
class LintIssue:
    """One rule an exported graph breaks. Sorting orders by graph, node, op, message."""

    graph: str  # file name of the graph, e.g. "prefill.onnx"
    node: str  # node name ("If_3/then_branch/NonZero_1" inside subgraphs); "" for model-level issues
    op_type: str  # "" for model-level issues
    message: str  # one line: what is wrong and which limit applies

    def __str__(self) -> str:
        if self.node:
            return f"{self.graph}: node '{self.node}' ({self.op_type}): {self.message}"
        return f"{self.graph}: {self.message}"


def format_issues(issues: Iterable[LintIssue]) -> str:
    """One line per issue, in the order given ("" for none)."""
    return "\n".join(str(issue) for issue in issues)


def lint_model(
    model: onnx.ModelProto | str | Path,
    *,
    graph_name: str,
    dim_ranges: Mapping[str, tuple[int, int, int]],
    for_tensorrt: bool = True,
    opset_range: tuple[int, int] = (17, 24),
) -> list[LintIssue]:
    """Lint one ONNX graph and return its issues, sorted (an empty list means it passes).

    `dim_ranges` maps every dynamic dimension name of the graph inputs to the (min, opt, max)
    of the future TensorRT optimization profile. A path is loaded without its external data,
    so multi-GB models lint without reading weights. `for_tensorrt=False` skips the
    TensorRT-only rules (data-dependent ops, control flow, TopK's K). Raises UserError if
    the file cannot be read as ONNX.
    """
    model = _load(model)
    if model.functions:  # TensorRT imports local functions; lint (and infer shapes of) their bodies in place
        model = inliner.inline_local_functions(model)
    try:  # graph only: initializers with external data keep their dims, which is all it reads
        model = shape_inference.infer_shapes(model)
    except Exception:
        pass  # an invalid or > 2 GB in-memory model: keep the exporter's own value_info

    bounds = {name: (r[0], r[2]) for name, r in dim_ranges.items() if _is_range(r)}
    issues = _check_versions(model, graph_name, opset_range)
    issues += _check_dim_ranges(dim_ranges, graph_name)
    issues += _check_inputs(model.graph, dim_ranges, graph_name)
    for node, label, scope in _walk(model.graph, ChainMap(), ChainMap(), ""):
        issue = _check_node(node, label, scope, bounds, for_tensorrt)
        if issue:
            issues.append(LintIssue(graph_name, label, node.op_type, issue))
    if for_tensorrt:
        issues += [
            LintIssue(graph_name, layer.node, layer.op_type, UNFUSABLE_ATTENTION)
            for layer in _attention_layers(model.graph)
            if not layer.fusable
        ]
    return sorted(issues)


UNFUSABLE_ATTENTION = (
    "attention whose probabilities nothing else reads is not MatMul -> (Add) -> Softmax -> MatMul in one dtype "
    "(nor ONNX Attention): TensorRT will not fuse it into a multi-head-attention kernel"
)


@dataclass(frozen=True)
class AttentionLayer:
    node: str  # the Attention or Softmax node
    op_type: str
    fusable: bool


def attention_layers(model: onnx.ModelProto | str | Path) -> list[AttentionLayer]:
    """The attention layers of a graph's top level (subgraphs hold none in our exports), each
    with whether TensorRT can fuse it; a path is read without its external data."""
    model = _load(model)
    if model.functions:
        model = inliner.inline_local_functions(model)
    return _attention_layers(model.graph)


def _attention_layers(graph: onnx.GraphProto) -> list[AttentionLayer]:
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def reaches_values(name: str) -> bool:  # the probabilities multiply V, through Casts or not
        return any(
            (c.op_type == "MatMul" and c.input[0] == name) or (c.op_type == "Cast" and reaches_values(c.output[0]))
            for c in consumers.get(name, [])
        )

    def from_scores(name: str) -> bool:  # MatMul(Q, K^T), optionally plus a mask
        node = producer.get(name)
        if node is not None and node.op_type == "Add":
            return any(getattr(producer.get(i), "op_type", None) == "MatMul" for i in node.input)
        return node is not None and node.op_type == "MatMul"

    layers = []
    for index, node in enumerate(graph.node):
        label = node.name or f"<unnamed {node.op_type} #{index}>"
        if node.op_type == "Attention" and node.domain in STANDARD_DOMAINS:
            layers.append(AttentionLayer(label, node.op_type, True))
        elif node.op_type == "Softmax" and reaches_values(node.output[0]):
            direct = consumers.get(node.output[0], [])
            fusable = from_scores(node.input[0]) and all(c.op_type == "MatMul" for c in direct)
            layers.append(AttentionLayer(label, node.op_type, fusable))
    return layers


# Below this size an initializer is an exporter constant (a scale, a shape), not a weight.
WEIGHT_MIN_BYTES = 1024
EXPORTER_CONSTANT = re.compile(r"val_\d+")


def duplicated_weights(paths: Iterable[str | Path]) -> list[LintIssue]:
    """One issue per weight stored in more than one of an export's graphs (each graph loads its own
    copy; two TensorRT engines cannot share one). Weights keep the module parameter's name in
    every graph, so a name, shape and type seen twice is one weight stored twice. Graphs are read
    without their external data."""
    seen: dict[tuple, str] = {}
    issues = []
    for path in paths:
        model = _load(path)
        for tensor in model.graph.initializer:
            if EXPORTER_CONSTANT.fullmatch(tensor.name):
                continue  # the exporter numbers its own constants per graph: equal names, unrelated values
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
            if math.prod(tensor.dims) * itemsize < WEIGHT_MIN_BYTES:
                continue
            key = (tensor.name, tuple(tensor.dims), tensor.data_type)
            graph = Path(path).name
            if key in seen:
                message = f"weight '{tensor.name}' is stored in {seen[key]} too: every copy is loaded again"
                issues.append(LintIssue(graph, "", "", message))
            else:
                seen[key] = graph
    return sorted(issues)


# The dynamo exporter needs opset >= 18; TensorRT 10.15+ parses up to 24.
SUPPORTED_OPSETS = (18, 24)


@dataclass(frozen=True)
class GraphLint:
    file: str
    attention_layers: int
    fusable: int


@dataclass(frozen=True)
class ExportLint:
    """An export's graphs linted together: per graph its attention layers, and every issue
    (each graph's own, and weights stored in more than one graph)."""

    graphs: list[GraphLint]
    issues: list[LintIssue]
    onnx_runtime_only: str | None = None  # why the export is not for TensorRT, as its manifest says

    def summary(self) -> str:
        """What `vtpexport lint` prints."""
        lines = [f"{g.file}: {g.attention_layers} attention layers, {g.fusable} fusable" for g in self.graphs]
        if not self.issues:
            return "\n".join([*lines, f"{len(self.graphs)} graphs pass the TensorRT lint"])
        lines.append(format_issues(self.issues).rstrip())
        if self.onnx_runtime_only:
            lines.append(f"this export is for ONNX Runtime only: {self.onnx_runtime_only}")
        return "\n".join(lines)


def lint_graphs(
    paths: Mapping[str, Path], dim_ranges: Mapping[str, tuple[int, int, int]], onnx_runtime_only: Iterable[str] = ()
) -> ExportLint:
    """Lint an export's graphs (name -> file) for TensorRT, those named in `onnx_runtime_only`
    without the TensorRT-only rules; what `build` checks before it seals and `lint` re-checks."""
    exempt = set(onnx_runtime_only)
    issues, graphs = [], []
    for name, path in paths.items():
        issues += lint_model(
            path,
            graph_name=path.name,
            dim_ranges=dim_ranges,
            opset_range=SUPPORTED_OPSETS,
            for_tensorrt=name not in exempt,
        )
        layers = attention_layers(path)
        graphs.append(GraphLint(path.name, len(layers), sum(layer.fusable for layer in layers)))
    return ExportLint(graphs, sorted(issues + duplicated_weights(paths.values())))


def lint_export(folder: str | Path) -> ExportLint:
    """`vtpexport lint`: a built export's graphs, every one for TensorRT, over its manifest's ranges."""
    manifest = read_manifest(folder)
    ranges = {name: (r["min"], r["opt"], r["max"]) for name, r in manifest["dims"].items()}
    graphs = manifest["graphs"].items()
    paths = {name: export_file(folder, graph["file"], f"graphs.{name}.file") for name, graph in graphs}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise UserError(f"{', '.join(missing)} missing: rebuild the export")
    result = lint_graphs(paths, ranges)
    return ExportLint(result.graphs, result.issues, manifest.get("onnx_runtime_only"))


def _load(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise UserError(f"cannot lint {path}: no such file; export the graph first")
    try:
        return onnx.load(path, load_external_data=False)
    except Exception as error:  # protobuf and onnx raise several types
        raise UserError(f"cannot lint {path}: not a readable ONNX model ({error})") from error


def _is_range(r: object) -> bool:
    return isinstance(r, (tuple, list)) and len(r) == 3 and all(isinstance(v, int) for v in r)


# --- model-level checks ----------------------------------------------------------------


def _check_versions(model: onnx.ModelProto, graph: str, opset_range: tuple[int, int]) -> list[LintIssue]:
    issues = []
    if model.ir_version == 0:
        issues.append(LintIssue(graph, "", "", f"IR version is not set; set model.ir_version = {MAX_IR_VERSION}"))
    elif model.ir_version > MAX_IR_VERSION:
        issues.append(
            LintIssue(
                graph,
                "",
                "",
                f"IR version {model.ir_version} is newer than ONNX Runtime 1.31 loads (<= {MAX_IR_VERSION}); "
                f"set model.ir_version = {MAX_IR_VERSION}",
            )
        )
    opsets = [entry.version for entry in model.opset_import if entry.domain in STANDARD_DOMAINS]
    low, high = opset_range
    if not opsets:
        issues.append(LintIssue(graph, "", "", "the model imports no default-domain (ai.onnx) opset"))
    elif not low <= opsets[0] <= high:
        issues.append(
            LintIssue(
                graph,
                "",
                "",
                f"default-domain opset {opsets[0]} is outside {low}..{high} "
                "(TensorRT 10.0-10.1 parse opsets 9-20, 10.15+ up to 24)",
            )
        )
    return issues


def _check_dim_ranges(dim_ranges: Mapping[str, tuple[int, int, int]], graph: str) -> list[LintIssue]:
    issues = []
    for name, r in dim_ranges.items():
        if not _is_range(r):
            issues.append(LintIssue(graph, "", "", f"dim range '{name}' = {r!r} must be three ints (min, opt, max)"))
        elif not 0 <= r[0] <= r[1] <= r[2]:
            issues.append(
                LintIssue(graph, "", "", f"dim range '{name}' = {tuple(r)} must satisfy 0 <= min <= opt <= max")
            )
    return issues


def _check_inputs(graph: onnx.GraphProto, dim_ranges: Mapping[str, object], name: str) -> list[LintIssue]:
    """Every dynamic input dimension needs a name that a TensorRT profile range covers."""
    weights = {init.name for init in graph.initializer}
    issues = []
    for value in graph.input:
        if value.name in weights:  # IR < 4 lists initializers as inputs too
            continue
        if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
            issues.append(LintIssue(name, "", "", f"input '{value.name}' has no tensor shape (unknown rank)"))
            continue
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value"):
                continue
            if not dim.dim_param:
                message = f"input '{value.name}' dim {axis} is dynamic but unnamed; name it so a profile can cover it"
            elif dim.dim_param not in dim_ranges:
                message = f"input '{value.name}' dim {axis} '{dim.dim_param}' has no (min, opt, max) in dim_ranges"
            else:
                continue
            issues.append(LintIssue(name, "", "", message))
    return issues


# --- node checks -----------------------------------------------------------------------


# Ops that compute a shape-derived value from shape-derived inputs (shape arithmetic).
SHAPE_ARITHMETIC_OPS = frozenset(
    "Gather Slice Concat Unsqueeze Squeeze Cast Add Sub Mul Div Floor Ceil Min Max Reshape Identity "
    "Neg Abs Mod Equal Less Greater Where Range Expand".split()
)


@dataclass(frozen=True)
class _Scope:
    types: Mapping[str, onnx.TypeProto]  # every value visible here, outer graphs included
    constants: Mapping[str, onnx.TensorProto]
    shape_derived: frozenset[str]  # values computed from shapes and constants only


def _walk(
    graph: onnx.GraphProto,
    types: ChainMap,
    constants: ChainMap,
    prefix: str,
    outer_derived: frozenset[str] = frozenset(),
) -> Iterator[tuple[onnx.NodeProto, str, _Scope]]:
    """Every node of `graph` and of its subgraphs, with a label and the values it can see."""
    types = types.new_child({v.name: v.type for v in (*graph.input, *graph.output, *graph.value_info)})
    constants = constants.new_child({t.name: t for t in graph.initializer})
    derived = set(outer_derived) | {t.name for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in STANDARD_DOMAINS and node.output:
            constants[node.output[0]] = _constant_tensor(node)
        from_shapes = node.op_type in ("Constant", "Shape", "Size") or (
            node.op_type in SHAPE_ARITHMETIC_OPS and all(not name or name in derived for name in node.input)
        )
        if from_shapes:
            derived.update(node.output)
    scope = _Scope(types, constants, frozenset(derived))
    for index, node in enumerate(graph.node):
        label = prefix + (node.name or f"<unnamed {node.op_type} #{index}>")
        yield node, label, scope
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for i, sub in enumerate(subgraphs):
                where = attr.name if len(subgraphs) == 1 else f"{attr.name}[{i}]"
                yield from _walk(sub, types, constants, f"{label}/{where}/", scope.shape_derived)


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    for attr in node.attribute:
        if attr.name == "value":
            return attr.t
        if attr.name == "value_int":
            return numpy_helper.from_array(np.asarray([attr.i], dtype=np.int64))
        if attr.name == "value_ints":
            return numpy_helper.from_array(np.asarray(attr.ints, dtype=np.int64))
    return None


def _check_node(
    node: onnx.NodeProto, label: str, scope: _Scope, bounds: Mapping[str, tuple[int, int]], for_tensorrt: bool
) -> str | None:
    """The problem with one node, as a one-line message, or None."""
    if node.domain not in STANDARD_DOMAINS:
        return f"domain '{node.domain}' is not standard ai.onnx; TensorRT parses only standard ops (no contrib ops)"
    if not for_tensorrt:
        return None
    if node.op_type in DATA_DEPENDENT_OPS:
        return f"{DATA_DEPENDENT_OPS[node.op_type]}; derive kept counts from input shapes or recipe constants"
    if node.op_type in CONTROL_FLOW_OPS:
        return CONTROL_FLOW_OPS[node.op_type]
    if node.op_type == "TopK":
        return _check_topk(node, scope, bounds)
    return None


def _check_topk(node: onnx.NodeProto, scope: _Scope, bounds: Mapping[str, tuple[int, int]]) -> str | None:
    attrs = {attr.name: attr for attr in node.attribute}
    if "k" in attrs:  # opset < 10
        k = attrs["k"].i
    else:
        k = _constant_max(scope.constants.get(node.input[1])) if len(node.input) > 1 else None
    if k is not None:
        if k > TOPK_MAX_K:
            return f"K is the constant {k}, above TensorRT's TopK limit K <= {TOPK_MAX_K}"
        return None
    if node.input[1] not in scope.shape_derived:
        return (
            f"K ('{node.input[1]}') is computed from tensor values, a data-dependent shape TensorRT does not "
            "take; derive kept counts from input shapes or recipe constants"
        )

    axis = attrs["axis"].i if "axis" in attrs else -1
    dims = _shape(scope.types.get(node.input[0]))
    if dims is None:
        return f"could not bound K: it is not a constant and input '{node.input[0]}' has no inferred shape"
    if not -len(dims) <= axis < len(dims):
        return f"could not bound K: axis {axis} is out of range for input '{node.input[0]}' of rank {len(dims)}"
    dim = dims[axis]
    length, why = _dim_max(dim, bounds)
    text = _dim_text(dim)
    if length is None:
        return f"could not bound K: it is not a constant and the input length along axis {axis} is {text} ({why})"
    if length > TOPK_MAX_K:
        return (
            f"K can reach {length}: bounded by the input length along axis {axis}, {text} <= {length}, "
            f"above TensorRT's TopK limit K <= {TOPK_MAX_K}; lower the range max or TopK a shorter part"
        )
    return None


def _constant_max(tensor: onnx.TensorProto | None) -> int | None:
    """The largest value of a small integer constant, or None if it is not one we can read."""
    if tensor is None or tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None
    try:
        values = numpy_helper.to_array(tensor)
    except Exception:  # malformed or unsupported tensor: treat K as unknown
        return None
    if values.size == 0 or values.dtype.kind not in "iu":
        return None
    return int(values.max())


def _shape(value_type: onnx.TypeProto | None) -> list[onnx.TensorShapeProto.Dimension] | None:
    if value_type is None or not value_type.HasField("tensor_type"):
        return None
    tensor = value_type.tensor_type
    return list(tensor.shape.dim) if tensor.HasField("shape") else None


def _dim_text(dim: onnx.TensorShapeProto.Dimension) -> str:
    if dim.HasField("dim_value"):
        return str(dim.dim_value)
    return f"'{dim.dim_param}'" if dim.dim_param else "unknown"


# --- dimension expressions -------------------------------------------------------------


def _dim_max(dim: onnx.TensorShapeProto.Dimension, bounds: Mapping[str, tuple[int, int]]) -> tuple[int | None, str]:
    """Largest value of a dimension over the ranges, or None and the reason it has none."""
    if dim.HasField("dim_value"):
        return dim.dim_value, ""
    if not dim.dim_param:
        return None, "no dim_value or dim_param"
    if dim.dim_param in bounds:
        return bounds[dim.dim_param][1], ""
    try:
        tree = ast.parse(dim.dim_param.strip(), mode="eval").body
        names, monotone = _inspect(tree)
    except (SyntaxError, ValueError) as error:
        return None, f"not an expression over dimension names: {error}"
    unknown = sorted(names - bounds.keys())
    if unknown:
        return None, f"names not in dim_ranges: {', '.join(unknown)}"
    ordered = sorted(names)
    if monotone:
        corners: Iterable[tuple[int, ...]] = [tuple(bounds[n][1] for n in ordered)]
    elif len(ordered) <= _MAX_CORNER_NAMES:
        corners = itertools.product(*(bounds[n] for n in ordered))
    else:
        return None, f"too many names ({len(ordered)}) to evaluate every corner"
    try:
        best = max(_evaluate(tree, dict(zip(ordered, corner, strict=True))) for corner in corners)
    except (ZeroDivisionError, ValueError) as error:
        return None, f"cannot evaluate: {error}"
    return math.ceil(best), ""


def _floor(x: Fraction) -> Fraction:
    return Fraction(math.floor(x))


def _ceil(x: Fraction) -> Fraction:
    return Fraction(math.ceil(x))


# Functions as torch's sympy printer writes them (torch/utils/_sympy/functions.py), all
# monotone non-decreasing in each argument for the non-negative values dimensions take.
_FUNCTIONS: dict[str, Callable[..., Fraction]] = {
    "Max": max,
    "Min": min,
    "floor": _floor,
    "ceiling": _ceil,
    "FloorToInt": _floor,
    "CeilToInt": _ceil,
    "TruncToInt": lambda x: Fraction(math.trunc(x)),
    "FloorDiv": lambda a, b: _floor(a / b),
    "CeilDiv": lambda a, b: _ceil(a / b),
    "IntTrueDiv": lambda a, b: a / b,
    "FloatTrueDiv": lambda a, b: a / b,
    "ToFloat": lambda x: x,
    "Identity": lambda x: x,
}
_DIVISIONS = ("FloorDiv", "CeilDiv", "IntTrueDiv", "FloatTrueDiv")
_BINARY: dict[type, Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: _floor(a / b),
}


def _inspect(tree: ast.expr) -> tuple[set[str], bool]:
    """Names used by a dimension expression, and whether it is non-decreasing in all of them.

    Raises ValueError for anything outside + - * / // on numbers and names and the functions above.
    """
    names: set[str] = set()
    monotone = True

    def visit(node: ast.expr) -> None:
        nonlocal monotone
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            decreasing_right = isinstance(node.op, ast.Sub) or (
                isinstance(node.op, (ast.Div, ast.FloorDiv)) and not isinstance(node.right, ast.Constant)
            )
            monotone = monotone and not decreasing_right
            visit(node.left)
            visit(node.right)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
            monotone = monotone and isinstance(node.op, ast.UAdd)
            visit(node.operand)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS
            and node.args
            and not node.keywords
        ):
            if node.func.id in _DIVISIONS and not isinstance(node.args[-1], ast.Constant):
                monotone = False
            for arg in node.args:
                visit(arg)
        else:
            raise ValueError(f"unsupported term '{ast.unparse(node)}'")

    visit(tree)
    return names, monotone


def _evaluate(node: ast.expr, values: Mapping[str, int]) -> Fraction:
    """Exact value of an expression `_inspect` accepted, with `values` for its names."""
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    if isinstance(node, ast.Name):
        return Fraction(values[node.id])
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_evaluate(node.left, values), _evaluate(node.right, values))
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand, values)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.Call):
        return Fraction(_FUNCTIONS[node.func.id](*(_evaluate(arg, values) for arg in node.args)))
    raise ValueError(f"unsupported term '{ast.unparse(node)}'")
