"""Triton Inference Server Python-backend model written by `vtpexport build --triton-repo`:
greedy generation for one image and prompt, running the export's vision and LLM models of the
same repository through BLS requests (Triton picks the LLM engine's profile from the shapes).

The Python backend's environment needs vtpexport (and its dependencies) installed; the
export's tokenizer, image processor, recipe and manifest are in `export/` beside this file.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image

from vtpexport.runtime.exported import ExportRunner

DEFAULT_MAX_NEW_TOKENS = 64


class BlsRunner(ExportRunner):
    """The shared runner, each graph being a model of this Triton repository."""

    def __init__(self, folder: Path, models: dict[str, str]):
        super().__init__(folder)
        self.models = models
        self.outputs = {g: [t["name"] for t in info["outputs"]] for g, info in self.manifest["graphs"].items()}

    def run_graph(self, graph, feeds, profile=None):
        request = pb_utils.InferenceRequest(
            model_name=self.models[graph],
            requested_output_names=self.outputs[graph],
            inputs=[pb_utils.Tensor(name, np.ascontiguousarray(value)) for name, value in feeds.items()],
        )
        response = request.exec()
        if response.has_error():
            raise pb_utils.TritonModelException(f"{self.models[graph]}: {response.error().message()}")
        return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in self.outputs[graph]}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        models = json.loads(config["parameters"]["graph_models"]["string_value"])
        folder = Path(args["model_repository"]) / args["model_version"] / "export"
        self.runner = BlsRunner(folder, models)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                image = Image.fromarray(pb_utils.get_input_tensor_by_name(request, "image").as_numpy().astype(np.uint8))
                prompt = pb_utils.get_input_tensor_by_name(request, "prompt").as_numpy().reshape(-1)[0]
                prompt = prompt.decode() if isinstance(prompt, bytes) else str(prompt)
                limit = pb_utils.get_input_tensor_by_name(request, "max_new_tokens")
                steps = int(limit.as_numpy().reshape(-1)[0]) if limit is not None else DEFAULT_MAX_NEW_TOKENS
                tokens = self.runner.generate(self.runner.prepare([image], [prompt], steps), steps)[0]
                text = self.runner.tokenizer.decode(tokens, skip_special_tokens=True).strip()
                output = pb_utils.Tensor("text", np.array([text.encode()], dtype=np.object_))
                responses.append(pb_utils.InferenceResponse(output_tensors=[output]))
            except Exception as error:  # one bad request must not fail the others of the batch
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error))))
        return responses
