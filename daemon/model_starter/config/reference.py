"""The README's configuration tables, generated from the schema (`schema`).

`python -m model_starter.config --markdown` prints them; a test checks the README has them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, Field
from typing import Any

from model_starter.config.convert import Key, key_of
from model_starter.config.nodes import NodeSpec
from model_starter.config.schema import (
    LAUNCHER_KEY,
    MODEL_NAME_RE,
    SPEC_TYPES,
    TOP_KEYS,
    Config,
    ModelSpec,
)

Row = tuple[str, ...]


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{k}: {_value(x)}" for k, x in v.items()) + "}"
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return _value({f.name: getattr(v, f.name) for f in dataclasses.fields(v)})
    return str(v)


def _default(f: Field[Any], k: Key) -> str:
    if k.shown is not None:
        return k.shown
    if f.default is not MISSING:
        value = f.default
    elif callable(f.default_factory):
        value = f.default_factory()
    else:
        return "required"
    return "—" if value is None else f"`{_value(value)}`"


def _line(row: Row) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"


def _table(header: Row, rows: Iterator[Row]) -> str:
    return "\n".join([_line(header), "|" + "---|" * len(header), *map(_line, rows)])


def _keyed(cls: type) -> Iterator[tuple[Field[Any], Key]]:
    for f in dataclasses.fields(cls):
        k = key_of(f)
        if k is not None:
            yield f, k


def _top_rows() -> Iterator[Row]:
    for f, k in _keyed(Config):
        name = k.yaml or f.name
        if dataclasses.is_dataclass(f.default):  # a section: one row per key in it
            for sf, sk in _keyed(type(f.default)):
                yield f"`{name}.{sf.name}`", _default(sf, sk), sk.doc
        else:
            yield f"`{name}`", _default(f, k), k.doc
        if name == "nodes":
            for sf, sk in _keyed(NodeSpec):
                yield f"`nodes.NAME.{sf.name}`", _default(sf, sk), sk.doc
    defaults = TOP_KEYS["defaults"]
    yield "`defaults`", defaults.shown or "", defaults.doc


def _model_rows() -> Iterator[Row]:
    yield "`launcher`", "all", LAUNCHER_KEY.shown or "", LAUNCHER_KEY.doc
    for f, k in _keyed(ModelSpec):
        if not k.shared:
            yield f"`{f.name}`", "all", _default(f, k), k.doc
    base = {f.name for f in dataclasses.fields(ModelSpec)}
    for kind, cls in SPEC_TYPES.items():
        for f, k in _keyed(cls):
            if f.name not in base:
                yield f"`{f.name}`", f"`{kind}`", _default(f, k), k.doc


def _shared_rows() -> Iterator[Row]:
    for f, k in _keyed(ModelSpec):
        if k.shared:
            yield f"`{f.name}`", _default(f, k), k.doc


def markdown() -> str:
    """The configuration reference tables, as the README shows them."""
    columns = ("key", "default", "meaning")
    return "\n\n".join([
        "Top level:", _table(columns, _top_rows()),
        f"Per model (`models.NAME`, name matching `{MODEL_NAME_RE.pattern}`):",
        _table(("key", "launcher", "default", "meaning"), _model_rows()),
        "Shared keys (per model or in `defaults`):", _table(columns, _shared_rows()),
    ]) + "\n"
