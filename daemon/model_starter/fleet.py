"""Several GPU hosts, one config: which node a daemon supervises, and who may ask it.

Placement is declared: each model names its node (`node:`), and runs there only. A node's
daemon (`model-starter serve --node NAME`) sees only its node's models, with its node's
`resources`, listening on the node's `daemon` address. The front host runs nginx only.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from model_starter.config import ONE_AT_A_TIME, Config, ConfigError

__all__ = ["NODE_ENV", "narrow", "peer_allowed"]

NODE_ENV = "MODEL_STARTER_NODE"


def narrow(config: Config, node: str | None) -> Config:
    """The config a node's daemon runs: its models, its capacity, its address.

    `node` None: the config as it is (a single host), unless it declares `nodes:`."""
    if node is None:
        if config.nodes:
            raise ConfigError([f"{config.source}: this config declares nodes "
                               f"({', '.join(config.nodes)}): choose one with --node or "
                               f"${NODE_ENV}"])
        return config
    spec = config.nodes.get(node)
    if spec is None:
        declared = ", ".join(config.nodes) or "none"
        raise ConfigError([f"{config.source}: unknown node {node!r} (declared: {declared})"])
    host, port = spec.daemon
    return dataclasses.replace(
        config, models={n: m for n, m in config.models.items() if m.node == node},
        resources=dict(ONE_AT_A_TIME) if spec.resources is None else spec.resources,
        listen_host=host, listen_port=port, node=node)


def peer_allowed(config: Config, ip: str) -> bool:
    """May this peer use the start route? A node's daemon answers its `allow:` list only."""
    if config.node is None:
        return True  # a single host: today's rule (the daemon listens on loopback)
    try:
        addr = ipaddress.ip_address(ip.removeprefix("::ffff:"))
    except ValueError:
        return ip == ""  # a unix socket has no peer address
    allow = config.nodes[config.node].allow
    return any(addr in ipaddress.ip_network(net) for net in allow)
