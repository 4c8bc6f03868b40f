"""Where the front nginx sends one model's traffic and its start requests.

The node-aware choice, made once: `nginx.py` renders the path-prefix routes and the V2 paths
from it, and the OpenAI `/v1/` generator is meant to call :func:`route` the same way. Without
`nodes:` every model's start request goes to the one local daemon, as always; with `nodes:`
it goes to the daemon of the model's node, and a node that does not answer is answered by
the front nginx itself (JSON 503 naming the node) within `nginx.connect_timeout`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from model_starter.config import Config, ModelSpec
from model_starter.nginx_syntax import word
from model_starter.protocol import STARTER_UPSTREAM, per_model_activity, replay_source_address

__all__ = ["INFERENCE_UPSTREAM", "STARTER_UPSTREAM", "Route", "addr", "daemon_addr",
           "replay_source", "route", "starter_upstreams"]

INFERENCE_UPSTREAM = "ms_inference"
LOCAL_CONNECT_TIMEOUT = "5s"  # the daemon and the models on this host (refused, not silent)


@dataclass(frozen=True)
class Route:
    """One model as the front nginx sees it."""

    upstream: str  # the model's upstream (a V2 model: its node's inference server)
    address: str  # HOST:PORT the model listens on (the Host header)
    starter: str  # the upstream of the daemon that starts it
    daemon: str  # that daemon's HOST:PORT (V2 activity goes there over syslog/UDP)
    down: str  # named location: that daemon does not answer
    auth_failed: str  # named location: its auth_request subrequest failed
    connect_timeout: str  # nginx time, for each of the (at most two) connects
    node: str | None  # None: a single host


def addr(host: str, port: int) -> str:
    word(host)  # the generator's own last line of defence (see nginx_syntax.word)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def daemon_addr(config: Config) -> str:
    """The single-host daemon's address as nginx (on the same host) reaches it."""
    host = config.listen_host
    if host in ("0.0.0.0", "", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return addr(host, config.listen_port)


def _half(seconds: float) -> str:
    """Half the connect timeout, in nginx's milliseconds: a silent node costs two connects
    (the model's, then its daemon's), so the client's answer comes within the whole."""
    return f"{max(1, math.ceil(seconds * 500))}ms"


def route(config: Config, spec: ModelSpec) -> Route:
    """The upstreams and fallbacks of `spec` (see the module docstring)."""
    if spec.node is None or spec.node not in config.nodes:
        upstream = INFERENCE_UPSTREAM if spec.launcher == "v2" else f"ms_model_{spec.name}"
        return Route(upstream, addr(spec.host, spec.port), STARTER_UPSTREAM,
                     daemon_addr(config), "@ms_down", "@ms_auth_failed",
                     LOCAL_CONNECT_TIMEOUT, None)
    node = config.nodes[spec.node]
    if spec.launcher == "v2":  # the node's own inference server
        upstream, address = f"ms_inference_{node.name}", addr(node.model_host, spec.port)
    else:
        upstream, address = f"ms_model_{spec.name}", addr(spec.host, spec.port)
    return Route(upstream, address, f"ms_node_{node.name}", node.daemon_addr,
                 f"@ms_down_{node.name}", f"@ms_auth_failed_{node.name}",
                 _half(config.nginx.connect_timeout), node.name)


def replay_source(config: Config, spec: ModelSpec) -> str | None:
    """The loopback address nginx replays `spec`'s released requests from, or None.

    Decided here once, for the generator (``proxy_bind`` in the replay location) and the
    daemon (which counts the connections from it): a model this host's nginx reaches on an
    IPv4 loopback address, in error_page mode (auth_request has no replay location). Else
    replays are protected for `release_grace` (see ``usage``)."""
    if spec.mode != "error_page" or route(config, spec).node is not None:
        return None
    return replay_source_address(spec.name) if per_model_activity(spec.host) else None


def starter_upstreams(config: Config) -> list[tuple[str, str]]:
    """(upstream name, HOST:PORT) of every daemon the front nginx asks to start models."""
    if not config.nodes:
        return [(STARTER_UPSTREAM, daemon_addr(config))]
    return [(f"ms_node_{n.name}", n.daemon_addr) for n in config.nodes.values()]
