"""Declarative validation of what we read from files (recipe YAML, manifest JSON).

A schema is built from small parts (`Int`, `Number`, `Text`, `ListOf`, `MapOf`, `Record`,
`Tagged`, `Tree`) and checked with `validate(schema, value, source)`. A failure is one
UserError naming the file, the key path and the offending value:

    recipe.yaml: schedule.visual_tokens must be an integer >= 1, got 0

Types are strict: a bool is not a number, a float is not a count, a string is not a number;
unknown keys are refused by name (a misspelt key must not silently mean "absent").
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

_SHOWN_CHARS = 60  # an offending value is quoted, cut to this length


class Invalid(UserError):
    """A value that does not fit its schema; `path` is the key path inside the document.
    A `predicate` message continues the path ("schedule.ratio must be ..."), another one
    follows it after a colon ("schedule: drop sums to ...")."""

    def __init__(self, path: str, message: str, predicate: bool = True):
        super().__init__((f"{path} {message}" if predicate else f"{path}: {message}") if path else message)
        self.path, self.message = path, message


def shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def join(path: str, key: object) -> str:
    """The key path of `key` inside `path`: schedule.drop[3], files['a/b.json']."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if isinstance(key, str) and re.fullmatch(r"[A-Za-z0-9_+-]+", key):
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]"


class Schema:
    """One kind of value; `check` returns it unchanged or raises Invalid."""

    def describe(self) -> str:
        raise NotImplementedError

    def check(self, value: Any, path: str) -> Any:
        raise NotImplementedError

    def fail(self, value: Any, path: str) -> Invalid:
        return Invalid(path, f"must be {self.describe()}, got {shown(value)}")


@dataclass(frozen=True)
class Int(Schema):
    minimum: int | None = None
    maximum: int | None = None

    def describe(self) -> str:
        bounds = [
            f"{sign} {bound}" for sign, bound in ((">=", self.minimum), ("<=", self.maximum)) if bound is not None
        ]
        return " ".join(["an integer", *[" and ".join(bounds)]]).strip()

    def check(self, value, path):
        if type(value) is not int:  # bool is an int subclass, and 3.0 is not a count
            raise self.fail(value, path)
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
            raise self.fail(value, path)
        return value


@dataclass(frozen=True)
class Number(Schema):
    """A finite int or float in a range; `open_low` / `open_high` exclude the bound itself."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            return f"a number in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"a number {'>' if self.open_low else '>='} {self.low:g}"
        return "a number"

    def check(self, value, path):
        if type(value) not in (int, float) or not math.isfinite(value):
            raise self.fail(value, path)
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            raise self.fail(value, path)
        if self.high is not None and (value > self.high or (self.open_high and value == self.high)):
            raise self.fail(value, path)
        return value


@dataclass(frozen=True)
class Text(Schema):
    """A string: one of `choices`, or matching `pattern` (a full match), at most `max_length` long."""

    choices: tuple[str, ...] = ()
    pattern: str | None = None
    meaning: str = "a text"  # how `pattern` reads to a user
    max_length: int = 4096

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        return self.meaning

    def check(self, value, path):
        if not isinstance(value, str) or len(value) > self.max_length:
            raise self.fail(value, path)
        if self.choices and value not in self.choices:
            raise self.fail(value, path)
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise self.fail(value, path)
        return value


@dataclass(frozen=True)
class Const(Schema):
    value: Any

    def describe(self) -> str:
        return shown(self.value)

    def check(self, value, path):
        if type(value) is not type(self.value) or value != self.value:
            raise self.fail(value, path)
        return value


@dataclass(frozen=True)
class Nullable(Schema):
    inner: Schema

    def describe(self) -> str:
        return f"{self.inner.describe()} or null"

    def check(self, value, path):
        return None if value is None else self.inner.check(value, path)


@dataclass(frozen=True)
class AnyOf(Schema):
    options: tuple[Schema, ...]

    def describe(self) -> str:
        return " or ".join(option.describe() for option in self.options)

    def check(self, value, path):
        for option in self.options:
            try:
                return option.check(value, path)
            except Invalid:
                continue
        raise self.fail(value, path)


@dataclass(frozen=True)
class ListOf(Schema):
    item: Schema
    min_length: int = 0
    max_length: int = 1 << 16

    def describe(self) -> str:
        least = f" (at least {self.min_length})" if self.min_length else ""
        return f"a list of {self.item.describe()}{least}"

    def check(self, value, path):
        if not isinstance(value, list | tuple) or not self.min_length <= len(value) <= self.max_length:
            raise self.fail(value, path)
        for index, item in enumerate(value):
            self.item.check(item, join(path, index))
        return value


@dataclass(frozen=True)
class MapOf(Schema):
    """A mapping of `key` texts to `value`s (free keys, checked by pattern)."""

    value: Schema
    key: Text = Text()
    min_items: int = 0
    max_items: int = 1 << 16

    def describe(self) -> str:
        return f"a mapping of {self.key.describe()} to {self.value.describe()}"

    def check(self, value, path):
        if not isinstance(value, dict) or not self.min_items <= len(value) <= self.max_items:
            raise self.fail(value, path)
        for key, item in value.items():
            if not isinstance(key, str):
                raise Invalid(path, f"keys must be texts, got {shown(key)}", predicate=False)
            try:
                self.key.check(key, path)
            except Invalid:
                raise Invalid(join(path, key), f"is not a valid name ({self.key.describe()})") from None
            self.value.check(item, join(path, key))
        return value


@dataclass(frozen=True)
class Field:
    schema: Schema
    required: bool = True


# A cross-field rule: takes the record (already type-checked) and returns what is wrong, or None.
Rule = Callable[[Mapping[str, Any]], "str | None"]


@dataclass(frozen=True)
class Record(Schema):
    """A mapping with declared keys; any other key is refused by name."""

    fields: Mapping[str, Field]
    rules: tuple[Rule, ...] = ()
    what: str = "a mapping"

    def describe(self) -> str:
        return f"{self.what} with keys {', '.join(self.fields)}"

    def check(self, value, path):
        if not isinstance(value, dict):
            raise Invalid(path, f"must be {self.what}, got {shown(value)}")
        unknown = [key for key in value if key not in self.fields]
        if unknown:
            raise Invalid(path, self.unknown(unknown[0]), predicate=False)
        for key, spec in self.fields.items():
            if key in value:
                spec.schema.check(value[key], join(path, key))
            elif spec.required:
                raise Invalid(path, f"missing key {key!r}", predicate=False)
        for rule in self.rules:
            problem = rule(value)
            if problem:
                raise Invalid(path, problem, predicate=False)
        return value

    def unknown(self, key: object) -> str:
        return f"unknown key {shown(key)} (known: {', '.join(self.fields) or 'none'})"


@dataclass(frozen=True)
class Tagged(Schema):
    """A mapping whose `tag` key picks the Record that checks the rest (a method and its fields).

    `defaults` are keys any variant may carry at exactly these values, because a serialised
    spec writes every field (a fastv schedule written with `drop: []`); at another value a key
    foreign to the variant is refused.
    """

    tag: str
    variants: Mapping[str, Record]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    what: str = "a mapping"

    def describe(self) -> str:
        return f"{self.what} with a {self.tag!r} key"

    def check(self, value, path):
        if not isinstance(value, dict):
            raise Invalid(path, f"must be {self.what}, got {shown(value)}")
        if self.tag not in value:
            raise Invalid(path, f"missing key {self.tag!r} (one of {', '.join(self.variants)})", predicate=False)
        kind = value[self.tag]
        if not isinstance(kind, str) or kind not in self.variants:
            raise Invalid(
                path, f"unknown {self.tag} {shown(kind)} (known: {', '.join(self.variants)})", predicate=False
            )
        variant = self.variants[kind]
        own = {key: item for key, item in value.items() if key in variant.fields or key == self.tag}
        for key, item in value.items():
            if key in own:
                continue
            if key not in self.defaults:
                raise Invalid(path, variant.unknown(key), predicate=False)
            if item != self.defaults[key] or type(item) is not type(self.defaults[key]):
                raise Invalid(
                    join(path, key),
                    f"does not apply to {self.tag} {kind} ({kind} takes {', '.join(variant.fields) or 'no fields'}); "
                    f"got {shown(item)}",
                )
        for key, spec in variant.fields.items():
            if spec.required and value.get(key) is None:
                raise Invalid(path, f"{kind} needs {key}, {spec.schema.describe()}", predicate=False)
        variant.check({key: item for key, item in own.items() if key != self.tag}, path)
        return value


@dataclass(frozen=True)
class Tree(Schema):
    """Free-form data of plain texts, numbers, lists and mappings, bounded in depth and size
    (a provenance block: recorded, not interpreted)."""

    max_depth: int = 8
    max_items: int = 10_000
    mapping: bool = False  # the top level must be a mapping

    def describe(self) -> str:
        top = "a mapping of plain data" if self.mapping else "plain data"
        return f"{top} (at most {self.max_depth} levels, {self.max_items} items)"

    def check(self, value, path):
        if self.mapping and not isinstance(value, dict):
            raise self.fail(value, path)
        budget = [self.max_items]
        self._walk(value, path, 0, budget)
        return value

    def _walk(self, value, path: str, depth: int, budget: list[int]) -> None:
        budget[0] -= 1
        if budget[0] < 0 or depth > self.max_depth:
            raise Invalid(path, f"is too large: expected {self.describe()}")
        if value is None or type(value) in (bool, int, str) or (type(value) is float and math.isfinite(value)):
            return
        if isinstance(value, list):
            for index, item in enumerate(value):
                self._walk(item, join(path, index), depth + 1, budget)
        elif isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise Invalid(path, f"keys must be texts, got {shown(key)}", predicate=False)
                self._walk(item, join(path, key), depth + 1, budget)
        else:
            raise Invalid(path, f"must be plain data (text, number, list, mapping), got {shown(value)}")


def validate(schema: Schema, value: Any, source: str | None = None, root: str = "") -> Any:
    """`value` checked against `schema`; a failure is one UserError that starts with `source`
    (the file) and names the key path from `root` (where `value` sits in the document)."""
    try:
        return schema.check(value, root)
    except Invalid as error:
        raise UserError(f"{source}: {error}" if source else str(error)) from None


# Names that become file or folder names (recipe and export names, graph names).
SLUG = Text(
    pattern=r"[A-Za-z0-9][A-Za-z0-9._+-]*",
    meaning="a name of letters, digits and . _ + - (no path separators, not starting with . or -)",
    max_length=128,
)


def slugify(text: str, fallback: str = "unnamed") -> str:
    """`text` made a SLUG: runs of other characters become '-', leading '.' and '-' dropped."""
    slug = re.sub(r"[^A-Za-z0-9._+-]+", "-", text).lstrip(".-")[: SLUG.max_length]
    return slug or fallback


# A file inside a folder we read (an export, a checkpoint): components that do not start with
# "." (so no "..", no hidden files) joined by "/"; `safety.inside` then refuses links out.
FILE_NAME = Text(
    pattern=r"[A-Za-z0-9_+-][A-Za-z0-9._+-]*(/[A-Za-z0-9_+-][A-Za-z0-9._+-]*)*",
    meaning="a relative file name inside the folder (no '..', no leading '/' or '.')",
    max_length=512,
)
SHA256 = Text(pattern=r"[0-9a-f]{64}", meaning="a sha256 hex digest")


# --- reading the documents ---------------------------------------------------------------------


def read_text(path: str | Path, what: str, max_bytes: int) -> str:
    """A UTF-8 text file of at most `max_bytes`, or one UserError naming it (`what`: "recipe")."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; name a file")
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        with path.open("rb") as stream:
            data = stream.read(max_bytes + 1)
    except OSError as error:
        raise UserError(f"cannot read {what} {path}: {error.strerror or error}") from None
    if len(data) > max_bytes:
        raise UserError(f"{what} {path} is over {max_bytes >> 10} KiB: not a {what} this tool wrote")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not a text file (not UTF-8): is it the right file?") from None
    if "\0" in text:
        raise UserError(f"{what} {path} is not a text file (it holds NUL bytes): is it the right file?")
    return text


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases: safe_load still expands them, so a 1 KB
    document of nested aliases ("billion laughs") grows without bound."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, "YAML anchors and aliases (&, *) are not accepted", event.start_mark
            )
        return super().compose_node(parent, index)


def load_yaml(path: str | Path, what: str, max_bytes: int) -> Any:
    """The YAML document in `path`: no anchors / aliases, at most `max_bytes`; errors in one line."""
    text = read_text(path, what, max_bytes)
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        raise UserError(f"{what} {path} is not valid YAML: {_yaml_problem(error)}") from None
    except RecursionError:
        raise UserError(f"{what} {path} is nested too deeply to be a {what}") from None


def _yaml_problem(error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError) and error.problem:
        mark = error.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        return " ".join(filter(None, [error.context, error.problem])) + where
    return " ".join(str(error).split())


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def load_json(path: str | Path, what: str, max_bytes: int) -> Any:
    """The JSON document in `path` (NaN / Infinity refused), at most `max_bytes`; errors in one line."""
    return parse_json(read_text(path, what, max_bytes), path, what)


def parse_json(text: str, path: str | Path, what: str) -> Any:
    """The JSON document `text` read from `path` (NaN / Infinity refused); errors in one line."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (json.JSONDecodeError, ValueError) as error:
        raise UserError(f"{what} {path} is not valid JSON: {error}") from None
    except RecursionError:
        raise UserError(f"{what} {path} is nested too deeply to be a {what}") from None
