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
import re
from collections.abc import Iterator

from model_starter import nginx_openai
from model_starter.config import Config, ModelSpec, V2Spec
from model_starter.feedkey import activity_key
from model_starter.nginx_syntax import block as _block
from model_starter.nginx_syntax import upstream_var as _var
from model_starter.protocol import (
    ACTIVITY_LOG_TAG,
    ANSWER_HEADER,
    ANSWER_NOT_REPLAYED,
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
    STARTER_UPSTREAM,
    STATUS_HEADER,
    STATUS_NOT_REPLAYED,
    STATUS_REPLAY,
    STATUS_UNAVAILABLE,
    STATUS_UNKNOWN_MODEL,
    V2_NOT_LOADED_STATUSES,
    VIA_HEADER,
    VIA_NGINX,
    activity_log_format,
)

__all__ = ["STYLES", "render", "render_files"]

STYLES = ("conf.d", "locations")
INFERENCE_UPSTREAM = "ms_inference"
ACTIVITY_FORMAT = "ms_activity"
AUTH_LOCATION = "/_ms_auth/"  # internal: the auth_request subrequest of each model


def _json(error: str, detail: str, **extra: str) -> str:
    """A JSON body for nginx's `return`, inside single quotes (so it may hold none)."""
    body = json.dumps({"error": error, "detail": detail, **extra}, separators=(",", ":"))
    assert "'" not in body, body
    return f"'{body}'"


# The JSON bodies nginx answers with itself, each defined once.
DAEMON_DOWN_JSON = _json(ERROR_STARTER_UNAVAILABLE, "the model-starter daemon is not reachable")
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
NGINX_AUTH_FAILED = 500


def _codes(*codes: int) -> str:
    return " ".join(str(c) for c in codes)


def _upstream(spec: ModelSpec) -> str:
    return INFERENCE_UPSTREAM if spec.launcher == "v2" else f"ms_model_{spec.name}"


def _has_v2(config: Config) -> bool:
    return any(m.launcher == "v2" for m in config.models.values())


# What a config value may look like once pasted into nginx text: the config's validation
# admits less (see config.convert); this is the generator's own last line of defence.
_WORD = re.compile(r"[A-Za-z0-9._:*=\[\]-]+")
_COMMENT_UNSAFE = re.compile(r"[^\x20-\x7e]")


def _word(value: str) -> str:
    """`value` as one nginx word, or ValueError: nothing from a config may end a directive."""
    if not _WORD.fullmatch(value):
        raise ValueError(f"refusing to write {value!r} into the nginx config")
    return value


def _comment(text: str) -> str:
    """`text` made safe inside a `#` comment: one line, printable ASCII."""
    return _COMMENT_UNSAFE.sub("?", text)


def _addr(host: str, port: int) -> str:
    _word(host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_CLEARED = '""'  # proxy_set_header with an empty value: the header is not sent


def _daemon_headers(values: dict[str, str]) -> list[str]:
    """Every protocol header towards the daemon: those in `values` set, all others cleared,
    so a client's own `X-Model-Starter-*` headers never reach it."""
    assert set(values) <= set(DAEMON_HEADERS), values
    return [f"proxy_set_header {h} {values.get(h, _CLEARED)};" for h in DAEMON_HEADERS]


def _secs(value: float) -> str:
    return f"{max(1, math.ceil(value))}s"


def _daemon_addr(config: Config) -> str:
    host = config.listen_host
    if host in ("0.0.0.0", "", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return _addr(host, config.listen_port)


def _header(config: Config) -> str:
    return f"# Generated by model-starter from {_comment(config.source)}; do not edit.\n"


def render_http(config: Config, feed_key: str | None = None) -> str:
    """http-context part: one upstream per model (exactly one server each) and the daemon.
    `feed_key`: the activity feed's secret (default: the state dir's, see ``feedkey``)."""
    out = [_header(config)]
    # keepalive: auth_request mode asks the daemon on every request.
    out.append(f"upstream {STARTER_UPSTREAM} {{\n    server {_daemon_addr(config)};\n"
               "    keepalive 64;\n}\n")
    for spec in config.models.values():
        if spec.launcher == "v2":
            continue
        # One server entry, no max_fails: nginx then never marks a restarting model "down".
        out.append(f"upstream {_upstream(spec)} {{\n    server {_addr(spec.host, spec.port)};\n}}\n")
    if _has_v2(config):
        addr = _addr(config.inference.host, config.inference.port)
        out.append(f"upstream {INFERENCE_UPSTREAM} {{\n    server {addr};\n}}\n")
        # Which V2 model a finished request was for (the server's port is shared).
        key = activity_key(config) if feed_key is None else feed_key
        out.append(f"log_format {ACTIVITY_FORMAT} '{activity_log_format(key)}';\n")
    out.append(nginx_openai.render_http(config))
    return "\n".join(o for o in out if o)


def _model_proxy(config: Config, spec: ModelSpec) -> list[str]:
    """Settings shared by the entry locations and the replay location of one model."""
    t = _secs(config.nginx.proxy_timeout)
    return [
        "proxy_http_version 1.1;",
        f"proxy_set_header Host {_addr(spec.host, spec.port)};",
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_connect_timeout 5s;",
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
    proxy = _model_proxy(config, spec)
    upstream = _upstream(spec)
    if isinstance(spec, V2Spec):
        # An unloaded model does not refuse the connection: the server answers 404 (400
        # while loading). Intercepting those sends them to the start path; a genuine
        # 400/404 of a loaded model is replayed once and then reaches the client as is.
        prefix = f"/v2/models/{_word(spec.v2_name or name)}"
        # Rewritten in the entry (the activity log reports $uri); the replay keeps it.
        bare = [f"rewrite ^ {prefix} break;", f"proxy_pass http://{upstream};"]
        strip = [f"rewrite ^/{rx}/(.*)$ {prefix}/$1 break;", f"proxy_pass http://{upstream};"]
        replay = [f"proxy_pass http://{upstream};"]
        log = f"access_log syslog:server={_daemon_addr(config)},tag={ACTIVITY_LOG_TAG},nohostname "
        proxy = [*proxy, f"{log}{ACTIVITY_FORMAT};"]
        down = _codes(*V2_NOT_LOADED_STATUSES, NGINX_BAD_GATEWAY)
        on_down = ["proxy_intercept_errors on;", f"error_page {down} = {start};",
                   "recursive_error_pages on;"]
        where = f"{prefix}/... on {_addr(spec.host, spec.port)} (KServe V2)"
    else:
        # The hot path replaces the prefix natively (no regex per request); only the replay,
        # on the cold path, strips it with a rewrite, to the same URI.
        bare = strip = [f"proxy_pass http://{upstream}/;"]
        replay = [f"rewrite ^/{rx}/(.*)$ /$1 break;", f"rewrite ^/{rx}$ / break;",
                  f"proxy_pass http://{upstream};"]
        on_down = [f"error_page {NGINX_BAD_GATEWAY} = {start};", "recursive_error_pages on;"]
        where = _addr(spec.host, spec.port)
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
            f"error_page {NGINX_AUTH_FAILED} = "
            f"{nginx_openai.error_location(config, '@ms_auth_failed')};",
        ]
        extra = [_block(f"= {AUTH_LOCATION}{name}", [
            "internal;",
            f"proxy_pass http://{STARTER_UPSTREAM}/{name}/;",
            "proxy_http_version 1.1;",
            'proxy_set_header Connection "";',
            "proxy_pass_request_body off;",
            'proxy_set_header Content-Length "";',
            *_daemon_headers({MODEL_HEADER: name, MODE_HEADER: MODE_AUTH}),
            "proxy_connect_timeout 5s;",
            f"proxy_read_timeout {_secs(spec.hold_timeout + HOLD_MARGIN_SECONDS)};",
        ])]
    entries = nginx_openai.model_entries(config, spec, upstream)
    return [
        f"# model {name}: {where}\n" + _block(f"= /{name}", [*bare, *proxy, *auth, *on_down]),
        _block(f"/{name}/", [*strip, *proxy, *auth, *on_down]),
        *(_block(e.location, [*e.head, *proxy, *auth, *on_down]) for e in entries),
        *extra,
        _block(start, [
            f"proxy_pass http://{STARTER_UPSTREAM}$request_uri;",
            "proxy_http_version 1.1;",
            "proxy_pass_request_body off;",
            'proxy_set_header Content-Length "";',
            *_daemon_headers({MODEL_HEADER: name, MODE_HEADER: MODE_RETRY,
                              SENT_HEADER: "$upstream_bytes_sent",
                              STATUS_HEADER: "$upstream_status"}),
            "proxy_connect_timeout 5s;",
            f"proxy_read_timeout {_secs(spec.hold_timeout + HOLD_MARGIN_SECONDS)};",
            f"client_max_body_size {spec.client_max_body_size};",
            "proxy_intercept_errors on;",
            f"error_page {STATUS_REPLAY} = {retry};",
            f"error_page {NGINX_BAD_GATEWAY} = {nginx_openai.error_location(config, '@ms_down')};",
            "recursive_error_pages on;",
        ]),
        _block(retry, [*replay, *proxy, f"error_page {NGINX_BAD_GATEWAY} = "
                       f"{nginx_openai.error_location(config, '@ms_retry_failed')};"]),
    ]


def render_locations(config: Config) -> str:
    """server-context part: a location per model, the shared fallbacks and a catch-all."""
    out = [_header(config)]
    for spec in config.models.values():
        out.extend(_model_locations(config, spec))
    out.append(_block("@ms_down", [
        "default_type application/json;",
        # The daemon's own 502 (a POST that is not replayed) is intercepted here too;
        # only a missing daemon answer means "daemon down".
        f"if ({_var(ANSWER_HEADER)} = {ANSWER_NOT_REPLAYED}) {{",
        f"    add_header {ANSWER_HEADER} {ANSWER_NOT_REPLAYED} always;  # and no inherited Retry-After",
        f"    return {STATUS_NOT_REPLAYED} {NOT_REPLAYED_JSON};",
        "}",
        f"add_header Retry-After {DAEMON_DOWN_RETRY_AFTER} always;",
        f"return {STATUS_UNAVAILABLE} {DAEMON_DOWN_JSON};",
    ]))
    if any(m.mode == "auth_request" for m in config.models.values()):
        out.append(_block("@ms_auth_failed", [
            "default_type application/json;",
            f"if ($ms_auth_status = {STATUS_UNKNOWN_MODEL}) {{",
            f"    return {STATUS_UNKNOWN_MODEL} {UNKNOWN_JSON};",
            "}",
            f"if ($ms_auth_status = {STATUS_UNAVAILABLE}) {{",
            "    add_header Retry-After $ms_auth_retry always;",
            f"    return {STATUS_UNAVAILABLE} {START_FAILED_JSON};",
            "}",
            f"add_header Retry-After {DAEMON_DOWN_RETRY_AFTER} always;",
            f"return {STATUS_UNAVAILABLE} {DAEMON_DOWN_JSON};",
        ]))
    out.append(_block("@ms_retry_failed", [
        "default_type application/json;",
        f"return {NGINX_BAD_GATEWAY} {RETRY_FAILED_JSON};",
    ]))
    out.append(nginx_openai.render_locations(config))
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
