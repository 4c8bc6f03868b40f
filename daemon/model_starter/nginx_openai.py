"""The single endpoints of the nginx include: OpenAI (``/v1/``) and KServe V2 (``/v2/models/``).

* ``/v1/...`` (needs nginx's njs module): ``njs/router.js`` reads the body in memory, finds
  its ``model`` (JSON field or multipart form field), looks the name up in a generated
  ``map`` (names and aliases -> the model's named location ``@ms_v1_NAME``) and redirects
  there. ``@ms_v1_NAME`` proxies the original URI straight to the model, with the same
  ``error_page 502`` start path as the prefix route: nginx alone is in the path of a warm
  model. ``GET /v1/models`` and ``/v1/models/{id}`` are static answers nginx gives itself.
* ``/v2/models/NAME/...`` goes by path to the model (a ``launcher: v2`` model's shared
  server, or a process model's own port); any other ``/v2/models/`` path is a JSON 404.

Errors on ``/v1/`` take OpenAI's shape: the start path picks its error locations with the
``$ms_api`` suffix (``_v1`` on this endpoint), the daemon shapes its own answers by the URI.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

from model_starter.config import Config, ModelSpec, V2Spec
from model_starter.nginx_syntax import block, upstream_var
from model_starter.openai_errors import openai_error
from model_starter.protocol import ANSWER_HEADER, ANSWER_NOT_REPLAYED, OPENAI_PREFIX, V2_PREFIX

__all__ = [
    "API_VAR",
    "Entry",
    "error_location",
    "model_entries",
    "njs_module",
    "njs_note",
    "openai_enabled",
    "render_http",
    "render_locations",
    "router_js",
]

API_VAR: Final = "$ms_api"  # "_v1" for a request of the OpenAI endpoint, else ""
NJS_MODULE: Final = "ngx_http_js_module.so"
# Where distributions put nginx's dynamic modules (Debian: libnginx-mod-http-js).
NJS_DIRS: Final = ("/usr/lib/nginx/modules", "/usr/lib64/nginx/modules",
                   "/usr/share/nginx/modules", "/etc/nginx/modules", "/usr/local/nginx/modules")
ROUTER: Final = "ms_router"


def njs_module() -> Path | None:
    """The njs module file of this machine's nginx, if installed."""
    return next((p for d in NJS_DIRS if (p := Path(d) / NJS_MODULE).is_file()), None)


def openai_enabled(config: Config) -> bool:
    """``nginx.openai``: true / false, or auto = when this machine has nginx's njs module."""
    if config.nginx.openai == "auto":
        return njs_module() is not None
    return config.nginx.openai == "true"


def njs_note(config: Config) -> str | None:
    """What `check` and `nginx` tell an operator whose nginx lacks njs (None: all is well)."""
    if config.nginx.openai == "false" or njs_module() is not None:
        return None
    where = ", ".join(NJS_DIRS[:1])
    if config.nginx.openai == "auto":
        return (f"note: nginx's njs module ({NJS_MODULE}) is not in {where}: the include leaves "
                f"out the OpenAI endpoint {OPENAI_PREFIX} (the /<model>/ and {V2_PREFIX} routes "
                "work). Install it (Debian: apt-get install libnginx-mod-http-js) to get it, "
                "or set nginx.openai: false to silence this note.")
    return (f"warning: nginx.openai is true but nginx's njs module ({NJS_MODULE}) is not in "
            f"{where}: nginx will refuse this include (js_import) unless its njs module is "
            "loaded (Debian: apt-get install libnginx-mod-http-js). Set nginx.openai: auto "
            "or false to serve the /<model>/ routes without it.")


def router_js() -> Path:
    """The njs script, shipped with the package (it does not depend on the config)."""
    return Path(str(resources.files("model_starter") / "njs" / "router.js"))


def error_location(config: Config, name: str) -> str:
    """A shared error location, or its OpenAI-shaped twin picked per request."""
    return f"{name}{API_VAR}" if openai_enabled(config) else name


@dataclass(frozen=True)
class Entry:
    """One more way into a model: a location and its first lines (rewrite, proxy_pass)."""

    location: str
    head: tuple[str, ...]


def _names(spec: ModelSpec) -> tuple[str, ...]:
    return (spec.name, *spec.aliases)


def model_entries(config: Config, spec: ModelSpec, upstream: str) -> list[Entry]:
    """The model's locations on the single endpoints; the caller adds proxy and start path."""
    out: list[Entry] = []
    if openai_enabled(config) and spec.launcher != "v2":
        out.append(Entry(f"@ms_v1_{spec.name}", (f"proxy_pass http://{upstream};",)))
    if not isinstance(spec, V2Spec):
        # A process model that speaks V2 serves the same path on its own port.
        out.append(Entry(f"= {V2_PREFIX}{spec.name}", (f"proxy_pass http://{upstream};",)))
        out.append(Entry(f"{V2_PREFIX}{spec.name}/", (f"proxy_pass http://{upstream};",)))
        return out
    # The shared server knows the model by its v2_name; the URI is rewritten (not replaced
    # by proxy_pass) because the activity log reports $uri.
    target = f"{V2_PREFIX}{spec.v2_name or spec.name}"
    for name in _names(spec):
        head: tuple[str, ...] = (f"proxy_pass http://{upstream};",)
        if name != (spec.v2_name or spec.name):
            rx = re.escape(f"{V2_PREFIX}{name}")
            head = (f"rewrite ^{rx}(/.*)?$ {target}$1 break;", *head)
        out.append(Entry(f"= {V2_PREFIX}{name}", head))
        out.append(Entry(f"{V2_PREFIX}{name}/", head))
    return out


def _quoted(doc: Any) -> str:
    """JSON for an nginx ``return``: single-quoted, with nothing nginx would interpret."""
    text = json.dumps(doc, separators=(",", ":"))
    if "'" in text or "$" in text or "\\" in text:
        raise ValueError(f"cannot quote {text!r} for nginx")
    return f"'{text}'"


def _model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "model-starter"}


def _openai_names(config: Config) -> list[str]:
    return [n for m in config.models.values() if m.launcher != "v2" for n in _names(m)]


def render_http(config: Config) -> str:
    """http context: the njs script, the name -> location map, the error-shape switch."""
    if not openai_enabled(config):
        return ""
    routes = "".join(
        f'    "{name}" @ms_v1_{spec.name};\n'
        for spec in config.models.values() if spec.launcher != "v2" for name in _names(spec)
    )
    return (
        f"# The OpenAI endpoint {OPENAI_PREFIX}: routed by the body's model (njs).\n"
        f"js_import {ROUTER} from {router_js()};\n"
        "js_var $ms_v1_model;\n"
        "map $ms_v1_model $ms_v1_route {  # names and aliases (case-insensitive)\n"
        '    default "";\n'
        f"{routes}}}\n"
        f"map $request_uri {API_VAR} {{\n"
        f"    ~^{OPENAI_PREFIX} _v1;\n"
        '    default "";\n'
        "}\n"
    )


def _answer(status: int, doc: Any, *extra: str) -> list[str]:
    return ["default_type application/json;", *extra, f"return {status} {_quoted(doc)};"]


def _openai_locations(config: Config) -> list[str]:
    limit = config.nginx.openai_max_body_size
    names = _openai_names(config)
    unknown = openai_error("The model does not exist.", "model_not_found", param="model")
    down = openai_error("The model-starter daemon is not reachable; try again shortly.",
                        "starter_unavailable", status=503)
    out = [
        f"# OpenAI endpoint: GET {OPENAI_PREFIX}models and every request naming a model\n"
        + block(f"= {OPENAI_PREFIX}models", _answer(200, {
            "object": "list", "data": [_model_object(n) for n in names]})),
        *(block(f"= {OPENAI_PREFIX}models/{n}", _answer(200, _model_object(n)))
          for n in names),
        block(f"{OPENAI_PREFIX}models/", _answer(404, unknown)),
        block(OPENAI_PREFIX, [
            # njs reads the body only while it is in memory.
            f"client_max_body_size {limit};",
            f"client_body_buffer_size {limit};",
            "error_page 413 = @ms_v1_too_large;",
            f"js_content {ROUTER}.route;",
        ]),
        block("@ms_v1_too_large", _answer(413, openai_error(
            f"The request body is larger than nginx.openai_max_body_size ({limit}).",
            "request_too_large"))),
        block("@ms_down_v1", [
            "default_type application/json;",
            f"if ({upstream_var(ANSWER_HEADER)} = {ANSWER_NOT_REPLAYED}) {{",
            f"    add_header {ANSWER_HEADER} {ANSWER_NOT_REPLAYED} always;",
            "    return 502 " + _quoted(openai_error(
                "The request reached the model, which failed before answering; it is not "
                "sent again because it may have taken effect.", "not_replayed",
                status=502)) + ";",
            "}",
            "add_header Retry-After 5 always;",
            f"return 503 {_quoted(down)};",
        ]),
        block("@ms_retry_failed_v1", _answer(502, openai_error(
            "The model was started but failed on the replayed request.", "model_unavailable",
            status=502))),
    ]
    if any(m.mode == "auth_request" for m in config.models.values()):
        failed = json.dumps(openai_error("The model could not be started (ERR); "
                                         "`model-starter status` shows why.", "ERR",
                                         status=503), separators=(",", ":"))
        out.append(block("@ms_auth_failed_v1", [
            "default_type application/json;",
            "if ($ms_auth_status = 404) {",
            f"    return 404 {_quoted(unknown)};",
            "}",
            "if ($ms_auth_status = 503) {",
            "    add_header Retry-After $ms_auth_retry always;",
            f"    return 503 '{failed.replace('ERR', '$ms_auth_error')}';",
            "}",
            "add_header Retry-After 5 always;",
            f"return 503 {_quoted(down)};",
        ]))
    return out


def render_locations(config: Config) -> str:
    """server context: the OpenAI endpoint (when enabled) and the V2 paths' JSON 404."""
    out = _openai_locations(config) if openai_enabled(config) else []
    out.append(block(V2_PREFIX, _answer(404, {
        "error": "unknown_model", "detail": "no such model is configured"})))
    return "\n".join(out)
