"""Run an export folder's TensorRT engines: the same interface as the ONNX Runtime runner.

Device buffers and the CUDA stream come from torch (a CUDA build of torch on the GPU machine);
tensors are bound by name (set_input_shape / set_tensor_address / execute_async_v3), the API
TensorRT 10 and 11 share. The LLM engine has one execution context that switches between its
context and generation profiles; its KV caches stay torch device tensors from one step to the
next, and only the logits come back to the host.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from ..export.manifest import export_file
from ..export.tensorrt import collecting_logger, cuda_device, finish_command, import_tensorrt
from .exported import ExportRunner, to_numpy, to_torch

DEVICE = "cuda"  # where engine tensors live (tests run the runner on a CPU stand-in of TensorRT)

# TensorRT DataType member -> torch dtype, by name (the enum's integers are not part of the API).
_DTYPES = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "INT8": torch.int8,
}


def check_engines_run_here(folder: Path, manifest: dict):
    """TensorRT, imported, when this machine runs the folder's engines (a GPU, TensorRT of the
    version and compute capability they were built for); otherwise a one-line error."""
    built = manifest.get("tensorrt")
    if not built:
        raise UserError(f"{folder} has no TensorRT engines; build them with: {finish_command(folder, None, None)}")
    try:
        trt = import_tensorrt()
        gpu, capability = cuda_device()
    except UserError as error:
        raise UserError(f"{error}: --backend trt runs engines on a CUDA GPU with TensorRT") from None
    if str(trt.__version__) != built["version"] or capability != built["compute_capability"]:
        raise UserError(
            f"the engines in {folder} were built by TensorRT {built['version']} for compute capability "
            f"{built['compute_capability']} ({built['gpu']}); this machine has TensorRT {trt.__version__} and "
            f"{capability} ({gpu}). Rebuild them here: {finish_command(folder, None, None)}"
        )
    return trt


class TrtRunner(ExportRunner):
    """Deserializes the engines recorded in the manifest and runs them on CUDA device 0."""

    def __init__(self, folder: str | Path):
        super().__init__(folder)
        trt = check_engines_run_here(self.folder, self.manifest)
        built = self.manifest["tensorrt"]
        self.trt = trt
        self.logger = collecting_logger(trt)
        self.runtime = trt.Runtime(self.logger)
        self.engines, self.contexts, self.active_profile = {}, {}, {}
        for graph, file in built["engines"].items():
            path = export_file(self.folder, file, f"tensorrt.engines.{graph}")
            engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise UserError(f"TensorRT cannot load {file}: {'; '.join(self.logger.errors) or 'no message'}")
            self.engines[graph] = engine
            self.contexts[graph] = engine.create_execution_context()
            self.active_profile[graph] = 0  # a new context starts on profile 0
        self.dtypes = {
            getattr(trt.DataType, name): dtype for name, dtype in _DTYPES.items() if hasattr(trt.DataType, name)
        }
        self.stream = torch.cuda.Stream()
        self.placeholder = torch.empty(1, dtype=torch.uint8, device=DEVICE)

    def run_graph(self, graph: str, feeds: dict, profile: str | None = None) -> dict:
        """Run one engine, in the optimization profile named `profile` (the LLM's phase). Feeds are
        numpy arrays or torch device tensors (caches the last call returned, used in place); the
        caches come back as device tensors, every other output as numpy."""
        engine, context = self.engines[graph], self.contexts[graph]
        index = self.manifest["graphs"][graph]["profiles"].index(profile) if profile else 0
        if index != self.active_profile[graph]:
            context.set_optimization_profile_async(index, self.stream.cuda_stream)
            self.active_profile[graph] = index
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == self.trt.TensorIOMode.INPUT]
        bound = {}
        for name in inputs:
            feed, dtype = feeds[name], self.dtypes[engine.get_tensor_dtype(name)]
            tensor = feed if isinstance(feed, torch.Tensor) else to_torch(feed).to(DEVICE, dtype).contiguous()
            if not context.set_input_shape(name, tuple(tensor.shape)):
                raise UserError(
                    f"{graph}.plan: input {name} of shape {tuple(tensor.shape)} is outside the engine's "
                    f"{profile or 'default'} profile"
                )
            # An empty tensor has no storage; TensorRT still wants an address, any non-null one.
            context.set_tensor_address(name, tensor.data_ptr() or self.placeholder.data_ptr())
            bound[name] = tensor
        outputs = {}
        for name in names:
            if name in bound:
                continue
            shape = tuple(context.get_tensor_shape(name))
            if any(d < 0 for d in shape):  # known only at execution: our graphs' shapes follow from input shapes
                raise UserError(f"{graph}.plan: output {name} has a data-dependent shape {shape}")
            outputs[name] = torch.empty(shape, dtype=self.dtypes[engine.get_tensor_dtype(name)], device=DEVICE)
            context.set_tensor_address(name, outputs[name].data_ptr() or self.placeholder.data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream())  # the inputs were copied on the current stream
        self.logger.errors.clear()  # what a failure reports is this call's
        if not context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to run {graph}.plan: {'; '.join(self.logger.errors) or 'no message'}")
        self.stream.synchronize()
        return {name: t if name in self.cache_feedback else to_numpy(t.cpu()) for name, t in outputs.items()}
