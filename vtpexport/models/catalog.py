"""What `vtpexport models` lists: every alias and built-in, its size and its weights."""

from __future__ import annotations

from dataclasses import dataclass

from .aliases import ALIASES
from .builtin import BUILTIN_NAMES
from .loader import meta_graph, resolve_model


@dataclass
class CatalogRow:
    name: str
    kind: str
    family: str
    parameters: int
    weights: str


def catalog() -> list[CatalogRow]:
    rows = []
    for name in [*ALIASES, *BUILTIN_NAMES]:
        source = resolve_model(name)
        args = source.args
        parameters = sum(p.numel() for p in meta_graph(args).parameters())
        weights = str(source.folder) if source.folder else "not found (pass --weights DIR)"
        rows.append(CatalogRow(name, source.kind, args.family, parameters, weights))
    return rows
