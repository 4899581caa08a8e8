"""Stand-ins for the `tensorrt` module of given releases, for a machine without TensorRT or a GPU.

Names: each release's enums expose exactly the member names its Python bindings bind
(python/src/infer/pyCore.cpp and pyFoundationalTypes.cpp of NVIDIA/TensorRT at the 10.0,
10.16 and 11.1 OSS releases), so code touching a removed name fails here as it would there.
This agrees with NVIDIA's 10.x -> 11.x Python migration reference: 11 drops BuilderFlag FP16 /
BF16 / INT8 / FP8 / INT4 / FP4 / OBEY_PRECISION_CONSTRAINTS / PREFER_PRECISION_CONSTRAINTS /
REJECT_EMPTY_ALGORITHMS / WEIGHTLESS, NetworkDefinitionCreationFlag.EXPLICIT_BATCH and
Builder.platform_has_fast_fp16, and keeps STRONGLY_TYPED only as a deprecated flag (networks
are always strongly typed); the 11.1 sources still bind BuilderFlag.DIRECT_IO, which the guide
lists as removed. Values: a member converts to the integer of its C++ enumerator in that
release's headers (include/NvInfer*.h); they are not positions (11 renumbered
STRONGLY_TYPED from 1 to 0, BuilderFlag.TF32 is 6 with gaps around it).

Building records the builder's calls (`trt.calls`) and checks what TensorRT's builder checks
of profiles: every input with a runtime dimension has a shape in every profile, of the
network's rank and fixed dimensions, with min <= opt <= max. Parsing reads the ONNX file's
inputs and outputs (names, element types, dimensions; no weights). The "serialized engine" is
not a TensorRT plan: it is JSON naming the ONNX file it was parsed from, the release and the
profiles, and nothing is compiled or fused, so it says nothing about which layers TensorRT
accepts, fuses or how fast they run.

Running: `Runtime.deserialize_cuda_engine` of such bytes gives an engine with TensorRT's
named-tensor interface (num_io_tensors, get_tensor_name / mode / dtype / shape,
num_optimization_profiles, get_tensor_profile_shape) whose execution contexts run the ONNX file
with ONNX Runtime on the CPU. A context follows the IExecutionContext contract the runner
relies on: it starts on profile 0; set_optimization_profile_async(index, stream_handle) takes
an integer stream handle, raises RuntimeError for an index out of range (as the bindings do)
and drops the input shapes set so far (they must be set again after a switch);
set_input_shape returns False for a shape of the wrong rank, off a fixed dimension or outside
the active profile; get_tensor_shape of an output is known once every input shape is set;
set_tensor_address takes an integer address; execute_async_v3(stream_handle) fails (False)
when an input has no shape or an input or output has no address, reads each input from its
address and writes each output to its address. Addresses are host addresses (torch CPU tensors
stand in for device memory); alignment is not checked (TensorRT wants 256 bytes, which torch's
CUDA allocator gives), and execution is synchronous. Output shapes come from running the
graph on zeros of the set input shapes, where TensorRT derives them from the shapes alone: a
shape that depends on input values (TensorRT would report -1) shows up only as a mismatch at
execution, which fails. `trt.calls` also records each profile switch and each execution's
profile and addresses.
"""

from __future__ import annotations

import ctypes
import json
import types
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx

_MEMORY_POOLS = {
    "WORKSPACE": 0,
    "DLA_MANAGED_SRAM": 1,
    "DLA_LOCAL_DRAM": 2,
    "DLA_GLOBAL_DRAM": 3,
    "TACTIC_DRAM": 4,
    "TACTIC_SHARED_MEMORY": 5,
}
_DATA_TYPES = {
    "FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5, "FP8": 6, "BF16": 7, "INT64": 8, "INT4": 9,
}  # fmt: skip
_IO_MODES = {"NONE": 0, "INPUT": 1, "OUTPUT": 2}

# fmt: off
TENSORRT_NAMES = {
    "10.0.1": {
        "BuilderFlag": {
            "FP16": 0, "BF16": 17, "INT8": 1, "DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5,
            "TF32": 6, "SPARSE_WEIGHTS": 7, "SAFETY_SCOPE": 8, "OBEY_PRECISION_CONSTRAINTS": 9,
            "PREFER_PRECISION_CONSTRAINTS": 10, "DIRECT_IO": 11, "REJECT_EMPTY_ALGORITHMS": 12,
            "VERSION_COMPATIBLE": 13, "EXCLUDE_LEAN_RUNTIME": 14, "FP8": 15, "ERROR_ON_TIMING_CACHE_MISS": 16,
            "DISABLE_COMPILATION_CACHE": 18, "WEIGHTLESS": 19, "STRIP_PLAN": 19, "REFIT_IDENTICAL": 20,
            "WEIGHT_STREAMING": 21,
        },
        "NetworkDefinitionCreationFlag": {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1},
        "MemoryPoolType": _MEMORY_POOLS,
        "DataType": _DATA_TYPES,
        "TensorIOMode": _IO_MODES,
        "builder_attributes": ["platform_has_fast_fp16", "platform_has_fast_int8", "platform_has_tf32"],
    },
    "10.16.0": {
        "BuilderFlag": {
            "FP16": 0, "BF16": 17, "INT8": 1, "DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5,
            "EDITABLE_TIMING_CACHE": 27, "TF32": 6, "SPARSE_WEIGHTS": 7, "SAFETY_SCOPE": 8,
            "OBEY_PRECISION_CONSTRAINTS": 9, "PREFER_PRECISION_CONSTRAINTS": 10, "DIRECT_IO": 11,
            "REJECT_EMPTY_ALGORITHMS": 12, "VERSION_COMPATIBLE": 13, "EXCLUDE_LEAN_RUNTIME": 14, "FP8": 15,
            "ERROR_ON_TIMING_CACHE_MISS": 16, "DISABLE_COMPILATION_CACHE": 18, "WEIGHTLESS": 19, "STRIP_PLAN": 19,
            "REFIT_IDENTICAL": 20, "WEIGHT_STREAMING": 21, "INT4": 22, "REFIT_INDIVIDUAL": 23, "STRICT_NANS": 24,
            "MONITOR_MEMORY": 25, "FP4": 26, "DISTRIBUTIVE_INDEPENDENCE": 28,
        },
        "NetworkDefinitionCreationFlag": {
            "EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1, "PREFER_JIT_PYTHON_PLUGINS": 2, "PREFER_AOT_PYTHON_PLUGINS": 3,
        },
        "MemoryPoolType": _MEMORY_POOLS,
        "DataType": {**_DATA_TYPES, "FP4": 10, "E8M0": 11},
        "TensorIOMode": _IO_MODES,
        "builder_attributes": ["platform_has_fast_fp16", "platform_has_fast_int8", "platform_has_tf32"],
    },
    "11.1.0": {
        "BuilderFlag": {
            "DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "EDITABLE_TIMING_CACHE": 26,
            "TF32": 6, "SPARSE_WEIGHTS": 7, "SAFETY_SCOPE": 8, "DIRECT_IO": 11, "VERSION_COMPATIBLE": 12,
            "EXCLUDE_LEAN_RUNTIME": 13, "ERROR_ON_TIMING_CACHE_MISS": 15, "DISABLE_COMPILATION_CACHE": 17,
            "STRIP_PLAN": 18, "REFIT_IDENTICAL": 19, "WEIGHT_STREAMING": 20, "REFIT_INDIVIDUAL": 22,
            "STRICT_NANS": 23, "MONITOR_MEMORY": 24, "DISTRIBUTIVE_INDEPENDENCE": 27,
        },
        "NetworkDefinitionCreationFlag": {
            "STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2,
        },
        "MemoryPoolType": _MEMORY_POOLS,
        "DataType": {**_DATA_TYPES, "FP4": 10, "E8M0": 11},
        "TensorIOMode": _IO_MODES,
        "builder_attributes": [],
    },
}
# fmt: on

# ONNX element type -> (TensorRT DataType name, numpy dtype) for the types our graphs' inputs and outputs use.
_ONNX_TYPES = {
    onnx.TensorProto.FLOAT: ("FLOAT", np.float32),
    onnx.TensorProto.FLOAT16: ("HALF", np.float16),
    onnx.TensorProto.BFLOAT16: ("BF16", ml_dtypes.bfloat16),
    onnx.TensorProto.INT8: ("INT8", np.int8),
    onnx.TensorProto.UINT8: ("UINT8", np.uint8),
    onnx.TensorProto.INT32: ("INT32", np.int32),
    onnx.TensorProto.INT64: ("INT64", np.int64),
    onnx.TensorProto.BOOL: ("BOOL", np.bool_),
}


class _Member:
    """One enum member: compared by identity, hashable, int() is its C++ value."""

    def __init__(self, enum: str, name: str, value: int):
        self.name, self.value, self._enum = name, value, enum

    def __int__(self):
        return self.value

    def __repr__(self):
        return f"<{self._enum}.{self.name}: {self.value}>"


class _Enum:
    """An enum exposing exactly `members`; any other name raises AttributeError like the bindings."""

    def __init__(self, name: str, members: dict[str, int]):
        for member, value in members.items():
            setattr(self, member, _Member(name, member, value))


class ParserError:
    def __init__(self, node: int, name: str, operator: str, desc: str):
        self._fields = (node, name, operator, desc)

    def node(self):
        return self._fields[0]

    def node_name(self):
        return self._fields[1]

    def node_operator(self):
        return self._fields[2]

    def desc(self):
        return self._fields[3]


def engine_source(serialized: bytes) -> dict:
    """What a stand-in engine holds: {"onnx": path, "tensorrt": version, "profiles": [...]}."""
    return json.loads(bytes(serialized))


class HostStream:
    """In place of torch.cuda.Stream for the runner on a CPU: an integer handle, nothing to wait for."""

    _next_handle = 1

    def __init__(self, *args, **kwargs):
        self.cuda_stream = HostStream._next_handle
        HostStream._next_handle += 1

    def wait_stream(self, other):
        pass

    def synchronize(self):
        pass


def _io_of(path: Path) -> list[dict]:
    """The graph's inputs then outputs: name, mode, ONNX element type and dims (-1 where named)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    tensors = []
    for mode, values in (("INPUT", graph.input), ("OUTPUT", graph.output)):
        for value in values:
            shape = value.type.tensor_type.shape
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in shape.dim]
            tensors.append({"name": value.name, "mode": mode, "type": value.type.tensor_type.elem_type, "dims": dims})
    return tensors


def fake_tensorrt(version: str, parse_errors: list[ParserError] = (), build_error: str | None = None):
    """A `tensorrt` module of `version`; `trt.calls` records what the builder and contexts were asked."""
    names = TENSORRT_NAMES[version]
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []
    for enum in ("BuilderFlag", "NetworkDefinitionCreationFlag", "MemoryPoolType", "DataType", "TensorIOMode"):
        setattr(trt, enum, _Enum(enum, names[enum]))

    class ILogger:
        Severity = _Enum("Severity", {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4})

        def __init__(self):
            pass

    class TimingCache:
        def __init__(self, data: bytes):
            self.data = bytes(data)

        def serialize(self):
            return self.data

    class Config:
        def __init__(self):
            self.cache = None
            self.profiles = []

        def set_memory_pool_limit(self, pool, size):
            trt.calls.append(("set_memory_pool_limit", pool, size))

        def set_flag(self, flag):
            trt.calls.append(("set_flag", flag))

        def clear_flag(self, flag):
            trt.calls.append(("clear_flag", flag))

        def add_optimization_profile(self, profile):
            trt.calls.append(("add_optimization_profile", dict(profile.shapes)))
            self.profiles.append(dict(profile.shapes))
            return len(self.profiles) - 1

        def create_timing_cache(self, data):
            trt.calls.append(("create_timing_cache", bytes(data)))
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, low, opt, high):
            self.shapes[name] = (tuple(low), tuple(opt), tuple(high))

    class Network:
        def __init__(self, flags):
            self.path, self.source, self.io = None, None, []

    def profile_error(network: Network, profiles: list[dict]) -> str | None:
        """TensorRT's builder checks of the profiles against the network's inputs."""
        if not profiles and any(-1 in t["dims"] for t in network.io):
            return "Network has dynamic or shape inputs, but no optimization profile has been defined."
        for index, shapes in enumerate(profiles):
            for tensor in (t for t in network.io if t["mode"] == "INPUT"):
                if tensor["name"] not in shapes:
                    if -1 in tensor["dims"]:
                        return f"{tensor['name']}: dynamic input is missing dimensions in profile {index}."
                    continue
                for corner in shapes[tensor["name"]]:
                    fixed = all(d in (-1, c) for d, c in zip(tensor["dims"], corner, strict=False))
                    if len(corner) != len(tensor["dims"]) or not fixed:
                        return f"{tensor['name']}: profile {index} shape {corner} does not match {tensor['dims']}"
                low, opt, high = shapes[tensor["name"]]
                if not all(a <= b <= c for a, b, c in zip(low, opt, high, strict=True)):
                    return f"{tensor['name']}: profile {index} needs min <= opt <= max, got {low} {opt} {high}"
        return None

    class Builder:
        def __init__(self, logger):
            self.logger = logger
            for attribute in names["builder_attributes"]:
                setattr(self, attribute, True)

        def create_network(self, flags=0):
            trt.calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            error = build_error or profile_error(network, config.profiles)
            if error is not None:
                self.logger.log(ILogger.Severity.ERROR, error)
                return None
            # The build "learns" timings: the cache it leaves names every graph built with it.
            config.cache = TimingCache(config.cache.data + network.source.encode() + b";")
            profiles = [{name: [list(c) for c in corners] for name, corners in p.items()} for p in config.profiles]
            return json.dumps({"onnx": network.path, "tensorrt": version, "profiles": profiles}).encode()

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.errors = list(parse_errors)

        def parse_from_file(self, path):
            if not self.errors and not Path(path).is_file():
                self.errors = [ParserError(-1, "", "", f"Failed to open file: {path}")]
            if self.errors:
                return False
            self.network.path, self.network.source = str(Path(path).resolve()), Path(path).name
            self.network.io = _io_of(Path(path))
            return True

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, index):
            return self.errors[index]

    class ICudaEngine:
        def __init__(self, source: dict, logger):
            import onnxruntime as ort

            self.source, self.logger = source, logger
            self.io = {t["name"]: t for t in _io_of(Path(source["onnx"]))}
            self.session = ort.InferenceSession(source["onnx"], providers=["CPUExecutionProvider"])

        @property
        def num_io_tensors(self):
            return len(self.io)

        @property
        def num_optimization_profiles(self):
            return max(1, len(self.source["profiles"]))

        def get_tensor_name(self, index):
            return list(self.io)[index]

        def get_tensor_mode(self, name):
            return getattr(trt.TensorIOMode, self.io[name]["mode"]) if name in self.io else trt.TensorIOMode.NONE

        def get_tensor_dtype(self, name):
            return getattr(trt.DataType, _ONNX_TYPES[self.io[name]["type"]][0])

        def get_tensor_shape(self, name):
            return tuple(self.io[name]["dims"])

        def get_tensor_profile_shape(self, name, profile_index):
            if self.io[name]["mode"] != "INPUT":
                raise RuntimeError(f"{name} is not an input")
            return [tuple(c) for c in self.source["profiles"][profile_index][name]]

        def create_execution_context(self):
            return IExecutionContext(self)

    class IExecutionContext:
        def __init__(self, engine: ICudaEngine):
            self.engine = engine
            self.active_optimization_profile = 0
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}
            self.output_shapes: dict[tuple, dict[str, tuple[int, ...]]] = {}

        def _inputs(self):
            return [n for n, t in self.engine.io.items() if t["mode"] == "INPUT"]

        def _error(self, message: str) -> bool:
            self.engine.logger.log(ILogger.Severity.ERROR, message)
            return False

        def set_optimization_profile_async(self, profile_index, stream_handle):
            if not isinstance(profile_index, int) or not isinstance(stream_handle, int):
                raise TypeError("set_optimization_profile_async(profile_index: int, stream_handle: int)")
            if not 0 <= profile_index < self.engine.num_optimization_profiles:
                raise RuntimeError("Error in set optimization profile async.")
            trt.calls.append(("set_optimization_profile_async", profile_index))
            self.active_optimization_profile = profile_index
            self.shapes = {}
            return True

        def set_input_shape(self, name, shape):
            shape, tensor = tuple(int(d) for d in shape), self.engine.io.get(name)
            if tensor is None or tensor["mode"] != "INPUT" or len(shape) != len(tensor["dims"]):
                return self._error(f"{name}: not an input of rank {len(shape)}")
            if any(d not in (-1, s) for d, s in zip(tensor["dims"], shape, strict=True)):
                return self._error(f"{name}: shape {shape} does not match the network's {tensor['dims']}")
            profiles = self.engine.source["profiles"]
            if profiles and name in profiles[self.active_optimization_profile]:
                low, _, high = profiles[self.active_optimization_profile][name]
                if not all(a <= s <= b for a, s, b in zip(low, shape, high, strict=True)):
                    return self._error(
                        f"{name}: shape {shape} is outside profile {self.active_optimization_profile} ({low} - {high})"
                    )
            self.shapes[name] = shape
            return True

        def _known_output_shapes(self) -> dict[str, tuple[int, ...]] | None:
            inputs = self._inputs()
            if any(n not in self.shapes for n in inputs):
                return None
            key = tuple(self.shapes[n] for n in inputs)
            if key not in self.output_shapes:
                feeds = {n: np.zeros(self.shapes[n], _ONNX_TYPES[self.engine.io[n]["type"]][1]) for n in inputs}
                outputs = [n for n in self.engine.io if n not in feeds]
                values = self.engine.session.run(outputs, feeds)
                self.output_shapes[key] = {n: v.shape for n, v in zip(outputs, values, strict=True)}
            return self.output_shapes[key]

        def get_tensor_shape(self, name):
            if name in self.shapes:
                return self.shapes[name]
            known = self._known_output_shapes() if self.engine.io[name]["mode"] == "OUTPUT" else None
            return known[name] if known else self.engine.get_tensor_shape(name)

        def set_tensor_address(self, name, memory):
            if not isinstance(memory, int):
                raise TypeError("set_tensor_address(name: str, memory: int)")
            if name not in self.engine.io:
                return False
            self.addresses[name] = memory
            return True

        def execute_async_v3(self, stream_handle):
            if not isinstance(stream_handle, int):
                raise TypeError("execute_async_v3(stream_handle: int)")
            missing = [n for n in self._inputs() if n not in self.shapes]
            missing += [n for n in self.engine.io if not self.addresses.get(n)]
            if missing:
                return self._error(f"enqueueV3: no shape or address for {missing[0]}")
            feeds = {}
            for name in self._inputs():
                dtype, shape = _ONNX_TYPES[self.engine.io[name]["type"]][1], self.shapes[name]
                size = int(np.prod(shape)) * np.dtype(dtype).itemsize
                raw = (ctypes.c_uint8 * size).from_address(self.addresses[name]) if size else b""
                feeds[name] = np.frombuffer(bytes(raw), dtype=dtype).reshape(shape)
            expected = self._known_output_shapes()
            outputs = [n for n in self.engine.io if n not in feeds]
            values = self.engine.session.run(outputs, feeds)
            for name, value in zip(outputs, values, strict=True):
                if value.shape != expected[name]:
                    return self._error(f"{name}: its shape {value.shape} depends on input values")
                value = np.ascontiguousarray(value)
                ctypes.memmove(self.addresses[name], value.ctypes.data, value.nbytes)
            trt.calls.append(
                ("execute_async_v3", Path(self.engine.source["onnx"]).name, self.active_optimization_profile,
                 dict(self.addresses))
            )  # fmt: skip
            return True

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, serialized_engine):
            try:
                source = engine_source(serialized_engine)
            except ValueError:
                source = None
            if source is None or source.get("tensorrt") != version:
                self.logger.log(ILogger.Severity.ERROR, "Serialization assertion failed: version or magic mismatch")
                return None
            return ICudaEngine(source, self.logger)

    trt.ILogger, trt.Builder, trt.OnnxParser, trt.Runtime = ILogger, Builder, OnnxParser, Runtime
    return trt
