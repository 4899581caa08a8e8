"""`vtpexport build --engine trt`: TensorRT engines from an export folder's ONNX graphs.

TensorRT is imported here and in `runtime/trt.py` only, lazily, so every other command runs
without it. The same code drives TensorRT 10.x and 11.x: flags and enums are looked up by
name (11 removed the precision builder flags and EXPLICIT_BATCH, and its networks are always
strongly typed), and precision comes from the graph itself (`export/precision.py`), never
from builder flags.

Optimization profiles come from the manifest's dimension ranges: one per engine for vision
(and the text encoder), and two for the one LLM engine, as TensorRT-LLM and TensorRT-Edge-LLM
build theirs: context (the prompt after empty caches) and generation (one token after caches
with their own per-stage lengths), so its weights are in GPU memory once. They are checked
(min <= opt <= max, the lint's limits) before any build starts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..files import files_atomically, write_atomically
from .lint import format_issues, lint_model
from .manifest import export_file, folder_differences, read_manifest, update_manifest

PROFILES = "profiles.json"
MIN_TENSORRT_MAJOR = 10  # the named-tensor API (set_input_shape / execute_async_v3) and strong typing
DEFAULT_WORKSPACE_GIB = 4.0

Shape = tuple[int, ...]


@dataclass(frozen=True)
class InputProfile:
    """One dynamic input's shapes for an optimization profile."""

    min: Shape
    opt: Shape
    max: Shape


def engine_file(graph: str) -> str:
    return f"{graph}.plan"


def engine_profiles(manifest: dict) -> dict[str, dict[str, dict[str, InputProfile]]]:
    """Per graph, per optimization profile (in engine order), per input: (min, opt, max) shapes.
    A graph listing `profiles` gets one per named manifest profile; the others one, "default",
    from the manifest's dimension ranges."""
    profiles: dict[str, dict[str, dict[str, InputProfile]]] = {}
    for graph, info in manifest["graphs"].items():
        named = {p: manifest["dims"] | manifest["profiles"][p] for p in info["profiles"]}
        profiles[graph] = {
            profile: _input_profiles(graph, info, ranges)
            for profile, ranges in (named or {"default": manifest["dims"]}).items()
        }
    return profiles


def _input_profiles(graph: str, info: dict, ranges: dict) -> dict[str, InputProfile]:
    shapes = {}
    for tensor in info["inputs"]:
        missing = [d for d in tensor["dims"] if isinstance(d, str) and d not in ranges]
        if missing:
            raise UserError(f"{graph}.onnx input {tensor['name']}: no range for dimension {missing[0]} in the manifest")
        corners = [
            tuple(ranges[d][k] if isinstance(d, str) else d for d in tensor["dims"]) for k in ("min", "opt", "max")
        ]
        shapes[tensor["name"]] = InputProfile(*corners)
    return shapes


def check_profiles(folder: Path, manifest: dict, profiles: dict[str, dict[str, InputProfile]]) -> None:
    """Refuse, before any build, profiles TensorRT would reject or graphs the lint rejects over them."""
    for graph, named in profiles.items():
        for profile, shapes in named.items():
            for name, p in shapes.items():
                # Lengths may be 0: the context phase's empty caches, the generation phase's empty prompt.
                for axis, (low, opt, high) in enumerate(zip(p.min, p.opt, p.max, strict=True)):
                    if not 0 <= low <= opt <= high:
                        raise UserError(
                            f"{graph} {profile} profile: input {name} axis {axis} has min/opt/max {low}/{opt}/{high}; "
                            "TensorRT needs 0 <= min <= opt <= max"
                        )
    ranges = {name: (r["min"], r["opt"], r["max"]) for name, r in manifest["dims"].items()}
    for graph in profiles:
        path = export_file(folder, manifest["graphs"][graph]["file"], f"graphs.{graph}.file")
        issues = lint_model(path, graph_name=path.name, dim_ranges=ranges, opset_range=(manifest["opset"],) * 2)
        if issues:
            raise UserError(
                f"{path.name} fails the TensorRT lint over its profile: {format_issues(issues[:1]).strip()}"
            )


def profiles_json(profiles: dict[str, dict[str, dict[str, InputProfile]]]) -> str:
    """{graph: {profile: {input: {"min": shape, "opt": shape, "max": shape}}}}, one input per line."""
    graphs = []
    for graph, named in profiles.items():
        blocks = []
        for profile, shapes in named.items():
            rows = [
                f"      {json.dumps(name)}: {json.dumps({'min': p.min, 'opt': p.opt, 'max': p.max})}"
                for name, p in shapes.items()
            ]
            blocks.append(f"    {json.dumps(profile)}: {{\n" + ",\n".join(rows) + "\n    }")
        graphs.append(f"  {json.dumps(graph)}: {{\n" + ",\n".join(blocks) + "\n  }")
    return "{\n" + ",\n".join(graphs) + "\n}\n"


def finish_command(folder: Path, workspace_gib: float | None, timing_cache: str | None) -> str:
    command = f"vtpexport build --from {folder} --engine trt"
    if workspace_gib is not None:
        command += f" --workspace {workspace_gib:g}"
    if timing_cache is not None:
        command += f" --timing-cache {timing_cache}"
    return command


# --- TensorRT, looked up by name ---------------------------------------------------------------


def import_tensorrt():
    """The tensorrt module, or a UserError saying why there is none."""
    try:
        import tensorrt
    except (ImportError, OSError) as error:  # OSError: the wheel is there but its libraries are not
        raise UserError(f"TensorRT is not installed here ({error})") from None
    major = int(str(tensorrt.__version__).split(".")[0])
    if major < MIN_TENSORRT_MAJOR:
        raise UserError(
            f"TensorRT {tensorrt.__version__} is too old; engines need TensorRT {MIN_TENSORRT_MAJOR} or later"
        )
    return tensorrt


def cuda_device() -> tuple[str, str]:
    """(GPU name, compute capability) of device 0, or a UserError without a CUDA GPU."""
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            f"no CUDA GPU is visible here (torch {torch.__version__}: torch.cuda.is_available() is False; "
            "engines need a GPU and a CUDA build of torch)"
        )
    major, minor = torch.cuda.get_device_capability(0)
    return torch.cuda.get_device_name(0), f"{major}.{minor}"


def network_flags(trt) -> int:
    """Strongly typed where that is a choice: TensorRT 10 has weak typing (BuilderFlag.FP16 exists)
    and a STRONGLY_TYPED creation flag; 11 is always strongly typed and deprecates the flag."""
    weakly_typed_by_default = hasattr(trt.BuilderFlag, "FP16")
    if weakly_typed_by_default:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


def _flag(enum, name: str):
    return getattr(enum, name, None)


class EngineBuildError(UserError):
    pass


def collecting_logger(trt):
    """A TensorRT logger that keeps error messages (they name the layer, i.e. the ONNX node)."""

    class CollectingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, message):
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(str(message))

    return CollectingLogger()


def _parser_errors(parser) -> str:
    errors = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        errors.append(f"node {error.node()} '{error.node_name()}' ({error.node_operator()}): {error.desc()}")
    return "; ".join(errors) or "no error recorded"


def build_engine(
    trt,
    onnx_path: Path,
    profiles: dict[str, dict[str, InputProfile]],
    precision: str,
    workspace_bytes: int,
    timing_cache: bytes,
) -> tuple[bytes, bytes]:
    """Build one engine with `profiles` as its optimization profiles, in order (the runner selects
    them by index); returns (serialized engine, updated timing cache)."""
    logger = collecting_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    # From the file, not bytes: graphs over 2 GB keep their weights in .onnx.data beside it.
    if not parser.parse_from_file(str(onnx_path)):
        raise EngineBuildError(f"TensorRT cannot parse {onnx_path.name}: {_parser_errors(parser)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    tf32 = _flag(trt.BuilderFlag, "TF32")
    if precision == "fp32" and tf32 is not None:
        config.clear_flag(tf32)  # TF32 matmuls would put an fp32 export outside verify's 1e-4
    for shapes in profiles.values():
        optimization = builder.create_optimization_profile()
        for name, p in shapes.items():
            optimization.set_shape(name, p.min, p.opt, p.max)
        config.add_optimization_profile(optimization)
    cache = config.create_timing_cache(timing_cache)
    config.set_timing_cache(cache, False)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        messages = "; ".join(logger.errors) or "no error message from TensorRT"
        raise EngineBuildError(f"TensorRT could not build {onnx_path.name}: {messages}")
    return bytes(engine), bytes(config.get_timing_cache().serialize())


def _write_bytes(path: Path, data: bytes, what: str) -> None:
    write_atomically(path, lambda stream: stream.write(data), what)


def build_engines(
    folder: str | Path,
    workspace_gib: float | None = None,
    timing_cache: str | None = None,
    report: Callable[[str], None] = lambda message: None,
) -> dict:
    """Build vision / llm (/ text_encoder) engines beside the ONNX; returns the new manifest.

    Without TensorRT or a CUDA GPU this raises a UserError that names the command to finish with
    on a GPU machine; profiles.json is written first either way.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    changed = folder_differences(folder, manifest)
    if changed:
        raise UserError(f"{folder} does not match its manifest: {', '.join(changed)}")
    incompatible = manifest.get("onnx_runtime_only")
    if incompatible:
        raise UserError(f"no TensorRT engines for {folder}: {incompatible}")
    profiles = engine_profiles(manifest)
    check_profiles(folder, manifest, profiles)
    written = profiles_json(profiles)
    if not (folder / PROFILES).is_file() or (folder / PROFILES).read_text() != written:
        _write_bytes(folder / PROFILES, written.encode(), PROFILES)  # exports from before profiles.json existed
        manifest = update_manifest(folder)
    try:
        trt = import_tensorrt()
        gpu, capability = cuda_device()
    except UserError as error:
        raise UserError(
            f"{error}: {folder} has the ONNX graphs, manifest.json and {PROFILES}; finish on a GPU machine "
            f"with TensorRT: {finish_command(folder, workspace_gib, timing_cache)}"
        ) from None
    workspace = int((workspace_gib or DEFAULT_WORKSPACE_GIB) * (1 << 30))
    cache_path = Path(timing_cache) if timing_cache else None
    cache = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    engines = {}
    # Engines wait in a hidden folder until all are built: a failure (or a full disk) leaves
    # the export as it was, with no engine the manifest does not list.
    with files_atomically(folder, "the engines") as staging:
        for graph, named in profiles.items():
            report(f"building {engine_file(graph)} (TensorRT {trt.__version__}, {gpu}; profiles {', '.join(named)})")
            engine, cache = build_engine(
                trt,
                export_file(folder, manifest["graphs"][graph]["file"], f"graphs.{graph}.file"),
                named,
                manifest["precision"],
                workspace,
                cache,
            )
            _write_bytes(staging / engine_file(graph), engine, f"the {graph} engine")
            engines[graph] = engine_file(graph)
    if cache_path:
        _write_bytes(cache_path, cache, "the timing cache")
    tensorrt = {
        "version": str(trt.__version__),
        "gpu": gpu,
        "compute_capability": capability,
        "workspace_bytes": workspace,
        "engines": engines,
        "profiles": PROFILES,
    }
    return update_manifest(folder, engine="trt", tensorrt=tensorrt)
