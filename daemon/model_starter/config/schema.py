"""The config schema, declared once: typed frozen dataclasses whose fields carry their
YAML converter, README text and launcher rules (`convert.Key`). Validation, defaults,
"unknown key" errors, required/only-for rules and the README tables all read these.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

import model_starter.config.convert as c
import model_starter.config.names as names
from model_starter.config.convert import Conv, Ctx, Key, Node, key
from model_starter.config.nodes import NodeSpec, nodes
from model_starter.lifecycle_spec import (
    Hooks,
    Invalid,
    KvCache,
    Sleep,
    extra_hold_seconds,
    parse_hooks,
    parse_kv_cache,
    parse_sleep,
)

LauncherKind = Literal["process", "command", "v2"]
Mode = Literal["error_page", "auth_request"]
OpenAISwitch = Literal["auto", "true", "false"]
LAUNCHERS: tuple[LauncherKind, ...] = get_args(LauncherKind)
OPENAI: tuple[OpenAISwitch, ...] = get_args(OpenAISwitch)
MODES: tuple[Mode, ...] = get_args(Mode)

MODEL_NAME_RE = names.NAME_RE  # always `fullmatch`

# With no `resources:` declared, every model holds the one slot: one model at a time.
ONE_AT_A_TIME = {"models": 1.0}


def _reported(parse: Callable[[Ctx, Node, str], Any]) -> Conv:
    """A `lifecycle_spec` parser (it reports its own problems) as a field converter."""
    def conv(ctx: Ctx, node: Node, where: str) -> Any:
        value = parse(ctx, node, where)
        return c.BAD if isinstance(value, Invalid) else value
    return conv


@dataclass(frozen=True)
class CrashLoop:
    """`max_failures` failed starts or crashes within `window` s: no start for `backoff` s."""

    max_failures: int = key(c.integer(0, 10**6), "failed starts or crashes", 3)
    window: float = key(c.seconds(0, 10**7), "within this many seconds", 60.0)
    backoff: float = key(c.seconds(0, 10**7), "no start for this many seconds", 30.0)


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """What every model has, whichever launcher runs it; each launcher's subclass adds its
    own keys and names itself in `launcher`. The shared keys (which `defaults:` sets for every
    model) live here, so `env`, `cwd` and `stop_signal` stay accepted for every launcher: the
    command launcher runs its commands with `env` and `cwd`, a V2 model ignores them."""

    launcher: ClassVar[LauncherKind]
    name: str
    # (RUF009: `key` is a dataclass field specifier, evaluated once like `field`.)
    mode: Mode = key(  # noqa: RUF009
        c.one_of(MODES), " or ".join(f"`{m}`" for m in MODES), "error_page", shared=True)
    port: int = key(c.port, "the model's port; unique per host", 0,
                    shown="required (v2: the inference server's)",
                    required_for=("process", "command"))
    host: str = key(c.host, "where the model listens (an IP address or a host name)", "127.0.0.1",
                    shown="`127.0.0.1` (v2: the inference server's)")
    health: str = key(
        c.health, "path answering 2xx when ready (llama.cpp answers 503 while loading: keep "
        "waiting); V2 models use `/v2/models/NAME/ready`", "/health", shared=True)
    startup_timeout: float = key(
        c.seconds(0.1, 86400), "seconds to get healthy; then 503 and the process is stopped",
        600.0, shared=True)
    idle_timeout: float = key(c.seconds(0, 10**7),
                              "stop after this many idle seconds; `0` = never", 900.0, shared=True)
    env: Mapping[str, str] = key(
        c.env, "environment of the model process or commands (added to a minimal inherited "
        "set: `PATH HOME LANG LC_ALL LC_CTYPE TZ TMPDIR USER LOGNAME`; the daemon's venv "
        "`bin/` comes first on `PATH`)", factory=dict, shared=True)
    cwd: str | None = key(c.string, "working directory of the model process or commands "
                          "(relative to the config file)", None, shown="the daemon's",
                          shared=True, path=True)
    stop_signal: int = key(c.signal_name, "sent to the model's process group",
                           int(signal.SIGTERM), shown="`SIGTERM`", shared=True)
    stop_timeout: float = key(c.seconds(0, 3600), "then `SIGKILL` to the group", 10.0,
                              shared=True)
    client_max_body_size: str = key(c.body_size, "nginx body limit for this model", "100m",
                                    shown="`nginx.client_max_body_size`", shared=True)
    requires: Mapping[str, float] = key(
        c.amounts, "what it holds while running, e.g. `{gpu0: 24}`; must fit `resources`",
        factory=lambda: dict(ONE_AT_A_TIME), shown="the single slot")
    node: str | None = key(c.string, "the node it runs on (a name under `nodes:`; required "
                           "with `nodes:`)", None)
    pinned: bool = key(c.boolean, "never evicted to make room (idle stop still applies; set "
                       "`idle_timeout: 0` to keep it up)", False)
    preload: bool = key(c.boolean, "start when the daemon starts (respecting capacity)", False)
    max_waiting: int = key(c.integer(1, 10**6),
                           "held requests per model; more get 503 at once", 2048, shared=True)
    max_wait: float = key(
        c.seconds(0, 86400), "a start waits at most this long for room (at most "
        "`startup_timeout`), then its held requests get 503 `capacity_timeout` + `Retry-After`; "
        "from half of it on, running models' `min_dwell` no longer holds it back; `0`: "
        "`startup_timeout` alone (see Fair turns)", 120.0, shared=True)
    min_dwell: float = key(
        c.seconds(0, 86400), "a model ready for less than this many seconds is not evicted for "
        "another at a mere pause: only once idle for 1 s, or once the other's turn is due "
        "(see Fair turns)", 0.0, shared=True)
    crash_loop: CrashLoop = key(  # noqa: RUF009
        c.nested(CrashLoop), "that many failed starts or crashes within `window` s: no start "
        "for `backoff` s (503 + `Retry-After`)", CrashLoop(), shared=True)
    aliases: tuple[str, ...] = key(
        names.aliases, "more names: on the OpenAI (`/v1/`) routes, e.g. `org/model` or "
        "`model:tag`; a `launcher: v2` model's on its V2 (`/v2/models/`) routes (the model name "
        "rule)", ())
    hooks: Hooks = key(  # noqa: RUF009
        _reported(parse_hooks), "actions `on_ready` (after healthy, before held requests are "
        "released) and `before_stop`: `{http: {method, path, body}}` or `{run: [argv]}`, "
        "each with `timeout` (10 s); failures are logged and shown in status (see Fast return)",
        factory=Hooks, shown="none", shared=True)

    @property
    def hold_timeout(self) -> float:
        """How long the daemon may hold a request for this model (start + eviction wait)."""
        return (2 * self.startup_timeout + self.stop_timeout + 10
                + extra_hold_seconds(self.hooks, self.kv, self.sleeps))

    @property
    def kv(self) -> KvCache | None:
        """KV-cache persistence (only `launcher: process` has the key)."""
        return None

    @property
    def sleeps(self) -> Sleep | None:
        """The sleep state (only `launcher: process` has the key)."""
        return None


@dataclass(frozen=True, kw_only=True)
class ProcessSpec(ModelSpec):
    """The daemon spawns `command` itself, in its own session and process group."""

    launcher: ClassVar[LauncherKind] = "process"
    command: tuple[str, ...] = key(c.argv, "argv list; never run through a shell")
    stop_command: tuple[str, ...] | None = key(
        c.argv, "argv run to stop it (`$MODEL_STARTER_PID`, `$MODEL_STARTER_MODEL` set), "
        "instead of the signal", None)
    kv_cache: KvCache | None = key(  # noqa: RUF009
        _reported(parse_kv_cache), "`persist`: save llama.cpp's slots before a stop, restore "
        "them after the next start (or a mapping: `min_tokens`, `budget_mb`, `save_timeout`, "
        "`restore_timeout`, `weights`; see Fast return)", None, shown="off")

    sleep: Sleep | None = key(  # noqa: RUF009
        _reported(parse_sleep), "free accelerator memory without exiting after `after` idle "
        "seconds, holding `requires` instead: `{preset: vllm|llamacpp|http, after, requires, "
        "sleep, wake, timeout}` (see Sleep)", None, shown="off")

    @property
    def kv(self) -> KvCache | None:
        return self.kv_cache

    @property
    def sleeps(self) -> Sleep | None:
        return self.sleep


@dataclass(frozen=True, kw_only=True)
class CommandSpec(ModelSpec):
    """Commands start, stop and (optionally) ask about a model run elsewhere."""

    launcher: ClassVar[LauncherKind] = "command"
    start: tuple[str, ...] = key(c.argv, "argv (no shell) that returns once the model is starting; a "
                                  "non-zero exit is a 503 with its output")
    stop: tuple[str, ...] = key(c.argv, "argv that stops the model")
    status: tuple[str, ...] | None = key(c.argv, "argv; exit 0 = running (lets a restarted daemon "
                                 "adopt the model)", None)


@dataclass(frozen=True, kw_only=True)
class V2Spec(ModelSpec):
    """A model loaded into the shared KServe V2 inference server (`inference_server`)."""

    launcher: ClassVar[LauncherKind] = "v2"
    v2_name: str | None = key(names.name, "its name inside the V2 server (the model name rule; "
                              "unique)", None,
                              shown="the model's name")


SPEC_TYPES: dict[LauncherKind, type[ModelSpec]] = {
    cls.launcher: cls for cls in (ProcessSpec, CommandSpec, V2Spec)}

LAUNCHER_KEY = Key(c.one_of(LAUNCHERS), ", ".join(f"`{k}`" for k in LAUNCHERS)
                   + " (see Launchers)", shown="`process`")


@dataclass(frozen=True)
class NginxSettings:
    listen: str = key(c.listen, "`listen` of the generated `server {}`: `PORT`, `HOST:PORT` or "
                      "`[V6]:PORT`, then parameters such as `default_server`", "127.0.0.1:8000")
    proxy_timeout: float = key(c.seconds(1, 86400 * 7),
                               "read/send timeout towards models (long generations)", 3600.0)
    client_max_body_size: str = key(c.body_size, "default request body limit per model", "100m")
    write_to: str | None = key(c.string, "on reload: write the conf.d include here ...", None,
                               path=True)
    reload_command: tuple[str, ...] | None = key(
        c.argv, "... then run this argv (e.g. `nginx -s reload`)", None)
    connect_timeout: float = key(
        c.seconds(0.002, 60), "with `nodes:`: a node that does not answer gets its clients a "
        "503 within this many seconds (half to reach the model, half its daemon)", 2.0)
    openai: OpenAISwitch = key(  # noqa: RUF009
        c.switch(OPENAI), "the OpenAI endpoint `/v1/` routed by the body's `model` (needs njs); "
        "`auto`: when nginx's njs module is installed", "auto")
    openai_max_body_size: str = key(
        c.body_size, "largest body `/v1/` inspects (held in memory): audio and base64 images",
        "32m")


@dataclass(frozen=True)
class InferenceServer:
    """The multi-model (KServe V2) server that `launcher: v2` models live in."""

    host: str = key(c.host, "the multi-model (KServe V2) inference server", "localhost",
                    shown="`$INFERENCE_SERVER_HOST`, else `localhost`")
    port: int = key(c.port, "its port", 5002, shown="`$INFERENCE_SERVER_PORT`, else `5002`")
    command: tuple[str, ...] | None = key(c.argv, "start the server when it is down", None)
    health: str = key(c.health, "its liveness path", "/v2/health/live")
    startup_timeout: float = key(c.seconds(0.1, 86400), "seconds to get healthy", 120.0)
    stop_timeout: float = key(c.seconds(0, 3600), "then `SIGKILL`", 30.0)
    env: Mapping[str, str] = key(c.env, "environment of the server process", factory=dict)


@dataclass(frozen=True)
class Config:
    models: Mapping[str, ModelSpec] = key(
        c.as_is, "the models, by name (below)")  # validated by the parser: it needs the names
    listen_host: str = key(c.hostport, "the daemon's address (keep it on loopback)",
                           "127.0.0.1", shown="`127.0.0.1:8080`", yaml="listen")
    listen_port: int = 8080
    nginx: NginxSettings = key(c.section_of(NginxSettings), "", NginxSettings())  # noqa: RUF009
    inference: InferenceServer = key(  # noqa: RUF009
        c.section_of(InferenceServer), "", InferenceServer(), yaml="inference_server")
    resources: Mapping[str, float] = key(
        c.amounts, "capacities, e.g. `{gpu0: 80, gpu1: 80}` in any unit",
        factory=lambda: dict(ONE_AT_A_TIME), shown="one model at a time")
    log_dir: str = key(c.string, "per-model log files (mode 0640)", "logs", path=True,
                       shown="`$LOGS_DIRECTORY`, else `<state_dir>/logs`")
    state_dir: str = key(c.string, "pids of running models (for adoption)", "state", path=True,
                         shown="`$STATE_DIRECTORY`, else `.model-starter/` beside the config")
    log_max_bytes: int = key(
        c.integer(4096, 2**40),
        "each model log is bounded (copy-truncate into `NAME.log.1`)", 10 * 1024 * 1024)
    max_held: int = key(c.integer(1, 10**7),
                        "held requests across all models (each `max_waiting` still applies); "
                        "more get 503 `queue_full` at once", 4096)
    release_grace: float = key(
        c.seconds(0, 600), "at most this long a model counts as busy after held requests were "
        "released, until their replays were seen at its port (the whole time where they cannot "
        "be told apart), so a replay is never cut by an idle stop or an eviction", 3.0)
    max_event_streams: int = key(
        c.integer(1, 10**5), "open event streams (`/_ms/events`) at most; one more gets 429",
        32)
    allowed_hosts: tuple[str, ...] = key(
        c.hosts, "`Host` names the admin API and the start path answer besides loopback "
        "addresses, `localhost` and the `listen` host (the names a client uses for the "
        "daemon; a DNS-rebinding page's name is refused)", ())
    admin_token: str | None = key(c.string, "require this bearer token on the admin API", None,
                                  shown="`$MODEL_STARTER_TOKEN`")
    nodes: Mapping[str, NodeSpec] = key(
        nodes, "the fleet's hosts, by name (see Several hosts); none: one host",
        factory=dict, shown="—")
    source: str = "<string>"
    node: str | None = None  # `serve --node`: the node this daemon supervises

    @property
    def inference_host(self) -> str:
        return self.inference.host

    @property
    def inference_port(self) -> int:
        return self.inference.port

    @property
    def listen(self) -> str:
        return f"{self.listen_host}:{self.listen_port}"

    @property
    def max_hold_timeout(self) -> float:
        return max((m.hold_timeout for m in self.models.values()), default=60.0)


SHARED_KEYS: dict[str, Key] = {n: k for n, k in c.keys_of(ModelSpec).items() if k.shared}
DEFAULTS_KEY = Key(lambda ctx, n, w: c.section(ctx, n, w, SHARED_KEYS),
                   "any of the shared model keys below, for every model", shown="—")
TOP_KEYS: dict[str, Key] = {**c.keys_of(Config), "defaults": DEFAULTS_KEY}
TOP_REQUIRED = tuple(f.name for f in dataclasses.fields(Config)
                     if c.key_of(f) is not None and not c.has_default(f))

_BASE = c.keys_of(ModelSpec)
# The keys only one launcher has, and which one (its own spec type's fields).
ONLY_FOR: dict[str, LauncherKind] = {
    name: kind for kind, cls in SPEC_TYPES.items() for name in c.keys_of(cls) if name not in _BASE}
MODEL_KEYS: dict[str, Key] = {
    "launcher": LAUNCHER_KEY, **{n: k for cls in SPEC_TYPES.values() for n, k in c.keys_of(cls).items()}}


def required_keys(kind: LauncherKind) -> tuple[str, ...]:
    """Keys a model of this launcher must set: its fields without a default, then the
    fields whose `required_for` names it."""
    fields = [(f, k) for f in dataclasses.fields(SPEC_TYPES[kind]) if (k := c.key_of(f))]
    own = [f.name for f, _ in fields if not c.has_default(f)]
    return (*own, *(f.name for f, k in fields if kind in k.required_for))


def path_keys(cls: type) -> tuple[str, ...]:
    """The keys of `cls` taken relative to the config file's folder."""
    return tuple(n for n, k in c.keys_of(cls).items() if k.path)
