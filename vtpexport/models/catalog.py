"""What `vtpexport models` lists: every alias and built-in, its size and its weights."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

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


def _size(parameters: int) -> str:
    return f"{parameters / 1e9:.3f} B" if parameters > 1e8 else f"{parameters / 1e6:.2f} M"


def catalog_lines(rows: list[CatalogRow]) -> str:
    """One line per model (name, kind, family, size), its weights' full path on the next: readable
    at 80 columns and piped, where a table would cut the path people look for."""
    width = max(len(row.name) for row in rows)
    lines = []
    for row in rows:
        lines.append(f"{row.name:<{width}}  {row.kind:<8} {row.family:<11} {_size(row.parameters):>9}")
        lines.append(f"    weights: {row.weights}")
    return "\n".join(lines)


def catalog_json(rows: list[CatalogRow]) -> str:
    return json.dumps([asdict(row) for row in rows], indent=2)
