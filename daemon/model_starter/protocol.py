"""The nginx <-> daemon protocol, defined once.

The generated nginx config (``nginx.py``) writes these headers, modes and log lines; the
daemon (``app.py``, ``admin.py``, the activity monitor) reads them; the CLI uses the admin
paths. Change a name here and every side changes with it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from typing import Final, Literal

__all__ = [
    "ACTIVITY_LOG_TAG",
    "ADMIN_PREFIX",
    "ANSWER_HEADER",
    "ANSWER_NOT_REPLAYED",
    "ANSWER_READY",
    "CLIENT_HEADER",
    "DAEMON_DOWN_RETRY_AFTER",
    "DAEMON_HEADERS",
    "ERROR_MODEL_UNAVAILABLE",
    "ERROR_NOT_REPLAYED",
    "ERROR_STARTER_UNAVAILABLE",
    "ERROR_UNKNOWN_MODEL",
    "FEED_KEY_RE",
    "HOLD_MARGIN_SECONDS",
    "MAX_REQUEST_BYTES",
    "MODEL_HEADER",
    "MODE_AUTH",
    "MODE_HEADER",
    "MODE_RETRY",
    "OPENAI_PREFIX",
    "PROXIED_HEADERS",
    "REQUEST_ID_HEADER",
    "SENT_HEADER",
    "STARTER_UPSTREAM",
    "STATUS_HEADER",
    "STATUS_NOT_REPLAYED",
    "STATUS_READY",
    "STATUS_REPLAY",
    "STATUS_UNAVAILABLE",
    "STATUS_UNKNOWN_MODEL",
    "V2_NOT_LOADED_STATUSES",
    "V2_PREFIX",
    "VIA_HEADER",
    "VIA_NGINX",
    "ActivityRule",
    "AdminPath",
    "Answer",
    "Mode",
    "activity_log_format",
    "admin_path",
    "first_upstream_status",
    "is_openai_path",
    "parse_activity_datagram",
    "per_model_activity",
    "replay_source_address",
    "request_reached_model",
    "v2_source_address",
]

# -- request headers nginx sets towards the daemon ------------------------------------------

MODEL_HEADER: Final = "X-Model-Starter-Model"  # which model the request is for
MODE_HEADER: Final = "X-Model-Starter-Mode"  # how to answer (see Mode)
SENT_HEADER: Final = "X-Model-Starter-Upstream-Sent"  # nginx's $upstream_bytes_sent
STATUS_HEADER: Final = "X-Model-Starter-Upstream-Status"  # nginx's $upstream_status
VIA_HEADER: Final = "X-Model-Starter-Via"  # set on the catch-all location: proxied, not local
VIA_NGINX: Final = "nginx"  # its value (the daemon only tests that it is present)
# A request carrying either came through nginx: the admin API refuses it.
PROXIED_HEADERS: Final = (VIA_HEADER, MODEL_HEADER)
# Sent by a direct caller (the CLI, a script) of the admin API or the start path: a header no
# web page can send cross-origin without a CORS preflight, which the daemon never grants.
CLIENT_HEADER: Final = "X-Model-Starter-Client"
# Every request header of the protocol. Each generated location that talks to the daemon
# sets or clears every one of them, so a client's own copies never reach the daemon.
DAEMON_HEADERS: Final = (MODEL_HEADER, MODE_HEADER, SENT_HEADER, STATUS_HEADER, VIA_HEADER,
                         CLIENT_HEADER)

Mode = Literal["retry", "auth"]
"""``retry``: the error_page start path (504 = ready, replay); ``auth``: auth_request (204)."""
MODE_RETRY: Final[Mode] = "retry"
MODE_AUTH: Final[Mode] = "auth"

# -- response header the daemon sets; the generated config tests it -------------------------

ANSWER_HEADER: Final = "X-Model-Starter"
# The id of a failed start, in the JSON answer and this header: the details (the model's log
# tail) are in the daemon's log under it, and in the admin API; never sent to a client.
REQUEST_ID_HEADER: Final = "X-Model-Starter-Request-Id"
Answer = Literal["ready", "not_replayed"]
ANSWER_READY: Final[Answer] = "ready"
ANSWER_NOT_REPLAYED: Final[Answer] = "not_replayed"

# -- status codes of the daemon's answers on the start path; the generated config routes them --

STATUS_READY: Final = 204  # ready, nothing to replay (auth_request, or a seed call)
STATUS_REPLAY: Final = 504  # ready now: nginx replays the original request once
STATUS_NOT_REPLAYED: Final = 502  # the request had reached the model, which failed
STATUS_UNKNOWN_MODEL: Final = 404
STATUS_UNAVAILABLE: Final = 503  # start failed or timed out, or the daemon shuts down
# The KServe V2 server answers these for a model it has not loaded (400 while loading):
# nginx sends them to the start path, and a replay after them is safe.
V2_NOT_LOADED_STATUSES: Final = (400, 404)
# The daemon may hold a request for a whole start; nginx waits this much longer for it.
HOLD_MARGIN_SECONDS: Final = 30
# The largest request the daemon reads (nginx sends it no body; admin calls a small one).
MAX_REQUEST_BYTES: Final = 64 * 1024
# What a client is told to wait when the daemon is not reachable.
DAEMON_DOWN_RETRY_AFTER: Final = 5

# -- error kinds: the `error` field of a JSON answer (also in ANSWER_HEADER on the daemon's) --

ERROR_UNKNOWN_MODEL: Final = "unknown_model"
ERROR_NOT_REPLAYED: Final = ANSWER_NOT_REPLAYED
ERROR_STARTER_UNAVAILABLE: Final = "starter_unavailable"  # nginx's own: no daemon answer
ERROR_MODEL_UNAVAILABLE: Final = "model_unavailable"  # nginx's own: the replay failed too

# -- the activity feed: nginx logs each finished V2 request to the daemon over syslog/UDP ---

# Anyone on the host can send a UDP datagram: each line starts with a secret the daemon
# checks (kept in the state dir, see ``feedkey``), so only nginx can report activity.
ACTIVITY_LOG_TAG: Final = "model_starter"
_V2_PATH: Final = "/v2/models/"
FEED_KEY_RE: Final = re.compile(r"[0-9a-f]{32}")

# -- the daemon as nginx names it: its upstream, hence the Host of what nginx sends it -------

STARTER_UPSTREAM: Final = "ms_starter"

# -- the single endpoints: OpenAI (routed by the body's `model`) and KServe V2 (by path) ------

OPENAI_PREFIX: Final = "/v1/"  # the start path sends the daemon this URI: errors in OpenAI's shape
V2_PREFIX: Final = _V2_PATH


def is_openai_path(path: str) -> bool:
    """A request of the OpenAI endpoint (its errors take OpenAI's shape)."""
    return path.startswith(OPENAI_PREFIX)


# -- the admin API ------------------------------------------------------------------------------

# Model names start with an alphanumeric, so this prefix can never be a model.
ADMIN_PREFIX: Final = "/_ms"
AdminPath = Literal["status", "reload", "metrics", "events", "start", "stop", "logs"]

_NUMBER = re.compile(r"\d+")


def admin_path(what: AdminPath, model: str | None = None) -> str:
    """The URL path of an admin call; ``start``/``stop``/``logs`` need the model."""
    if what in ("start", "stop", "logs"):
        if model is None:
            raise ValueError(f"admin {what} needs a model name")
        if what == "logs":
            return f"{ADMIN_PREFIX}/logs/{model}"
        return f"{ADMIN_PREFIX}/models/{model}/{what}"
    return f"{ADMIN_PREFIX}/{what}"


def request_reached_model(upstream_bytes_sent: str | None) -> bool:
    """nginx's $upstream_bytes_sent: 0 means the connection was refused (nothing ran)."""
    return upstream_bytes_sent is not None and any(
        int(n) > 0 for n in _NUMBER.findall(upstream_bytes_sent)
    )


def first_upstream_status(upstream_status: str | None) -> int | None:
    """The status of nginx's first attempt, from $upstream_status (``"404, 200"`` -> 404)."""
    first = _NUMBER.search(upstream_status or "")
    return None if first is None else int(first.group())


def activity_log_format(key: str) -> str:
    """nginx's log_format of the feed: the secret, then the URI."""
    if not FEED_KEY_RE.fullmatch(key):
        raise ValueError("the activity feed key must be 32 lowercase hex digits")
    return f"{key} $uri"


def parse_activity_datagram(data: bytes, key: str) -> str | None:
    """The V2 model name in a syslog line ``<190>... model_starter: KEY /v2/models/NAME/infer``;
    None unless the line carries `key`."""
    text = data.decode("utf-8", "replace")
    marker = text.find(" " + _V2_PATH)
    if marker < 0:
        return None
    given = text[:marker].rsplit(" ", 1)[-1]
    if not hmac.compare_digest(given.encode(), key.encode()):
        return None
    words = text[marker + 1 + len(_V2_PATH):].split("/", 1)[0].split()
    return words[0] if words else None


# How a model's requests in flight are seen: at its own port; on the shared V2 server by
# the source address nginx connects from (one per model); or any connection to that
# server counts for every V2 model (a remote server: the conservative rule).
ActivityRule = Literal["port", "source_address", "shared_server"]


def per_model_activity(host: str) -> bool:
    """`host` is an IPv4 loopback address of this host: nginx can connect to it from a
    distinct loopback source (Linux routes all of 127.0.0.0/8 locally) and the kernel's
    socket table tells those connections apart — each V2 model's on a shared server, each
    model's replays. A name (even ``localhost``, which may resolve to ::1) or a remote
    address: no."""
    try:
        return ipaddress.IPv4Address(host).is_loopback
    except ValueError:
        return False


def _loopback(salt: bytes, name: str, first: int, span: int) -> str:
    """An address in 127.FIRST.0.0 .. 127.(FIRST+SPAN-1).255.254 derived from `name` alone:
    stable across reloads and config order."""
    h = hashlib.sha256(salt + name.encode("utf-8")).digest()
    return f"127.{first + h[0] % span}.{h[1]}.{1 + h[2] % 254}"


def v2_source_address(name: str) -> str:
    """The loopback address nginx connects from for V2 model `name` (``proxy_bind``), in
    127.128.0.0/9 — away from 127.0.0.1, which the daemon's own calls use, so they never
    count. Two names that met on one address would only be counted together (the
    conservative way)."""
    return _loopback(b"", name, 128, 127)


def replay_source_address(name: str) -> str:
    """The loopback address nginx replays model `name`'s released requests from
    (``proxy_bind`` in its replay location), in 127.64.0.0/10: no other traffic comes from
    it, so the connections the kernel shows from it after a release are those replays.
    Two names that met on one address would only end their protection later (the bound)."""
    return _loopback(b"replay\0", name, 64, 64)
