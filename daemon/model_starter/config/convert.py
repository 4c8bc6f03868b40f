"""YAML nodes to checked values: the converters a schema field names, and `section`.

Validation walks PyYAML's node tree (not the plain data) so every problem can name its
file and line; a converter reports into the `Ctx` and returns `BAD` instead of raising,
so all problems are collected before reporting.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import signal
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass
from typing import Any

import yaml
from yaml.constructor import SafeConstructor

Node = yaml.Node
BODY_SIZE_RE = re.compile(r"[0-9]+[kKmMgG]?")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
# The parameters of nginx's `listen` an operator may add after the address.
# (No `ssl`/`http2`/`quic`: the generated server block has no certificate to go with them.)
LISTEN_PARAM_RE = re.compile(
    r"default_server|reuseport|deferred|bind|(?:backlog|rcvbuf|sndbuf)=[0-9]+[kKmM]?")


class Ctx:
    """The problems found so far in one file."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []

    def err(self, node: Node | None, where: str, msg: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.problems.append(f"{self.source}:{line}: {where}: {msg}")


Conv = Callable[[Ctx, Node, str], Any]
BAD = object()  # a converter's answer for a value it reported as wrong


@dataclass(frozen=True)
class Key:
    """What a config field means in the YAML: the schema is the dataclass fields' metadata.

    `shown` is the README's default text where the field's own default does not say it
    (a value from the environment, a computed one). `shared`: `defaults:` may set it for
    every model. `required_for`: launchers that must set it although the field has a
    default. `path`: taken relative to the config file's folder.
    """

    conv: Conv
    doc: str
    shown: str | None = None
    shared: bool = False
    required_for: tuple[str, ...] = ()
    path: bool = False
    yaml: str | None = None  # the YAML key, when it is not the field's name


_META = "model_starter"


def key(conv: Conv, doc: str, default: Any = MISSING, *,
        factory: Callable[[], Any] | None = None, **meta: Any) -> Any:
    """A dataclass field declared as a config key (see `Key`)."""
    metadata = {_META: Key(conv, doc, **meta)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def key_of(f: dataclasses.Field[Any]) -> Key | None:
    meta = f.metadata.get(_META)
    return meta if isinstance(meta, Key) else None


def keys_of(cls: type) -> dict[str, Key]:
    """The YAML keys a dataclass declares, in declaration order."""
    out: dict[str, Key] = {}
    for f in dataclasses.fields(cls):
        k = key_of(f)
        if k is not None:
            out[k.yaml or f.name] = k
    return out


def has_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is not MISSING or f.default_factory is not MISSING


_CONSTRUCTOR = SafeConstructor()


def scalar(node: Node) -> Any:
    """Resolve a scalar node to a Python value with YAML's normal (safe) tag rules."""
    if not isinstance(node, yaml.ScalarNode):
        return None
    try:
        return _CONSTRUCTOR.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError):
        return node.value  # e.g. an unknown !tag: keep the text, validation reports it


def show(node: Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return repr(scalar(node))


def mapping(ctx: Ctx, node: Node, where: str) -> list[tuple[str, Node, Node]] | None:
    if not isinstance(node, yaml.MappingNode):
        ctx.err(node, where, "expected a mapping")
        return None
    out: list[tuple[str, Node, Node]] = []
    seen: set[str] = set()
    for knode, vnode in node.value:
        k = scalar(knode)
        if not isinstance(k, str):
            ctx.err(knode, where, f"keys must be strings, got {k!r}")
            continue
        if k in seen:
            ctx.err(knode, f"{where}.{k}" if where else k, "duplicate key")
            continue
        seen.add(k)
        out.append((k, knode, vnode))
    return out


def section(
    ctx: Ctx, node: Node, where: str, keys: Mapping[str, Key], required: tuple[str, ...] = ()
) -> dict[str, Any] | None:
    """Convert a mapping with a fixed set of keys; unknown keys are errors."""
    items = mapping(ctx, node, where)
    if items is None:
        return None
    out: dict[str, Any] = {}
    for name, knode, vnode in items:
        path = f"{where}.{name}" if where else name
        k = keys.get(name)
        if k is None:
            ctx.err(knode, path, f"unknown key (allowed: {', '.join(sorted(keys))})")
            continue
        value = k.conv(ctx, vnode, path)
        if value is not BAD:
            out[name] = value
    for name in required:
        if name not in out and not any(n == name for n, _, _ in items):
            ctx.err(node, where, f"missing required key '{name}'")
    return out


def section_of(cls: type) -> Conv:
    """A nested mapping with `cls`'s keys, as a dict (the caller completes it)."""
    return lambda ctx, node, where: section(ctx, node, where, keys_of(cls))


def nested(cls: type) -> Conv:
    """A nested mapping with `cls`'s keys, as an instance of `cls`."""

    def conv(ctx: Ctx, node: Node, where: str) -> Any:
        values = section(ctx, node, where, keys_of(cls))
        return BAD if values is None else cls(**values)

    return conv


def one_of(choices: tuple[str, ...]) -> Conv:
    def conv(ctx: Ctx, node: Node, where: str) -> Any:
        v = scalar(node)
        if v not in choices:
            ctx.err(node, where, f"expected one of {', '.join(choices)}, got {show(node)}")
            return BAD
        return v

    return conv


def text(ctx: Ctx, node: Node, where: str) -> Any:
    """A string; YAML numbers are taken as their text (`port: "9001"` or `9001` in argv)."""
    v = scalar(node)
    if isinstance(v, bool) or not isinstance(v, str | int | float):
        ctx.err(node, where, f"expected a string, got {show(node)}")
        return BAD
    return str(v)


def string(ctx: Ctx, node: Node, where: str) -> Any:
    v = scalar(node)
    if not isinstance(v, str) or not v:
        ctx.err(node, where, f"expected a non-empty string, got {show(node)}")
        return BAD
    return v


def seconds(lo: float, hi: float) -> Conv:
    def conv(ctx: Ctx, node: Node, where: str) -> Any:
        v = scalar(node)
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            ctx.err(node, where, f"expected a number of seconds {lo:g}..{hi:g}, got {show(node)}")
            return BAD
        return float(v)

    return conv


def integer(lo: int, hi: int, what: str = "an integer") -> Conv:
    def conv(ctx: Ctx, node: Node, where: str) -> Any:
        v = scalar(node)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            ctx.err(node, where, f"expected {what} {lo}..{hi}, got {show(node)}")
            return BAD
        return v

    return conv


port = integer(1, 65535, "a port")


def argv(ctx: Ctx, node: Node, where: str) -> Any:
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        ctx.err(node, where, "expected a non-empty list of strings (argv; no shell is used)")
        return BAD
    out = [text(ctx, item, f"{where}[{i}]") for i, item in enumerate(node.value)]
    return BAD if BAD in out else tuple(out)


def mapping_of(item: Conv) -> Conv:
    """A mapping with free-form keys whose values each go through `item`."""

    def conv(ctx: Ctx, node: Node, where: str) -> Any:
        items = mapping(ctx, node, where)
        if items is None:
            return BAD
        out = {name: item(ctx, vnode, f"{where}.{name}") for name, _k, vnode in items}
        return {name: value for name, value in out.items() if value is not BAD}

    return conv


env = mapping_of(text)


def health(ctx: Ctx, node: Node, where: str) -> Any:
    v = scalar(node)
    if not isinstance(v, str) or not v.startswith("/"):
        ctx.err(node, where, f"expected an HTTP path starting with '/', got {show(node)}")
        return BAD
    return v


def signal_name(ctx: Ctx, node: Node, where: str) -> Any:
    v = scalar(node)
    name = v.upper() if isinstance(v, str) else ""
    name = name if name.startswith("SIG") else f"SIG{name}"
    sig = getattr(signal.Signals, name, None) if name.isalpha() or "SIGRT" in name else None
    if sig is None:
        ctx.err(node, where, f"expected a signal name such as SIGTERM or SIGINT, got {show(node)}")
        return BAD
    return int(sig)


def body_size(ctx: Ctx, node: Node, where: str) -> Any:
    v = scalar(node)
    if isinstance(v, bool) or not BODY_SIZE_RE.fullmatch(str(v)):
        ctx.err(node, where, f"expected an nginx size such as 100m, got {show(node)}")
        return BAD
    return str(v)


def is_host(value: str) -> bool:
    """An IP address or an RFC 1123 host name: nothing else reaches nginx as a host."""
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        pass
    labels = value.removesuffix(".").split(".")
    return len(value) <= 253 and all(_LABEL.fullmatch(label) for label in labels)


HOST_RULE = "an IP address or an RFC 1123 host name"


def host(ctx: Ctx, node: Node, where: str) -> Any:
    v = scalar(node)
    if not isinstance(v, str) or not is_host(v):
        ctx.err(node, where, f"expected {HOST_RULE}, got {show(node)}")
        return BAD
    return v


def list_of(item: Conv, what: str) -> Conv:
    """A list whose items each go through `item`."""

    def conv(ctx: Ctx, node: Node, where: str) -> Any:
        if not isinstance(node, yaml.SequenceNode):
            ctx.err(node, where, f"expected a list of {what}")
            return BAD
        out = [item(ctx, x, f"{where}[{i}]") for i, x in enumerate(node.value)]
        return BAD if BAD in out else tuple(out)

    return conv


hosts = list_of(host, f"host names ({HOST_RULE})")


def _split_hostport(v: str) -> tuple[str, int] | None:
    """`HOST:PORT` or `[V6]:PORT` with a valid host (`*` for every address) and port."""
    addr, _, num = v.rpartition(":")
    if not (num.isdigit() and 1 <= int(num) <= 65535):
        return None
    bracketed = addr.startswith("[") and addr.endswith("]")
    host_ = addr[1:-1] if bracketed else addr
    if bracketed != (":" in host_) or not (host_ == "*" or is_host(host_)):
        return None
    return host_, int(num)


def hostport(ctx: Ctx, node: Node, where: str) -> Any:
    v = scalar(node)
    parsed = _split_hostport(v) if isinstance(v, str) else None
    if parsed is None or parsed[0] == "*":
        ctx.err(node, where, f"expected HOST:PORT ({HOST_RULE}; [V6]:PORT), got {show(node)}")
        return BAD
    return parsed


def listen(ctx: Ctx, node: Node, where: str) -> Any:
    """nginx's `listen`: PORT, HOST:PORT or [V6]:PORT, then parameters such as
    `default_server`; given back with single spaces."""
    v = scalar(node)
    words = str(v).split() if isinstance(v, str | int) and not isinstance(v, bool) else []
    ok = bool(words) and (
        (words[0].isdigit() and 1 <= int(words[0]) <= 65535) or _split_hostport(words[0])
    ) and all(LISTEN_PARAM_RE.fullmatch(w) for w in words[1:])
    if not ok:
        ctx.err(node, where, "expected PORT, HOST:PORT or [V6]:PORT, then optional "
                f"parameters ({LISTEN_PARAM_RE.pattern}), got {show(node)}")
        return BAD
    return " ".join(words)


def boolean(ctx: Ctx, node: Node, where: str) -> Any:
    v = scalar(node)
    if not isinstance(v, bool):
        ctx.err(node, where, f"expected true or false, got {show(node)}")
        return BAD
    return v


def amount(ctx: Ctx, node: Node, where: str) -> Any:
    v = scalar(node)
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
        ctx.err(node, where, f"expected a number >= 0, got {show(node)}")
        return BAD
    return float(v)


amounts = mapping_of(amount)


def as_is(ctx: Ctx, node: Node, where: str) -> Any:
    """Taken unconverted (the caller validates it with more context)."""
    return node


def switch(choices: tuple[str, ...]) -> Conv:
    """One of `choices`; YAML's booleans count as "true"/"false"."""
    pick = one_of(choices)

    def conv(ctx: Ctx, node: Node, where: str) -> Any:
        v = scalar(node)
        if isinstance(v, bool):
            return "true" if v else "false"
        return pick(ctx, node, where)

    return conv
