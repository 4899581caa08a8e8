"""Export our graphs to ONNX with the dynamo exporter, named and shaped as `spec.py` declares."""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Iterable
from pathlib import Path

import onnx
import torch
from torch import nn
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode

from ..devices import DTYPES
from ..graph.llava import LlavaGraph
from ..graph.text_encoder import ClipTextEncoder
from ..recipe import Recipe, tile_rule
from .attention import TARGETS, AttentionTarget
from .modules import LlmGraph, TextEncoderGraph, vision_graph
from .spec import LLM, PROMPT_INPUTS, GraphSpec, cache_feedback

# ONNX Runtime 1.31 rejects the IR 14 that onnx 1.23 writes by default; TensorRT takes 10 too.
IR_VERSION = 10
EXTERNAL_DATA_BYTES = 1_800_000_000  # below protobuf's 2 GB limit with room for the graph
# Export-time bounds of dynamic dimensions; the manifest's ranges are the promised ones.
_DIM_MAX = 1 << 15


def _dim(name: str) -> torch.export.Dim:
    return torch.export.Dim(name, min=1, max=_DIM_MAX)


def _dynamic_shapes(module: nn.Module, spec: GraphSpec) -> tuple:
    dims: dict[str, torch.export.Dim] = {}
    shapes = []
    for tensor in spec.inputs:
        shapes.append({axis: dims.setdefault(d, _dim(d)) for axis, d in enumerate(tensor.dims) if isinstance(d, str)})
    # torch.export wants the shapes nested like the signature: a *args parameter is one tuple.
    parameters = list(inspect.signature(module.forward).parameters.values())
    for index, parameter in enumerate(parameters):
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return (*shapes[:index], tuple(shapes[index:]))
    return tuple(shapes)


def example_inputs(
    llava: LlavaGraph, recipe: Recipe | None, specs: dict[str, GraphSpec], text_encoder: ClipTextEncoder | None = None
) -> dict[str, tuple]:
    """Inputs for tracing: every dynamic dimension >= 2 and different from the others, so the
    exporter neither specialises a dimension to 1 nor merges two that merely look equal."""
    args = llava.args
    generator = torch.Generator().manual_seed(0)
    layout, side = args.layout, args.vision.image_size
    size = layout.tracing_size()
    if layout.tiled:
        tiles = torch.randn(layout.num_tiles(size), args.vision.num_channels, side, side, generator=generator)
    else:  # a batch of images; an adaptive selector's count is per image, so it takes one
        images = 1 if recipe is not None and recipe.selector is not None and recipe.selector.adaptive else 2
        tiles = torch.randn(images, args.vision.num_channels, *size, generator=generator)
    vision = layout.vision_inputs(tiles, size, *tile_rule(recipe, args))
    inputs = {}
    if text_encoder is not None:
        ids = torch.randint(0, text_encoder.args.vocab_size, (2, 9), generator=generator)
        inputs["text_encoder"] = (ids,)
        with torch.no_grad():
            # One question per image: the batch's rows, or one for an image's tiles.
            vision += (text_encoder(ids)[: 1 if layout.tiled else vision[0].shape[0]],)
    if LLM not in specs:  # only the graphs a selector shapes (the LLM's inputs follow from the vision graph's)
        return inputs | {"vision": vision}
    embeds = output_like(vision_graph(llava, recipe, text_encoder), vision)
    image_embeds = embeds[0] if isinstance(embeds, tuple) else embeds
    # A token count with no small divisor: tracing at a multiple of 3 (say) lets the exporter
    # rewrite kept counts like n - n//3 over a private symbol that no dimension range bounds.
    count = next(n for n in range(image_embeds.shape[1] + 1, 1 << 16) if all(n % k for k in range(2, 13)))
    image_embeds = torch.randn(2, count, image_embeds.shape[2], generator=generator).to(image_embeds.dtype)
    vocab = args.text.vocab_size
    prefix = torch.randint(0, vocab, (2, 5), generator=generator)
    suffix = torch.randint(0, vocab, (2, 7), generator=generator)
    prefix_mask = torch.ones_like(prefix)
    prefix_mask[1, :2] = 0  # left padding in one row
    prompt = dict(zip(PROMPT_INPUTS, (prefix, prefix_mask, image_embeds, suffix, torch.ones_like(suffix)), strict=True))
    llm, feedback = LlmGraph(llava, recipe, specs[LLM]), cache_feedback(args, recipe)
    out = dict(
        zip(
            llm.output_names,
            output_like(llm, _in_order(llm, prompt | empty_past(specs[LLM], feedback.values(), batch=2))),
            strict=True,
        )
    )
    # Traced with a prompt after full caches, so that no dimension is 0 (a 0 would be specialised):
    # the graph is the same for the context phase (empty caches) and the generation phase (no prompt).
    full = {past: out[present] for present, past in feedback.items()}
    return inputs | {"vision": vision, LLM: _in_order(llm, prompt | full)}


def output_like(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | torch.Tensor:
    """Tensors shaped and typed as `module(*inputs)`, found by a fake-tensor run that computes
    nothing: tracing needs only the shapes, and running a 7B LLM in fp16 on a CPU (no fp16 matrix
    units: ~8 GFLOP/s a core) takes most of an hour. Float outputs are zeros, the others ones.
    An adaptive selector's count follows from the pixels, which only a real run of its (vision)
    graph knows: its outputs are computed."""
    try:
        with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
            fake = module(*inputs)
    except DataDependentOutputException:
        with torch.no_grad():
            return module(*inputs)

    def real(tensor: torch.Tensor) -> torch.Tensor:
        fill = torch.zeros if tensor.dtype.is_floating_point else torch.ones
        return fill(tensor.shape, dtype=tensor.dtype)

    return tuple(real(t) for t in fake) if isinstance(fake, tuple) else real(fake)


def _in_order(llm: LlmGraph, feeds: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return tuple(feeds[name] for name in llm.input_names)


def empty_past(spec: GraphSpec, past_names: Iterable[str], batch: int) -> dict[str, torch.Tensor]:
    """The context phase's caches, by name: `batch` rows of length 0 of each of `past_names`."""
    dtypes = DTYPES | {"int64": torch.long}
    tensors = {t.name: t for t in spec.inputs}
    return {
        name: torch.zeros(
            [batch if d == "batch" else 0 if isinstance(d, str) else d for d in t.dims], dtype=dtypes[t.dtype]
        )
        for name, t in ((name, tensors[name]) for name in past_names)
    }


def _quiet_exporter():
    """The dynamo exporter logs pages of warnings about optional packages; keep them out of our output."""
    for name in ("torch.onnx", "torch._dynamo", "torch.export", "torch.fx.experimental.symbolic_shapes"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")


def export_graph(
    module: nn.Module, inputs: tuple, spec: GraphSpec, path: Path, opset: int, target: AttentionTarget
) -> dict[str, str]:
    """Export one graph, attention in `target`'s fusable form; returns the exporter's expression
    for every output dimension we renamed."""
    _quiet_exporter()
    large = sum(p.numel() * p.element_size() for p in module.parameters()) > EXTERNAL_DATA_BYTES
    try:
        program = torch.onnx.export(
            module.eval(),
            inputs,
            dynamic_shapes=_dynamic_shapes(module, spec),
            input_names=[t.name for t in spec.inputs],
            output_names=[t.name for t in spec.outputs],
            opset_version=opset,
            custom_translation_table=target.translations(),
            dynamo=True,
            verbose=False,
        )
    except Exception as error:  # the exporter's own errors are long; keep the cause
        raise RuntimeError(f"exporting {spec.name}.onnx failed: {str(error).splitlines()[0]}") from error
    program.save(str(path), external_data=large)
    return _fix_names(path, spec)


def _fix_names(path: Path, spec: GraphSpec) -> dict[str, str]:
    """Check the input dimension names; give output dimensions our names, keep the expressions."""
    model = onnx.load(str(path), load_external_data=False)
    if model.ir_version > IR_VERSION:
        model.ir_version = IR_VERSION
    expressions: dict[str, str] = {}
    for value, tensor in zip(model.graph.input, spec.inputs, strict=True):
        found = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        if value.name != tensor.name or found != list(tensor.dims):
            raise RuntimeError(f"{spec.name}.onnx input {value.name} has dims {found}, expected {list(tensor.dims)}")
    for value, tensor in zip(model.graph.output, spec.outputs, strict=True):
        if value.name != tensor.name:
            raise RuntimeError(f"{spec.name}.onnx output {value.name} should be {tensor.name}")
        for dim, wanted in zip(value.type.tensor_type.shape.dim, tensor.dims, strict=True):
            if isinstance(wanted, str):
                expressions.setdefault(wanted, dim.dim_param or str(dim.dim_value))
                dim.Clear()
                dim.dim_param = wanted
            elif dim.dim_value != wanted:
                raise RuntimeError(f"{spec.name}.onnx output {value.name} has a dimension {dim}, expected {wanted}")
    onnx.save(model, str(path))
    return expressions


def export_all(
    llava: LlavaGraph,
    recipe: Recipe | None,
    specs: dict[str, GraphSpec],
    folder: Path,
    opset: int,
    on_graph=None,
    text_encoder: ClipTextEncoder | None = None,
    target: AttentionTarget = TARGETS[10],
) -> dict[str, dict[str, str]]:
    """Export every graph of `specs` into `folder`; `on_graph(name)` reports progress.
    `text_encoder` (CLIP's text tower) is exported when the specs include it; attention is
    written in `target`'s fusable form."""
    text_encoder = text_encoder if "text_encoder" in specs else None
    inputs = example_inputs(llava, recipe, specs, text_encoder)
    modules = {
        "text_encoder": lambda: TextEncoderGraph(text_encoder),
        "vision": lambda: vision_graph(llava, recipe, text_encoder),
        LLM: lambda: LlmGraph(llava, recipe, specs[LLM]),
    }
    expressions = {}
    for name, spec in specs.items():
        if on_graph:
            on_graph(name)
        expressions[name] = export_graph(modules[name](), inputs[name], spec, folder / f"{name}.onnx", opset, target)
    return expressions
