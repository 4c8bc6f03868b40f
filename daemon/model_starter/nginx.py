"""The nginx include, as a pure function of the config.

Each exporter yields ``(file name, content)`` pairs. Per model (error_page mode):

* ``location /NAME/`` proxies straight to the model, replacing the prefix natively
  (``proxy_pass http://up/;``); nginx's own 502 (connection refused) goes to
  ``@ms_start_NAME``; ``nginx_openai`` adds the model's ``/v1/`` and ``/v2/models/`` entries;
* ``@ms_start_NAME`` asks the daemon, without the body, with the model name, the
  answer mode and ``$upstream_bytes_sent``; the daemon's 504 means "ready, replay";
* ``@ms_retry_NAME`` replays the original request (method, URI, body) once; on this cold
  path only, a ``rewrite`` strips the prefix to the URI the hot path sent.

A V2 model's location maps ``/NAME/...`` onto the shared server's ``/v2/models/NAME/...``
and also sends the server's 400/404 ("not loaded") to the start path; an auth_request
model asks the daemon first on every request. The daemon's 404/503 come back as JSON.

Named locations inherit only from ``server {}``, so every location repeats its
settings; that also keeps the locations-only include independent of the
operator's server block.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

from model_starter import nginx_openai
from model_starter.config import Config, ModelSpec, V2Spec
from model_starter.feedkey import activity_key
from model_starter.nginx_syntax import block as _block
from model_starter.nginx_syntax import comment as _comment
from model_starter.nginx_syntax import upstream_var as _var
from model_starter.nginx_syntax import word as _word
from model_starter.protocol import (
    ACTIVITY_LOG_TAG,
    ANSWER_HEADER,
    ANSWER_NOT_REPLAYED,
    ANSWER_READY,
    DAEMON_DOWN_RETRY_AFTER,
    DAEMON_HEADERS,
    ERROR_MODEL_UNAVAILABLE,
    ERROR_NOT_REPLAYED,
    ERROR_STARTER_UNAVAILABLE,
    ERROR_UNKNOWN_MODEL,
    HOLD_MARGIN_SECONDS,
    MODE_AUTH,
    MODE_HEADER,
    MODE_RETRY,
    MODEL_HEADER,
    REQUEST_ID_HEADER,
    SENT_HEADER,
    STATUS_HEADER,
    STATUS_NOT_REPLAYED,
    STATUS_REPLAY,
    STATUS_UNAVAILABLE,
    STATUS_UNKNOWN_MODEL,
    V2_NOT_LOADED_STATUSES,
    VIA_HEADER,
    VIA_NGINX,
    activity_log_format,
    per_model_activity,
    v2_source_address,
)
from model_starter.routing import STARTER_UPSTREAM, Route, replay_source, route, starter_upstreams

__all__ = ["STYLES", "render", "render_files"]

STYLES = ("conf.d", "locations")
ACTIVITY_FORMAT = "ms_activity"
AUTH_LOCATION = "/_ms_auth/"  # internal: the auth_request subrequest of each model


def _json(error: str, detail: str, **extra: str) -> str:
    """A JSON body for nginx's `return`, inside single quotes (so it may hold none)."""
    body = json.dumps({"error": error, "detail": detail, **extra}, separators=(",", ":"))
    assert "'" not in body, body
    return f"'{body}'"


# The JSON bodies nginx answers with itself, each defined once.
DAEMON_DOWN_JSON = _json(ERROR_STARTER_UNAVAILABLE, "the model-starter daemon is not reachable")


def node_down_json(node: str) -> str:
    """nginx's answer when a node does not answer: its daemon is down or its host silent."""
    return _json(ERROR_STARTER_UNAVAILABLE, f"node {node} does not answer: its model-starter "
                 "daemon is down or the host is unreachable", node=node)


NOT_REPLAYED_JSON = _json(
    ERROR_NOT_REPLAYED, "the request reached the model, which failed before answering; it is "
    "not sent again because it may have taken effect", request_id=_var(REQUEST_ID_HEADER))
UNKNOWN_JSON = _json(ERROR_UNKNOWN_MODEL, "no such model is configured")
# The error kind is the daemon's (its ANSWER_HEADER, kept in $ms_auth_error).
START_FAILED_JSON = _json(
    "$ms_auth_error", "the model could not be started; `model-starter status` shows why",
    request_id="$ms_auth_request_id")
RETRY_FAILED_JSON = _json(
    ERROR_MODEL_UNAVAILABLE, "the model was started but failed on the replayed request")


# nginx's own statuses: a refused/failed upstream connection, and a failed auth_request.
NGINX_BAD_GATEWAY = 502
NGINX_GATEWAY_TIMEOUT = 504  # a connect timeout: a silent host (with `nodes:`)
NGINX_AUTH_FAILED = 500


def _codes(*codes: int) -> str:
    return " ".join(str(c) for c in codes)


def _has_v2(config: Config) -> bool:
    return any(m.launcher == "v2" for m in config.models.values())


_CLEARED = '""'  # proxy_set_header with an empty value: the header is not sent


def _daemon_headers(values: dict[str, str]) -> list[str]:
    """Every protocol header towards the daemon: those in `values` set, all others cleared,
    so a client's own `X-Model-Starter-*` headers never reach it."""
    assert set(values) <= set(DAEMON_HEADERS), values
    return [f"proxy_set_header {h} {values.get(h, _CLEARED)};" for h in DAEMON_HEADERS]


def _secs(value: float) -> str:
    return f"{max(1, math.ceil(value))}s"


def _down_codes(r: Route) -> tuple[int, ...]:
    """nginx's own failures that mean "nothing answered": also a connect timeout on a node."""
    return (NGINX_BAD_GATEWAY,) if r.node is None else (NGINX_BAD_GATEWAY, NGINX_GATEWAY_TIMEOUT)


def _fallback(config: Config, r: Route, name: str) -> str:
    """A shared error location (or its OpenAI twin); a node's own are model-starter JSON."""
    return name if r.node is not None else nginx_openai.error_location(config, name)


def _header(config: Config) -> str:
    return f"# Generated by model-starter from {_comment(config.source)}; do not edit.\n"


def render_http(config: Config, feed_key: str | None = None) -> str:
    """http-context part: one upstream per model (exactly one server each) and the daemon(s).
    `feed_key`: the activity feed's secret (default: the state dir's, see ``feedkey``)."""
    out = [_header(config)]
    # keepalive: auth_request mode asks the daemon on every request.
    for name, address in starter_upstreams(config):
        out.append(f"upstream {name} {{\n    server {address};\n    keepalive 64;\n}}\n")
    routes = [(spec, route(config, spec)) for spec in config.models.values()]
    for spec, r in routes:
        if spec.launcher == "v2":
            continue
        # One server entry, no max_fails: nginx then never marks a restarting model "down".
        out.append(f"upstream {r.upstream} {{\n    server {r.address};\n}}\n")
    if _has_v2(config):
        servers = {r.upstream: r.address for spec, r in routes if spec.launcher == "v2"}
        for name, address in servers.items():
            out.append(f"upstream {name} {{\n    server {address};\n}}\n")
        # Which V2 model a finished request was for (the server's port is shared).
        key = activity_key(config) if feed_key is None else feed_key
        out.append(f"log_format {ACTIVITY_FORMAT} '{activity_log_format(key)}';\n")
    out.append(nginx_openai.render_http(config))
    return "\n".join(o for o in out if o)


def _model_proxy(config: Config, spec: ModelSpec, r: Route) -> list[str]:
    """Settings shared by the entry locations and the replay location of one model."""
    t = _secs(config.nginx.proxy_timeout)
    return [
        "proxy_http_version 1.1;",
        f"proxy_set_header Host {r.address};",
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        f"proxy_connect_timeout {r.connect_timeout};",
        f"proxy_read_timeout {t};",
        f"proxy_send_timeout {t};",
        "proxy_buffering off;  # streaming (SSE) reaches the client token by token",
        "proxy_request_buffering on;  # the body must be kept for the replay",
        f"client_max_body_size {spec.client_max_body_size};",
    ]


def _model_locations(config: Config, spec: ModelSpec) -> list[str]:
    name = _word(spec.name)
    rx = name.replace(".", r"\.")
    start, retry = f"@ms_start_{name}", f"@ms_retry_{name}"
    r = route(config, spec)
    proxy = _model_proxy(config, spec, r)
    upstream = r.upstream
    bind: list[str] = []  # the entry locations' source address (a V2 model's own)
    if isinstance(spec, V2Spec):
        # An unloaded model does not refuse the connection: the server answers 404 (400
        # while loading). Intercepting those sends them to the start path; a genuine
        # 400/404 of a loaded model is replayed once and then reaches the client as is.
        prefix = f"/v2/models/{_word(spec.v2_name or name)}"
        # Rewritten in the entry (the activity log reports $uri); the replay keeps it.
        bare = [f"rewrite ^ {prefix} break;", f"proxy_pass http://{upstream};"]
        strip = [f"rewrite ^/{rx}/(.*)$ {prefix}/$1 break;", f"proxy_pass http://{upstream};"]
        replay = [f"proxy_pass http://{upstream};"]
        log = f"access_log syslog:server={r.daemon},tag={ACTIVITY_LOG_TAG},nohostname "
        proxy = [*proxy, f"{log}{ACTIVITY_FORMAT};"]
        if per_model_activity(config.inference.host):
            # Its own loopback source: the daemon's socket scan tells the models apart.
            bind = [f"proxy_bind {v2_source_address(spec.v2_name or name)};"]
        down = _codes(*V2_NOT_LOADED_STATUSES, *_down_codes(r))
        on_down = ["proxy_intercept_errors on;", f"error_page {down} = {start};",
                   "recursive_error_pages on;"]
        where = f"{prefix}/... on {r.address} (KServe V2)"
    else:
        # The hot path replaces the prefix natively (no regex per request); only the replay,
        # on the cold path, strips it with a rewrite, to the same URI.
        bare = strip = [f"proxy_pass http://{upstream}/;"]
        replay = [f"rewrite ^/{rx}/(.*)$ /$1 break;", f"rewrite ^/{rx}$ / break;",
                  f"proxy_pass http://{upstream};"]
        on_down = [f"error_page {_codes(*_down_codes(r))} = {start};", "recursive_error_pages on;"]
        where = r.address
    if r.node is not None:
        where += f" on node {r.node}"
    # Replays come from an address nothing else uses: the daemon counts them as they arrive.
    marked = replay_source(config, spec)
    replay_bind = [f"proxy_bind {marked};  # the replays' own source"] if marked else bind
    auth: list[str] = []
    extra: list[str] = []
    if spec.mode == "auth_request":
        # The daemon answers 204 from memory when ready, else starts the model first.
        # auth_request turns any other status into 500: the variables bring it back.
        auth = [
            f"auth_request {AUTH_LOCATION}{name};",
            "auth_request_set $ms_auth_status $upstream_status;",
            "auth_request_set $ms_auth_retry $upstream_http_retry_after;",
            f"auth_request_set $ms_auth_error {_var(ANSWER_HEADER)};",
            f"auth_request_set $ms_auth_request_id {_var(REQUEST_ID_HEADER)};",
            f"error_page {NGINX_AUTH_FAILED} = {_fallback(config, r, r.auth_failed)};",
        ]
        extra = [_block(f"= {AUTH_LOCATION}{name}", [
            "internal;",
            f"proxy_pass http://{r.starter}/{name}/;",
            "proxy_http_version 1.1;",
            'proxy_set_header Connection "";',
            "proxy_pass_request_body off;",
            'proxy_set_header Content-Length "";',
            *_daemon_headers({MODEL_HEADER: name, MODE_HEADER: MODE_AUTH}),
            f"proxy_connect_timeout {r.connect_timeout};",
            f"proxy_read_timeout {_secs(spec.hold_timeout + HOLD_MARGIN_SECONDS)};",
        ])]
    entries = nginx_openai.model_entries(config, spec, upstream)
    sleeps = spec.sleeps  # its sleep API is the daemon's, not the clients' (see Sleep)
    guard = [] if sleeps is None else [_block(f"= /{name}{a.path.split('?')[0]}", [
        "default_type application/json;",
        f"return 403 {_json('forbidden', 'the model-starter daemon sleeps and wakes it')};"])
        for a in (sleeps.sleep, sleeps.wake) if a is not None]
    return [
        *guard,
        f"# model {name}: {where}\n" + _block(f"= /{name}", [*bare, *proxy, *bind, *auth, *on_down]),
        _block(f"/{name}/", [*strip, *proxy, *bind, *auth, *on_down]),
        *(_block(e.location, [*e.head, *proxy, *bind, *auth, *on_down]) for e in entries),
        *extra,
        _block(start, [
            f"proxy_pass http://{r.starter}$request_uri;",
            "proxy_http_version 1.1;",
            "proxy_pass_request_body off;",
            'proxy_set_header Content-Length "";',
            *_daemon_headers({MODEL_HEADER: name, MODE_HEADER: MODE_RETRY,
                              SENT_HEADER: "$upstream_bytes_sent",
                              STATUS_HEADER: "$upstream_status"}),
            f"proxy_connect_timeout {r.connect_timeout};",
            f"proxy_read_timeout {_secs(spec.hold_timeout + HOLD_MARGIN_SECONDS)};",
            f"client_max_body_size {spec.client_max_body_size};",
            "proxy_intercept_errors on;",
            f"error_page {STATUS_REPLAY} = {retry};",
            f"error_page {NGINX_BAD_GATEWAY} = {_fallback(config, r, r.down)};",
            "recursive_error_pages on;",
        ]),
        _block(retry, [*_silent_node(r), *replay, *proxy, *replay_bind,
                       f"error_page {_codes(*_down_codes(r))} = "
                       f"{_fallback(config, r, '@ms_retry_failed')};"]),
    ]


def _silent_node(r: Route) -> list[str]:
    """On a node, the start path's 504 is the daemon's "ready" only with its answer header:
    nginx's own 504 (its connect timeout: the host is silent) must not be replayed."""
    if r.node is None:
        return []
    return [
        "default_type application/json;",
        f"if ({_var(ANSWER_HEADER)} != {ANSWER_READY}) {{",
        f"    add_header Retry-After {DAEMON_DOWN_RETRY_AFTER} always;",
        f"    return {STATUS_UNAVAILABLE} {node_down_json(r.node)};",
        "}",
    ]


def _fallbacks(config: Config) -> list[tuple[str, str, str]]:
    """(down location, auth-failed location, JSON) of each daemon the front asks."""
    if not config.nodes:
        return [("@ms_down", "@ms_auth_failed", DAEMON_DOWN_JSON)]
    used = {m.node for m in config.models.values()}
    return [(f"@ms_down_{n}", f"@ms_auth_failed_{n}", node_down_json(n))
            for n in config.nodes if n in used]


def render_locations(config: Config) -> str:
    """server-context part: a location per model, the shared fallbacks and a catch-all."""
    out = [_header(config)]
    for spec in config.models.values():
        out.extend(_model_locations(config, spec))
    auth = any(m.mode == "auth_request" for m in config.models.values())
    for down, auth_failed, down_json in _fallbacks(config):
        out.extend(_down_blocks(down, auth_failed if auth else None, down_json))
    out.append(_block("@ms_retry_failed", [
        "default_type application/json;",
        f"return {NGINX_BAD_GATEWAY} {RETRY_FAILED_JSON};",
    ]))
    out.append(nginx_openai.render_locations(config))
    if config.nodes:  # no daemon on the front host: unknown names are answered here
        out.append(_block("/", ["default_type application/json;",
                                f"return {STATUS_UNKNOWN_MODEL} {UNKNOWN_JSON};"]))
        return "\n".join(out)
    # Unknown model names get the daemon's JSON 404; the admin API refuses proxied calls.
    out.append(_block("/", [
        f"proxy_pass http://{STARTER_UPSTREAM};",
        "proxy_http_version 1.1;",
        "proxy_pass_request_body off;",
        'proxy_set_header Content-Length "";',
        *_daemon_headers({VIA_HEADER: VIA_NGINX}),
        "proxy_connect_timeout 5s;",
        f"client_max_body_size {config.nginx.client_max_body_size};",
        "proxy_intercept_errors on;",
        f"error_page {NGINX_BAD_GATEWAY} = @ms_down;",
    ]))
    return "\n".join(out)


def _down_blocks(down: str, auth_failed: str | None, down_json: str) -> list[str]:
    """The named locations answering for a daemon that does not (and its auth failures)."""
    out = [_block(down, [
        "default_type application/json;",
        # The daemon's own 502 (a POST that is not replayed) is intercepted here too;
        # only a missing daemon answer means "daemon down".
        f"if ({_var(ANSWER_HEADER)} = {ANSWER_NOT_REPLAYED}) {{",
        f"    add_header {ANSWER_HEADER} {ANSWER_NOT_REPLAYED} always;  # and no inherited Retry-After",
        f"    return {STATUS_NOT_REPLAYED} {NOT_REPLAYED_JSON};",
        "}",
        f"add_header Retry-After {DAEMON_DOWN_RETRY_AFTER} always;",
        f"return {STATUS_UNAVAILABLE} {down_json};",
    ])]
    if auth_failed is not None:
        out.append(_block(auth_failed, [
            "default_type application/json;",
            f"if ($ms_auth_status = {STATUS_UNKNOWN_MODEL}) {{",
            f"    return {STATUS_UNKNOWN_MODEL} {UNKNOWN_JSON};",
            "}",
            f"if ($ms_auth_status = {STATUS_UNAVAILABLE}) {{",
            "    add_header Retry-After $ms_auth_retry always;",
            f"    return {STATUS_UNAVAILABLE} {START_FAILED_JSON};",
            "}",
            f"add_header Retry-After {DAEMON_DOWN_RETRY_AFTER} always;",
            f"return {STATUS_UNAVAILABLE} {down_json};",
        ]))
    return out


def render(config: Config, feed_key: str | None = None) -> str:
    """The conf.d drop-in: upstreams plus a server on ``nginx.listen``."""
    server = "".join(
        f"    {line}\n" if line else "\n" for line in render_locations(config).splitlines()[1:]
    )
    return (
        render_http(config, feed_key)
        + "\nserver {\n"
        + f"    listen {' '.join(_word(w) for w in config.nginx.listen.split(' '))};\n"
        + "    server_name _;\n"
        + server
        + "}\n"
    )


def render_files(
    config: Config, style: str = "conf.d", feed_key: str | None = None
) -> Iterator[tuple[str, str]]:
    """(file name, content) pairs for one include style."""
    if style == "conf.d":
        yield "model-starter.conf", render(config, feed_key)
    elif style == "locations":
        yield "model-starter-upstreams.conf", render_http(config, feed_key)
        yield "model-starter-locations.conf", render_locations(config)
    else:
        raise ValueError(f"unknown style {style!r}; choose one of {', '.join(STYLES)}")
