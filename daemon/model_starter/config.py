"""The YAML model list, parsed into typed, validated, immutable specs.

Validation walks PyYAML's node tree (not the plain data) so every problem can
name its file and line; all problems are collected before reporting.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor

__all__ = [
    "Config",
    "ConfigError",
    "CrashLoop",
    "InferenceServer",
    "ModelSpec",
    "NginxSettings",
    "load_config",
    "parse_config",
]

MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
BODY_SIZE_RE = re.compile(r"^[0-9]+[kKmMgG]?$")


class ConfigError(Exception):
    """Every problem found in one config file, each as "file:line: message"."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class CrashLoop:
    """`max_failures` failed starts or crashes within `window` s: no start for `backoff` s."""

    max_failures: int = 3
    window: float = 60.0
    backoff: float = 30.0


# With no `resources:` declared, every model holds the one slot: one model at a time.
ONE_AT_A_TIME = {"models": 1.0}


LAUNCHERS = ("process", "command", "v2")
MODES = ("error_page", "auth_request")
OPENAI = ("auto", "true", "false")  # nginx.openai: the /v1/ endpoint (njs); auto = if installed


@dataclass(frozen=True)
class InferenceServer:
    """The multi-model (KServe V2) server that `launcher: v2` models live in."""

    host: str = "localhost"
    port: int = 5002
    command: tuple[str, ...] | None = None  # start it when it is down (optional)
    health: str = "/v2/health/live"
    startup_timeout: float = 120.0
    stop_timeout: float = 30.0
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    command: tuple[str, ...] = ()
    port: int = 0
    launcher: str = "process"
    start: tuple[str, ...] | None = None
    stop: tuple[str, ...] | None = None
    status: tuple[str, ...] | None = None
    v2_name: str | None = None
    mode: str = "error_page"
    host: str = "127.0.0.1"
    health: str = "/health"
    startup_timeout: float = 600.0
    idle_timeout: float = 900.0
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    stop_signal: int = int(signal.SIGTERM)
    stop_timeout: float = 10.0
    client_max_body_size: str = "100m"
    stop_command: tuple[str, ...] | None = None
    requires: Mapping[str, float] = field(default_factory=lambda: dict(ONE_AT_A_TIME))
    pinned: bool = False
    preload: bool = False
    max_waiting: int = 2048
    crash_loop: CrashLoop = CrashLoop()
    aliases: tuple[str, ...] = ()  # more names on the OpenAI (/v1/) and V2 (/v2/models/) routes

    @property
    def hold_timeout(self) -> float:
        """How long the daemon may hold a request for this model (start + eviction wait)."""
        return 2 * self.startup_timeout + self.stop_timeout + 10


@dataclass(frozen=True)
class NginxSettings:
    listen: str = "127.0.0.1:8000"
    proxy_timeout: float = 3600.0
    client_max_body_size: str = "100m"
    write_to: str | None = None  # on reload: write the conf.d include here ...
    reload_command: tuple[str, ...] | None = None  # ... then run this (e.g. nginx -s reload)
    openai: str = "auto"  # one of OPENAI
    # The /v1/ endpoint reads the body in memory to find `model`: 25 MB audio, base64 images.
    openai_max_body_size: str = "32m"


@dataclass(frozen=True)
class Config:
    models: Mapping[str, ModelSpec]
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    nginx: NginxSettings = NginxSettings()
    inference: InferenceServer = InferenceServer()
    log_dir: str = "logs"
    state_dir: str = "state"
    log_max_bytes: int = 10 * 1024 * 1024
    resources: Mapping[str, float] = field(default_factory=lambda: dict(ONE_AT_A_TIME))
    release_grace: float = 3.0
    admin_token: str | None = None
    source: str = "<string>"

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


# --- node helpers -----------------------------------------------------------------------

Node = yaml.Node


class _Ctx:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []

    def err(self, node: Node | None, where: str, msg: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.problems.append(f"{self.source}:{line}: {where}: {msg}")


_CONSTRUCTOR = SafeConstructor()


def _scalar(node: Node) -> Any:
    """Resolve a scalar node to a Python value with YAML's normal (safe) tag rules."""
    if not isinstance(node, yaml.ScalarNode):
        return None
    try:
        return _CONSTRUCTOR.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError):
        return node.value  # e.g. an unknown !tag: keep the text, validation reports it


def _mapping(ctx: _Ctx, node: Node, where: str) -> list[tuple[str, Node, Node]] | None:
    if not isinstance(node, yaml.MappingNode):
        ctx.err(node, where, "expected a mapping")
        return None
    out: list[tuple[str, Node, Node]] = []
    seen: set[str] = set()
    for knode, vnode in node.value:
        key = _scalar(knode)
        if not isinstance(key, str):
            ctx.err(knode, where, f"keys must be strings, got {key!r}")
            continue
        if key in seen:
            ctx.err(knode, f"{where}.{key}" if where else key, "duplicate key")
            continue
        seen.add(key)
        out.append((key, knode, vnode))
    return out


Conv = Callable[[_Ctx, Node, str], Any]
_BAD = object()


def _str(ctx: _Ctx, node: Node, where: str) -> Any:
    v = _scalar(node)
    if not isinstance(v, str) or not v:
        ctx.err(node, where, f"expected a non-empty string, got {_show(node)}")
        return _BAD
    return v


def _number(lo: float, hi: float) -> Conv:
    def conv(ctx: _Ctx, node: Node, where: str) -> Any:
        v = _scalar(node)
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            ctx.err(node, where, f"expected a number of seconds {lo:g}..{hi:g}, got {_show(node)}")
            return _BAD
        return float(v)

    return conv


def _int(lo: int, hi: int, what: str = "an integer") -> Conv:
    def conv(ctx: _Ctx, node: Node, where: str) -> Any:
        v = _scalar(node)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            ctx.err(node, where, f"expected {what} {lo}..{hi}, got {_show(node)}")
            return _BAD
        return v

    return conv


_port = _int(1, 65535, "a port")


def _text(ctx: _Ctx, node: Node, where: str) -> Any:
    """A string; YAML numbers are taken as their text (`port: "9001"` or `9001` in argv)."""
    v = _scalar(node)
    if isinstance(v, bool) or not isinstance(v, str | int | float):
        ctx.err(node, where, f"expected a string, got {_show(node)}")
        return _BAD
    return str(v)


def _argv(ctx: _Ctx, node: Node, where: str) -> Any:
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        ctx.err(node, where, "expected a non-empty list of strings (argv; no shell is used)")
        return _BAD
    out = [_text(ctx, item, f"{where}[{i}]") for i, item in enumerate(node.value)]
    return _BAD if _BAD in out else tuple(out)


def _mapping_of(item: Conv) -> Conv:
    """A mapping with free-form keys whose values each go through `item`."""

    def conv(ctx: _Ctx, node: Node, where: str) -> Any:
        items = _mapping(ctx, node, where)
        if items is None:
            return _BAD
        out = {key: item(ctx, vnode, f"{where}.{key}") for key, _k, vnode in items}
        return {key: value for key, value in out.items() if value is not _BAD}

    return conv


_env = _mapping_of(_text)


def _health(ctx: _Ctx, node: Node, where: str) -> Any:
    v = _scalar(node)
    if not isinstance(v, str) or not v.startswith("/"):
        ctx.err(node, where, f"expected an HTTP path starting with '/', got {_show(node)}")
        return _BAD
    return v


def _signal(ctx: _Ctx, node: Node, where: str) -> Any:
    v = _scalar(node)
    name = v.upper() if isinstance(v, str) else ""
    name = name if name.startswith("SIG") else f"SIG{name}"
    sig = getattr(signal.Signals, name, None) if name.isalpha() or "SIGRT" in name else None
    if sig is None:
        ctx.err(node, where, f"expected a signal name such as SIGTERM or SIGINT, got {_show(node)}")
        return _BAD
    return int(sig)


def _body_size(ctx: _Ctx, node: Node, where: str) -> Any:
    v = _scalar(node)
    if isinstance(v, bool) or not BODY_SIZE_RE.match(str(v)):
        ctx.err(node, where, f"expected an nginx size such as 100m, got {_show(node)}")
        return _BAD
    return str(v)


def _aliases(ctx: _Ctx, node: Node, where: str) -> Any:
    if not isinstance(node, yaml.SequenceNode):
        ctx.err(node, where, "expected a list of names")
        return _BAD
    out = []
    for i, item in enumerate(node.value):
        v = _scalar(item)
        if not isinstance(v, str) or not MODEL_NAME_RE.match(v):
            ctx.err(item, f"{where}[{i}]", f"aliases must match {MODEL_NAME_RE.pattern}, "
                    f"got {_show(item)}")
            return _BAD
        out.append(v)
    return tuple(out)


def _openai(ctx: _Ctx, node: Node, where: str) -> Any:
    v = _scalar(node)
    text = {True: "true", False: "false"}.get(v, v) if isinstance(v, bool) else v
    if text not in OPENAI:
        ctx.err(node, where, f"expected auto, true or false, got {_show(node)}")
        return _BAD
    return text


def _hostport(ctx: _Ctx, node: Node, where: str) -> Any:
    v = _scalar(node)
    if isinstance(v, str) and ":" in v:
        host, _, port = v.rpartition(":")
        if host and port.isdigit() and 1 <= int(port) <= 65535:
            return (host.strip("[]"), int(port))
    ctx.err(node, where, f"expected HOST:PORT, got {_show(node)}")
    return _BAD


def _bool(ctx: _Ctx, node: Node, where: str) -> Any:
    v = _scalar(node)
    if not isinstance(v, bool):
        ctx.err(node, where, f"expected true or false, got {_show(node)}")
        return _BAD
    return v


def _amount(ctx: _Ctx, node: Node, where: str) -> Any:
    v = _scalar(node)
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
        ctx.err(node, where, f"expected a number >= 0, got {_show(node)}")
        return _BAD
    return float(v)


_amounts = _mapping_of(_amount)


_CRASH_FIELDS: dict[str, Conv] = {
    "max_failures": _int(0, 10**6),
    "window": _number(0, 10**7),
    "backoff": _number(0, 10**7),
}


def _crash_loop(ctx: _Ctx, node: Node, where: str) -> Any:
    values = _section(ctx, node, where, _CRASH_FIELDS)
    return _BAD if values is None else CrashLoop(**values)


def _show(node: Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return repr(_scalar(node))


def _section(
    ctx: _Ctx, node: Node, where: str, fields: Mapping[str, Conv], required: tuple[str, ...] = ()
) -> dict[str, Any] | None:
    """Convert a mapping with a fixed set of keys; unknown keys are errors."""
    items = _mapping(ctx, node, where)
    if items is None:
        return None
    out: dict[str, Any] = {}
    for key, knode, vnode in items:
        path = f"{where}.{key}" if where else key
        conv = fields.get(key)
        if conv is None:
            ctx.err(knode, path, f"unknown key (allowed: {', '.join(sorted(fields))})")
            continue
        value = conv(ctx, vnode, path)
        if value is not _BAD:
            out[key] = value
    for key in required:
        if key not in out and not any(k == key for k, _, _ in items):
            ctx.err(node, where, f"missing required key '{key}'")
    return out


def _one_of(choices: tuple[str, ...]) -> Conv:
    def conv(ctx: _Ctx, node: Node, where: str) -> Any:
        v = _scalar(node)
        if v not in choices:
            ctx.err(node, where, f"expected one of {', '.join(choices)}, got {_show(node)}")
            return _BAD
        return v

    return conv


# Keys a model may set that `defaults:` may set for every model too.
_SHARED_FIELDS: dict[str, Conv] = {
    "mode": _one_of(MODES),
    "health": _health,
    "startup_timeout": _number(0.1, 86400),
    "idle_timeout": _number(0, 10**7),
    "env": _env,
    "cwd": _str,
    "stop_signal": _signal,
    "stop_timeout": _number(0, 3600),
    "client_max_body_size": _body_size,
    "max_waiting": _int(1, 10**6),
    "crash_loop": _crash_loop,
}
_MODEL_FIELDS: dict[str, Conv] = {
    "launcher": _one_of(LAUNCHERS),
    "command": _argv,
    "start": _argv,
    "stop": _argv,
    "status": _argv,
    "v2_name": _str,
    "port": _port,
    "host": _str,
    "stop_command": _argv,
    "requires": _amounts,
    "pinned": _bool,
    "preload": _bool,
    "aliases": _aliases,
    **_SHARED_FIELDS,
}
_NGINX_FIELDS: dict[str, Conv] = {
    "listen": _str,
    "write_to": _str,
    "reload_command": _argv,
    "proxy_timeout": _number(1, 86400 * 7),
    "client_max_body_size": _body_size,
    "openai": _openai,
    "openai_max_body_size": _body_size,
}
_INFERENCE_FIELDS: dict[str, Conv] = {
    "host": _str,
    "port": _port,
    "command": _argv,
    "health": _health,
    "startup_timeout": _number(0.1, 86400),
    "stop_timeout": _number(0, 3600),
    "env": _env,
}


_TOP_FIELDS: dict[str, Conv] = {
    "listen": _hostport,
    "nginx": lambda ctx, n, w: _section(ctx, n, w, _NGINX_FIELDS),
    "inference_server": lambda ctx, n, w: _section(ctx, n, w, _INFERENCE_FIELDS),
    "models": lambda ctx, n, w: n,  # validated below, needs the names
    "log_dir": _str,
    "state_dir": _str,
    "log_max_bytes": _int(4096, 2**40),
    "resources": _amounts,
    "defaults": lambda ctx, n, w: _section(ctx, n, w, _SHARED_FIELDS),
    "release_grace": _number(0, 600),
    "admin_token": _str,
}


_REQUIRED = {"process": ("command", "port"), "command": ("start", "stop", "port"), "v2": ()}
_ONLY_FOR = {"command": "process", "start": "command", "stop": "command", "status": "command",
             "v2_name": "v2", "stop_command": "process"}


def _models(
    ctx: _Ctx, node: Node, base: Path, defaults: Mapping[str, Any],
    resources: Mapping[str, float] | None, inference: InferenceServer,
    reserved: tuple[str, ...] = (),
) -> dict[str, ModelSpec]:
    items = _mapping(ctx, node, "models")
    if items is None:
        return {}
    if not items:
        ctx.err(node, "models", "at least one model is required")
    models: dict[str, ModelSpec] = {}
    taken: dict[tuple[str, int], str] = {}
    for name, knode, vnode in items:
        where = f"models.{name}"
        if not MODEL_NAME_RE.match(name):
            ctx.err(knode, where, "model names must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
            continue
        values = _section(ctx, vnode, where, _MODEL_FIELDS)
        if values is None:
            continue
        kind = values.get("launcher", "process")
        present = {_scalar(k) for k, _ in vnode.value}  # also keys whose value was invalid
        missing = [k for k in _REQUIRED[kind] if k not in values]
        for key in missing:
            if key not in present:
                ctx.err(vnode, where, f"missing required key '{key}' (launcher: {kind})")
        wrong = [k for k in values if _ONLY_FOR.get(k, kind) != kind]
        for key in wrong:
            ctx.err(vnode, f"{where}.{key}", f"only for launcher: {_ONLY_FOR[key]}")
        if missing or wrong:
            continue
        if kind == "v2":
            # The model lives in the shared inference server; ready = its V2 ready endpoint.
            v2 = values.get("v2_name", name)
            values.update(host=inference.host, port=inference.port,
                          health=f"/v2/models/{v2}/ready")
        values = {**defaults, **values}
        if "cwd" in values:
            values["cwd"] = str(base / values["cwd"])
        if "requires" in values:
            _check_requires(ctx, knode, where, values["requires"], resources)
        elif resources is not None:
            values["requires"] = {}  # declared capacities: a model holds only what it says
        spec = ModelSpec(name=name, **values)
        if kind == "v2":
            models[name] = spec
            continue
        addr = (_canonical_host(spec.host), spec.port)
        if addr in taken:
            ctx.err(knode, where, f"{spec.host}:{spec.port} is already used by model '{taken[addr]}'")
            continue
        taken[addr] = name
        models[name] = spec
    _check_pinned(ctx, node, models, resources)
    _check_names(ctx, items, models, reserved)
    return models


def _check_names(ctx: _Ctx, items: list[tuple[str, Node, Node]],
                 models: Mapping[str, ModelSpec], reserved: tuple[str, ...]) -> None:
    """Names and aliases are one namespace (case-insensitive, as nginx's map matches them)."""
    owner = {name.lower(): name for name in models}
    for name, knode, vnode in items:
        if name in reserved:
            ctx.err(knode, f"models.{name}", f"/{name}/ is the path of the "
                    + ("OpenAI endpoint; choose another name, or set nginx.openai: false"
                       if name == "v1" else "KServe V2 routes; choose another name"))
        spec = models.get(name)
        if spec is None or not spec.aliases:
            continue
        alias_node = next(v for k, v in vnode.value if _scalar(k) == "aliases")
        for i, alias in enumerate(spec.aliases):
            if alias.lower() in owner:
                ctx.err(alias_node.value[i], f"models.{name}.aliases[{i}]",
                        f"'{alias}' already names model '{owner[alias.lower()]}'; every name "
                        "and alias must be unique (case-insensitively)")
            else:
                owner[alias.lower()] = name


def _check_pinned(
    ctx: _Ctx, node: Node, models: Mapping[str, ModelSpec], resources: Mapping[str, float] | None
) -> None:
    """Pinned models are never evicted, so what they hold is never free for the others."""
    capacity = resources if resources is not None else ONE_AT_A_TIME
    for spec in models.values():
        for res, cap in capacity.items():
            pinned = sum(m.requires.get(res, 0.0) for m in models.values()
                         if m.pinned and m.name != spec.name)
            if pinned + spec.requires.get(res, 0.0) > cap + 1e-9:
                ctx.err(node, f"models.{spec.name}",
                        f"can never start: pinned models hold {pinned:g} of {res} "
                        f"(capacity {cap:g}) and it needs {spec.requires.get(res, 0.0):g}")


def _check_requires(
    ctx: _Ctx, node: Node, where: str, requires: Mapping[str, float],
    resources: Mapping[str, float] | None,
) -> None:
    if resources is None:
        ctx.err(node, f"{where}.requires", "needs top-level `resources:` declaring capacities")
        return
    for res, amount in requires.items():
        if res not in resources:
            ctx.err(node, f"{where}.requires.{res}",
                    f"unknown resource (declared: {', '.join(sorted(resources)) or 'none'})")
        elif amount > resources[res]:
            ctx.err(node, f"{where}.requires.{res}",
                    f"{amount:g} can never fit: the capacity is {resources[res]:g}")


def _canonical_host(host: str) -> str:
    return "127.0.0.1" if host in ("localhost", "127.0.0.1", "::1", "ip6-localhost") else host


def parse_config(
    text: str, source: str = "<string>", environ: Mapping[str, str] | None = None
) -> Config:
    """Parse and validate a config document; raise ConfigError listing every problem."""
    env = os.environ if environ is None else environ
    ctx = _Ctx(source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise ConfigError([f"{source}:{line}: invalid YAML: {exc}"]) from None
    if root is None:
        raise ConfigError([f"{source}:1: the file is empty; 'models' is required"])
    top = _section(ctx, root, "", _TOP_FIELDS, required=("models",))
    if top is None:
        raise ConfigError(ctx.problems)
    base = Path(source).resolve().parent if source != "<string>" else Path.cwd()
    nginx_values = dict(top.get("nginx") or {})
    if "write_to" in nginx_values:
        nginx_values["write_to"] = str(base / nginx_values["write_to"])
    nginx = NginxSettings(**nginx_values)
    defaults = {"client_max_body_size": nginx.client_max_body_size, **(top.get("defaults") or {})}
    resources = top.get("resources")
    inference = dict(top.get("inference_server") or {})
    inference.setdefault("host", env.get("INFERENCE_SERVER_HOST") or "localhost")
    if "port" not in inference:
        raw = env.get("INFERENCE_SERVER_PORT") or "5002"
        if raw.isdigit() and 1 <= int(raw) <= 65535:
            inference["port"] = int(raw)
        else:
            ctx.problems.append(f"$INFERENCE_SERVER_PORT: expected a port 1..65535, got {raw!r}")
    server = InferenceServer(**inference)
    reserved = ("v2",) if nginx.openai == "false" else ("v1", "v2")
    models = (_models(ctx, top["models"], base, defaults, resources, server, reserved)
              if "models" in top else {})
    if ctx.problems:
        raise ConfigError(ctx.problems)
    listen_host, listen_port = top.get("listen", ("127.0.0.1", 8080))
    state_default = env.get("STATE_DIRECTORY") or str(base / ".model-starter")
    logs_default = env.get("LOGS_DIRECTORY") or str(Path(state_default) / "logs")
    return Config(
        models=models,
        listen_host=listen_host,
        listen_port=listen_port,
        nginx=nginx,
        inference=server,
        log_dir=str(base / top["log_dir"]) if "log_dir" in top else logs_default,
        state_dir=str(base / top["state_dir"]) if "state_dir" in top else state_default,
        log_max_bytes=top.get("log_max_bytes", Config.log_max_bytes),
        resources=dict(ONE_AT_A_TIME) if resources is None else resources,
        release_grace=top.get("release_grace", Config.release_grace),
        admin_token=top.get("admin_token") or env.get("MODEL_STARTER_TOKEN") or None,
        source=source,
    )


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{p}:1: cannot read config: {exc}"]) from None
    return parse_config(text, str(p), environ)
