"""vtpexport: calibrate, bake in and export training-free visual-token pruning for LLaVA models."""

__version__ = "0.1.0"
