"""Stand-ins for the `tensorrt` module of given releases, exposing exactly the enum names each
release's Python bindings have, so that code touching a removed name fails here as it would
on that release. They record the calls made and return fake engine bytes; no kernel runs.

TENSORRT_NAMES was read from NVIDIA/TensorRT's bindings (python/src/infer/pyCore.cpp and
pyGraph.cpp) at the 10.0 GA, 10.16 and 11.1 OSS releases, and agrees with NVIDIA's
10.x -> 11.x Python migration reference (docs.nvidia.com/deeplearning/tensorrt/latest/api/
migration/tensorrt-10x-to-11x-python-api-reference.html): 11 drops BuilderFlag FP16 / BF16 /
INT8 / FP8 / INT4 / FP4 / OBEY_PRECISION_CONSTRAINTS / PREFER_PRECISION_CONSTRAINTS,
NetworkDefinitionCreationFlag.EXPLICIT_BATCH and Builder.platform_has_fast_fp16, and keeps
STRONGLY_TYPED only as an ignored, deprecated flag (networks are always strongly typed).
The 11.1 sources still bind BuilderFlag.DIRECT_IO, which the guide lists as removed.
A member's position is its integer value.
"""

from __future__ import annotations

import types

_MEMORY_POOLS = [
    "WORKSPACE",
    "DLA_MANAGED_SRAM",
    "DLA_LOCAL_DRAM",
    "DLA_GLOBAL_DRAM",
    "TACTIC_DRAM",
    "TACTIC_SHARED_MEMORY",
]
_DATA_TYPES = ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8", "BF16", "INT64", "INT4"]

# fmt: off
TENSORRT_NAMES = {
    "10.0.1": {
        "BuilderFlag": [
            "FP16", "BF16", "INT8", "DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "TF32",
            "SPARSE_WEIGHTS", "SAFETY_SCOPE", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS",
            "DIRECT_IO", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME", "FP8", "ERROR_ON_TIMING_CACHE_MISS",
            "DISABLE_COMPILATION_CACHE", "WEIGHTLESS", "STRIP_PLAN", "REFIT_IDENTICAL", "WEIGHT_STREAMING",
        ],
        "NetworkDefinitionCreationFlag": ["EXPLICIT_BATCH", "STRONGLY_TYPED"],
        "MemoryPoolType": _MEMORY_POOLS,
        "DataType": _DATA_TYPES,
        "TensorIOMode": ["NONE", "INPUT", "OUTPUT"],
        "builder_attributes": ["platform_has_fast_fp16", "platform_has_fast_int8", "platform_has_tf32"],
    },
    "10.16.0": {
        "BuilderFlag": [
            "FP16", "BF16", "INT8", "DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE",
            "EDITABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS", "SAFETY_SCOPE", "OBEY_PRECISION_CONSTRAINTS",
            "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME", "FP8",
            "ERROR_ON_TIMING_CACHE_MISS", "DISABLE_COMPILATION_CACHE", "WEIGHTLESS", "STRIP_PLAN",
            "REFIT_IDENTICAL", "WEIGHT_STREAMING", "INT4", "REFIT_INDIVIDUAL", "STRICT_NANS", "MONITOR_MEMORY",
            "FP4", "DISTRIBUTIVE_INDEPENDENCE",
        ],
        "NetworkDefinitionCreationFlag": [
            "EXPLICIT_BATCH", "STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS", "PREFER_JIT_PYTHON_PLUGINS",
        ],
        "MemoryPoolType": _MEMORY_POOLS,
        "DataType": [*_DATA_TYPES, "FP4"],
        "TensorIOMode": ["NONE", "INPUT", "OUTPUT"],
        "builder_attributes": ["platform_has_fast_fp16", "platform_has_fast_int8", "platform_has_tf32"],
    },
    "11.1.0": {
        "BuilderFlag": [
            "DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "EDITABLE_TIMING_CACHE", "TF32",
            "SPARSE_WEIGHTS", "SAFETY_SCOPE", "DIRECT_IO", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME",
            "ERROR_ON_TIMING_CACHE_MISS", "DISABLE_COMPILATION_CACHE", "STRIP_PLAN", "REFIT_IDENTICAL",
            "WEIGHT_STREAMING", "REFIT_INDIVIDUAL", "STRICT_NANS", "MONITOR_MEMORY", "DISTRIBUTIVE_INDEPENDENCE",
        ],
        "NetworkDefinitionCreationFlag": ["STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS", "PREFER_JIT_PYTHON_PLUGINS"],
        "MemoryPoolType": _MEMORY_POOLS,
        "DataType": [*_DATA_TYPES, "FP4", "E8M0"],
        "TensorIOMode": ["NONE", "INPUT", "OUTPUT"],
        "builder_attributes": [],
    },
}
# fmt: on


class _Enum:
    """An enum exposing exactly `members`; any other name raises AttributeError like the bindings."""

    def __init__(self, name: str, members: list[str]):
        self._name = name
        for value, member in enumerate(members):
            setattr(self, member, value)


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


def fake_tensorrt(version: str, parse_errors: list[ParserError] = (), build_error: str | None = None):
    """A `tensorrt` module of `version`; `trt.calls` records what the builder was asked."""
    names = TENSORRT_NAMES[version]
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []
    for enum in ("BuilderFlag", "NetworkDefinitionCreationFlag", "MemoryPoolType", "DataType", "TensorIOMode"):
        setattr(trt, enum, _Enum(enum, names[enum]))

    class ILogger:
        Severity = _Enum("Severity", ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"])

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

        def set_memory_pool_limit(self, pool, size):
            trt.calls.append(("set_memory_pool_limit", pool, size))

        def set_flag(self, flag):
            trt.calls.append(("set_flag", flag))

        def clear_flag(self, flag):
            trt.calls.append(("clear_flag", flag))

        def add_optimization_profile(self, profile):
            trt.calls.append(("add_optimization_profile", dict(profile.shapes)))

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
            self.source = None

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
            if build_error is not None:
                self.logger.log(ILogger.Severity.ERROR, build_error)
                return None
            # The build "learns" timings: the cache it leaves names every graph built with it.
            config.cache = TimingCache(config.cache.data + network.source.encode() + b";")
            return f"engine of {network.source} (TensorRT {version})".encode()

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.errors = list(parse_errors)

        def parse_from_file(self, path):
            self.network.source = path.rsplit("/", 1)[-1]
            return not self.errors

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, index):
            return self.errors[index]

    trt.ILogger, trt.Builder, trt.OnnxParser = ILogger, Builder, OnnxParser
    return trt
