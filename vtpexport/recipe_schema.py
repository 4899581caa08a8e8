"""What a recipe document may hold: the declared fields of each selector and schedule method,
their types and ranges, and the cross-field rules. `Recipe.from_dict` and the specs'
`validate` check against these, so there is one validation layer for files and code alike.

The per-method field tables (`SELECTOR_FIELDS`, `SCHEDULE_FIELDS`) are plain data, so that a
method registry can own each method's entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .schema import SLUG, Field, Int, ListOf, Nullable, Number, Record, Tagged, Text, Tree

RATIO = Number(0, 1, open_low=True)  # a share kept: (0, 1]
COUNT = Int(0)
NULLABLE_COUNT = Nullable(COUNT)
ORDER = Text(choices=("raster", "score"))


def _all_or_none(*keys: str):
    def rule(record: Mapping[str, Any]) -> str | None:
        if len({record.get(key) is None for key in keys}) > 1:
            return f"give {', '.join(keys[:-1])} and {keys[-1]} together (a fixed budget) or none (adaptive)"
        return None

    return rule


def _drops_within_tokens(record: Mapping[str, Any]) -> str | None:
    if sum(record["drop"]) > record["visual_tokens"]:
        return f"drop sums to {sum(record['drop'])}, more than the {record['visual_tokens']} visual_tokens"
    return None


def _increasing_layers(record: Mapping[str, Any]) -> str | None:
    layers = list(record["layers"])
    if layers != sorted(set(layers)):
        return f"layers must be strictly increasing, got {layers}"
    return None


# method -> its fields (besides `method`), and the rules tying them together.
SELECTOR_FIELDS: dict[str, tuple[dict[str, Field], tuple]] = {
    "fopru-rank": ({"ratio": Field(RATIO)}, ()),
    "fopru-row": ({"ratio": Field(RATIO)}, ()),
    "prumerge": ({"tokens": Field(NULLABLE_COUNT, required=False), "order": Field(ORDER, required=False)}, ()),
    "prumerge+": ({"tokens": Field(NULLABLE_COUNT, required=False)}, ()),
    "recover": (
        {key: Field(NULLABLE_COUNT, required=False) for key in ("tokens", "text_tokens", "merge_tokens")},
        (_all_or_none("tokens", "text_tokens", "merge_tokens"),),
    ),
}
SCHEDULE_FIELDS: dict[str, tuple[dict[str, Field], tuple]] = {
    "fitprune": (
        {"drop": Field(ListOf(COUNT, min_length=1)), "visual_tokens": Field(Int(1))},
        (_drops_within_tokens,),
    ),
    "pyramiddrop": (
        {"layers": Field(ListOf(Int(1), min_length=1)), "ratio": Field(RATIO)},
        (_increasing_layers,),
    ),
    # FastV's ratio is the share dropped after `layer`: [0, 1] (1 keeps only the text, a tested edge case).
    "fastv": ({"layer": Field(Int(1)), "ratio": Field(Number(0, 1))}, ()),
}
# What a serialised spec writes for fields of other methods (`SelectorSpec` / `ScheduleSpec`
# defaults): accepted at exactly these values, refused at any other.
SELECTOR_DEFAULTS = {"ratio": None, "tokens": None, "order": "raster", "text_tokens": None, "merge_tokens": None}
SCHEDULE_DEFAULTS = {"drop": [], "visual_tokens": None, "layers": [], "ratio": 0.5, "layer": 2}


def _methods(table: dict[str, tuple[dict[str, Field], tuple]], what: str) -> dict[str, Record]:
    return {method: Record(fields, rules, what) for method, (fields, rules) in table.items()}


SELECTOR = Tagged("method", _methods(SELECTOR_FIELDS, "a selector"), SELECTOR_DEFAULTS, "a selector mapping")
SCHEDULE = Tagged("method", _methods(SCHEDULE_FIELDS, "a schedule"), SCHEDULE_DEFAULTS, "a schedule mapping")
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
