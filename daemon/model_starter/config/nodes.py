"""The `nodes:` section: the GPU hosts of a fleet, each with its own daemon (see `fleet`).

A model names its host with `node:`; `model-starter serve --node NAME` supervises only that
node's models with that node's `resources`; the front nginx routes each model to its node.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import model_starter.config.convert as c
from model_starter.config.convert import BAD, Ctx, Node, key, section

__all__ = ["LOOPBACK", "NODE_NAME_RE", "NodeSpec", "nodes"]

NODE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
LOOPBACK = ("127.0.0.0/8", "::1/128")


def _cidrs(ctx: Ctx, node: Node, where: str) -> Any:
    items = node.value if hasattr(node, "value") and isinstance(node.value, list) else None
    if items is None:
        ctx.err(node, where, "expected a list of addresses or CIDR networks")
        return BAD
    out: list[str] = []
    for i, item in enumerate(items):
        text = c.scalar(item)
        try:
            out.append(str(ipaddress.ip_network(str(text), strict=False)))
        except ValueError:
            ctx.err(item, f"{where}[{i}]", f"expected an address or CIDR network, got {text!r}")
            return BAD
    return tuple(out)


@dataclass(frozen=True)
class NodeSpec:
    """One GPU host: its daemon's address, where its models listen, its capacities."""

    name: str
    daemon: tuple[str, int] = key(
        c.hostport, "HOST:PORT of the node's daemon on the private network (it listens there)")
    host: str | None = key(c.string, "where the node's models listen, as the front reaches "
                           "them (a model's own `host` wins)", None, shown="the daemon's host")
    resources: Mapping[str, float] | None = key(
        c.amounts, "the node's capacities (as top-level `resources`)", None,
        shown="one model at a time")
    allow: tuple[str, ...] = key(
        _cidrs, "peers (addresses/CIDRs) whose requests the start route accepts: the front "
        "nginx's address", LOOPBACK, shown="loopback only")

    @property
    def model_host(self) -> str:
        return self.host or self.daemon[0]

    @property
    def daemon_addr(self) -> str:
        host, port = self.daemon
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def nodes(ctx: Ctx, node: Node, where: str) -> Any:
    """`nodes:` as {name: NodeSpec}."""
    items = c.mapping(ctx, node, where)
    if items is None:
        return BAD
    out: dict[str, NodeSpec] = {}
    for name, knode, vnode in items:
        path = f"{where}.{name}"
        if not NODE_NAME_RE.match(name):
            ctx.err(knode, path, f"node names must match {NODE_NAME_RE.pattern}")
            continue
        values = section(ctx, vnode, path, c.keys_of(NodeSpec), required=("daemon",))
        if values is not None and "daemon" in values:
            out[name] = NodeSpec(name=name, **values)
    return out
