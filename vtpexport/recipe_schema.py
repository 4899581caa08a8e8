"""What a recipe document may hold. `Recipe.from_dict` and the specs' `validate` check against
these, so there is one validation layer for files and code alike.

Each method's fields, types, ranges and cross-field rules are declared by the method itself
(pruning/<method>.py, read through pruning/registry.py's SELECTOR / SCHEDULE schemas).
"""

from __future__ import annotations

from .pruning.registry import SCHEDULE, SELECTOR
from .schema import SLUG, Field, Int, Nullable, Record, Text, Tree

MODEL_REF = Record(
    {
        "family": Field(Text(pattern=r"[a-z0-9.+-]+", meaning="a model family name", max_length=64)),
        "name": Field(Text(pattern=r"\S(.*\S)?", meaning="a model alias, built-in name or folder", max_length=1024)),
        "config_hash": Field(Text(pattern=r"[0-9a-f]{8,64}", meaning="a hex config hash")),
    },
    what="a model mapping",
)
RECIPE = Record(
    {
        "version": Field(Int(1)),  # which versions this tool reads: Recipe.from_dict
        "name": Field(SLUG),
        "model": Field(MODEL_REF),
        "position_policy": Field(Text(choices=("original", "renumbered")), required=False),
        "selector": Field(Nullable(SELECTOR), required=False),
        "schedule": Field(Nullable(SCHEDULE), required=False),
        "provenance": Field(Nullable(Tree(mapping=True)), required=False),
    },
    what="a recipe mapping",
)
