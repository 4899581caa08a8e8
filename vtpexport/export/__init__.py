"""Export: ONNX graphs, the manifest, the TensorRT-compatibility lint."""
