"""What a web page in the operator's browser must not be able to make the daemon do.

A page can send simple requests to any address (a form POST with `text/plain`), and with DNS
rebinding it can read the answers of a server on loopback, under its own host name. So:

* **Host**: only loopback addresses, `localhost`, the daemon's own listen host, nginx's name
  for it (the upstream) or the configured ``allowed_hosts`` — a rebound name never matches;
* **Origin**: a browser's request from a page of another origin is refused;
* **intent**: a call that changes state carries ``CLIENT_HEADER`` or a JSON body, which a
  page of another origin cannot send without a CORS preflight (never granted).

Each check answers None (go on) or the JSON refusal.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from sanic import HTTPResponse, Request

from model_starter.config import Config
from model_starter.protocol import CLIENT_HEADER, PROXIED_HEADERS
from model_starter.responses import error_response
from model_starter.routing import starter_upstreams

__all__ = ["came_through_nginx", "check_host", "check_intent", "check_origin", "host_name",
           "loopback"]

SAFE_METHODS = frozenset({"GET", "HEAD"})
JSON_TYPE = "application/json"


def loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip.removeprefix("::ffff:")).is_loopback
    except ValueError:
        return ip == ""  # a unix socket has no peer address


def host_name(value: str) -> str:
    """The host of a `Host` header value or of an origin's netloc, without the port."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    return value.rpartition(":")[0] if value.count(":") == 1 else value


def _allowed(host: str, config: Config) -> bool:
    if loopback(host) and host != "":
        return True
    # nginx names the daemon by its upstream (`ms_starter`, or `ms_node_NAME` on a fleet's front):
    # an underscore is no DNS name, so a rebinding page cannot use it.
    names = {"localhost", config.listen_host.lower(),
             *(name.lower() for name, _ in starter_upstreams(config)),
             *(h.lower() for h in config.allowed_hosts)}
    return host.removesuffix(".") in names


def came_through_nginx(request: Request) -> bool:
    return any(h in request.headers for h in PROXIED_HEADERS)


def check_host(request: Request, config: Config) -> HTTPResponse | None:
    given = request.headers.get("host")
    if given is None or _allowed(host_name(given), config):
        return None  # (no Host at all: HTTP/1.0 from a script; a browser always sends one)
    return error_response(403, "forbidden", f"Host {given!r} is not this daemon's: use a "
                          "loopback address or a name in allowed_hosts")


def check_origin(request: Request, config: Config) -> HTTPResponse | None:
    origin = request.headers.get("origin")
    if origin is None or _allowed(host_name(urlsplit(origin).netloc), config):
        return None
    return error_response(403, "forbidden", f"requests from the web page {origin!r} are refused")


def check_intent(request: Request) -> HTTPResponse | None:
    """A state-changing call must say it is meant: a JSON body or our client header."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if CLIENT_HEADER in request.headers or media == JSON_TYPE:
        return None
    return error_response(403, "forbidden", f"a call that changes state needs the header "
                          f"{CLIENT_HEADER} or a JSON body (Content-Type: {JSON_TYPE})")
