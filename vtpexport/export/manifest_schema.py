"""What a manifest.json may hold (version 2), checked by `read_manifest` with the same schema
layer as recipes (vtpexport/schema.py): a manifest that is a list, lacks a key or carries a
path where a file name belongs is refused in one line naming the key."""

from __future__ import annotations

from ..schema import FILE_NAME, SHA256, SLUG, AnyOf, Const, Field, Int, ListOf, MapOf, Nullable, Record, Text, Tree

MANIFEST_VERSION = 2

IDENTIFIER = Text(pattern=r"[A-Za-z_][A-Za-z0-9_.]*", meaning="a tensor or dimension name", max_length=128)
TENSOR = Record(
    {
        "name": Field(IDENTIFIER),
        "dtype": Field(Text(choices=("float32", "float16", "bfloat16", "int64", "int32", "bool"))),
        "dims": Field(ListOf(AnyOf((Int(0), IDENTIFIER)), max_length=8)),
    },
    what="a tensor mapping",
)
GRAPH = Record(
    {
        "name": Field(SLUG),
        "inputs": Field(ListOf(TENSOR, min_length=1)),
        "outputs": Field(ListOf(TENSOR, min_length=1)),
        "file": Field(FILE_NAME),
        "output_dim_expressions": Field(Tree(mapping=True)),
    },
    what="a graph mapping",
)


def _ordered(dims) -> str | None:
    return None if dims["min"] <= dims["opt"] <= dims["max"] else f"needs min <= opt <= max, got {dims}"


DIM_RANGE = Record(
    {key: Field(Int(0)) for key in ("min", "opt", "max")}, rules=(_ordered,), what="a min/opt/max mapping"
)
TENSORRT = Record(
    {
        "version": Field(Text(pattern=r"[0-9][0-9A-Za-z.+-]*", meaning="a TensorRT version")),
        "gpu": Field(Text()),
        "compute_capability": Field(Text(pattern=r"[0-9]+\.[0-9]+", meaning="a compute capability like 9.0")),
        "workspace_bytes": Field(Int(1)),
        "engines": Field(MapOf(FILE_NAME, key=SLUG, min_items=1)),
        "profiles": Field(FILE_NAME),
    },
    what="a TensorRT mapping",
)


def _referenced(manifest) -> list[str]:
    """Every file the manifest tells a reader to open."""
    names = [graph["file"] for graph in manifest["graphs"].values()]
    if manifest.get("tensorrt"):
        names += [*manifest["tensorrt"]["engines"].values(), manifest["tensorrt"]["profiles"]]
    return names


def _all_listed(manifest) -> str | None:
    """A file the readers open must carry a digest, or it could be swapped unseen."""
    unlisted = [name for name in _referenced(manifest) if name not in manifest["files"]]
    return f"{unlisted[0]!r} is used but not in its file list (unlisted)" if unlisted else None


MANIFEST_SCHEMA = Record(
    {
        "manifest_version": Field(Const(MANIFEST_VERSION)),
        "name": Field(SLUG),
        "created": Field(Text(max_length=64)),
        "tool": Field(Text(max_length=128)),
        "engine": Field(Text(choices=("onnx", "trt"))),
        "precision": Field(Text(choices=("fp32", "fp16", "bf16"))),
        "opset": Field(Int(1)),
        "trt_target": Field(
            Record(
                {"major": Field(Int(10, 11)), "attention": Field(Text(max_length=128))},
                what="a TensorRT target mapping",
            )
        ),
        "ir_version": Field(Int(1)),
        "model": Field(
            Record(
                {
                    "name": Field(Text(max_length=1024)),
                    "family": Field(Text(pattern=r"[a-z0-9.+-]+", meaning="a model family name", max_length=64)),
                    "config_hash": Field(Text(pattern=r"[0-9a-f]{8,64}", meaning="a hex config hash")),
                    "source": Field(Text(max_length=4096)),
                },
                what="a model mapping",
            )
        ),
        "recipe": Field(Nullable(Tree(mapping=True))),
        "onnx_runtime_only": Field(Nullable(Text())),
        "text_encoder": Field(
            Nullable(
                Record(
                    {"source": Field(Text(max_length=4096)), "tokenizer": Field(FILE_NAME)},
                    what="a text encoder mapping",
                )
            )
        ),
        "position_policy": Field(Text(choices=("original", "renumbered"))),
        "layer_stage": Field(ListOf(Int(0))),
        "graphs": Field(MapOf(GRAPH, key=SLUG, min_items=1, max_items=16)),
        "dims": Field(MapOf(DIM_RANGE, key=IDENTIFIER)),
        "image_tokens": Field(Tree(mapping=True)),
        "flops": Field(Tree(mapping=True)),
        "tensorrt": Field(TENSORRT, required=False),
        "versions": Field(MapOf(Text(max_length=128))),
        "files": Field(MapOf(SHA256, key=FILE_NAME, min_items=1)),
        "seal": Field(SHA256),
    },
    rules=(_all_listed,),
    what="a manifest mapping",
)
