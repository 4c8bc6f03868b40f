"""The YAML model list, parsed into typed, validated, immutable specs (see `schema`).

All problems are collected, each as "file:line: where: what", before reporting.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from model_starter.config.convert import HOST_RULE, Ctx, Node, is_host, mapping, scalar, section
from model_starter.config.nodes import NodeSpec
from model_starter.config.schema import (
    MODEL_KEYS,
    MODEL_NAME_RE,
    ONE_AT_A_TIME,
    ONLY_FOR,
    SPEC_TYPES,
    TOP_KEYS,
    TOP_REQUIRED,
    Config,
    InferenceServer,
    LauncherKind,
    ModelSpec,
    NginxSettings,
    V2Spec,
    path_keys,
    required_keys,
)
from model_starter.lifecycle_spec import KV_DIR_ENV, kv_active_dir, sleep_problems


class ConfigError(Exception):
    """Every problem found in one config file, each as "file:line: message"."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _relative(values: dict[str, Any], cls: type, base: Path) -> dict[str, Any]:
    """`values` with `cls`'s path keys taken relative to the config file's folder."""
    return {k: str(base / v) if k in path_keys(cls) else v for k, v in values.items()}


def _models(
    ctx: Ctx, node: Node, base: Path, defaults: Mapping[str, Any],
    resources: Mapping[str, float] | None, inference: InferenceServer,
    nodes: Mapping[str, NodeSpec],
    reserved: tuple[str, ...] = (), state_dir: str = ".",
) -> dict[str, ModelSpec]:
    items = mapping(ctx, node, "models")
    if items is None:
        return {}
    if not items:
        ctx.err(node, "models", "at least one model is required")
    models: dict[str, ModelSpec] = {}
    taken: dict[tuple[str, int], str] = {}
    where_named: dict[str, Node] = {}
    v2_names: dict[str, str] = {}  # a V2 server has one model per name
    for name, knode, vnode in items:
        where = f"models.{name}"
        if not MODEL_NAME_RE.fullmatch(name):
            ctx.err(knode, where, f"model names must match {MODEL_NAME_RE.pattern}")
            continue
        values = section(ctx, vnode, where, MODEL_KEYS)
        if values is None:
            continue
        kind: LauncherKind = values.pop("launcher", "process")
        present = {scalar(k) for k, _ in vnode.value}  # also keys whose value was invalid
        missing = [k for k in required_keys(kind) if k not in values]
        for key in missing:
            if key not in present:
                ctx.err(vnode, where, f"missing required key '{key}' (launcher: {kind})")
        wrong = [k for k in values if ONLY_FOR.get(k, kind) != kind]
        for key in wrong:
            ctx.err(vnode, f"{where}.{key}", f"only for launcher: {ONLY_FOR[key]}")
        if missing or wrong:
            continue
        cls = SPEC_TYPES[kind]
        on = _placement(ctx, vnode, where, values.get("node"), nodes)
        if on is False:
            continue
        capacity = on.resources if isinstance(on, NodeSpec) else resources
        if isinstance(on, NodeSpec) and cls is not V2Spec and "host" not in values:
            values["host"] = on.model_host
        if cls is V2Spec:
            # The model lives in the shared inference server; ready = its V2 ready endpoint.
            v2 = values.get("v2_name", name)
            values.update(host=inference.host, port=inference.port,
                          health=f"/v2/models/{v2}/ready")
        values = _relative({**defaults, **values}, cls, base)
        if values.get("kv_cache") is not None:  # where the engine saves its slots
            values["env"] = {**values.get("env", {}), KV_DIR_ENV: kv_active_dir(state_dir, name)}
        if "requires" in values:
            _check_requires(ctx, knode, where, values["requires"], capacity)
        elif capacity is not None:
            values["requires"] = {}  # declared capacities: a model holds only what it says
        spec = cls(name=name, **values)
        if spec.sleeps is not None:
            _check_sleep(ctx, vnode, where, spec, capacity)
        if isinstance(spec, V2Spec):
            v2 = spec.v2_name or name
            if v2 in v2_names:
                ctx.err(knode, where, f"v2_name '{v2}' is already used by model '{v2_names[v2]}'")
                continue
            v2_names[v2] = name
            models[name] = spec
            continue
        addr = (_canonical_host(spec.host), spec.port)
        if addr in taken:
            ctx.err(knode, where, f"{spec.host}:{spec.port} is already used by model '{taken[addr]}'")
            continue
        taken[addr] = name
        where_named[name] = knode
        models[name] = spec
    server = (_canonical_host(inference.host), inference.port)
    if server in taken and any(isinstance(m, V2Spec) for m in models.values()):
        name = taken[server]
        ctx.err(where_named[name], f"models.{name}", f"{inference.host}:{inference.port} is "
                "the inference server's address (its V2 models are there)")
    if not nodes:
        _check_pinned(ctx, node, models, resources)
    _check_names(ctx, items, models, reserved)
    for spec_node in nodes.values():  # each node's capacity is its own
        _check_pinned(ctx, node, {n: m for n, m in models.items() if m.node == spec_node.name},
                      spec_node.resources)
    return models


def _placement(
    ctx: Ctx, node: Node, where: str, name: str | None, nodes: Mapping[str, NodeSpec],
) -> NodeSpec | bool | None:
    """The model's node: None without `nodes:`, False (reported) when it names none."""
    if not nodes:
        if name is None:
            return None
        ctx.err(node, f"{where}.node", "needs a top-level `nodes:` section declaring it")
        return False
    if name is None:
        ctx.err(node, where, f"missing required key 'node' (nodes: {', '.join(nodes)})")
        return False
    if name not in nodes:
        ctx.err(node, f"{where}.node", f"unknown node {name!r} (declared: {', '.join(nodes)})")
        return False
    return nodes[name]


def _check_names(ctx: Ctx, items: list[tuple[str, Node, Node]],
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
        alias_node = next(v for k, v in vnode.value if scalar(k) == "aliases")
        for i, alias in enumerate(spec.aliases):
            if alias.lower() in owner:
                ctx.err(alias_node.value[i], f"models.{name}.aliases[{i}]",
                        f"'{alias}' already names model '{owner[alias.lower()]}'; every name "
                        "and alias must be unique (case-insensitively)")
            elif isinstance(spec, V2Spec) and not MODEL_NAME_RE.fullmatch(alias):
                ctx.err(alias_node.value[i], f"models.{name}.aliases[{i}]",
                        f"a V2 model is reached by /v2/models/NAME only, so its aliases "
                        f"follow the model name rule {MODEL_NAME_RE.pattern}")
            else:
                owner[alias.lower()] = name


def _check_pinned(
    ctx: Ctx, node: Node, models: Mapping[str, ModelSpec], resources: Mapping[str, float] | None
) -> None:
    """A pinned model holds its share only while it runs, so only the pinned models that
    always run (preload, idle_timeout 0) must fit together; the rest is `capacity_warnings`."""
    capacity = resources if resources is not None else ONE_AT_A_TIME
    always = [m for m in models.values() if _always_running(m)]
    for res, cap in capacity.items():
        total = sum(m.requires.get(res, 0.0) for m in always)
        if len(always) > 1 and total > cap + 1e-9:
            names = ", ".join(m.name for m in always)
            ctx.err(node, "models", f"pinned models {names} (preload, idle_timeout 0) can never "
                    f"run together: they need {total:g} of {res} (capacity {cap:g})")


def _always_running(spec: ModelSpec) -> bool:
    return spec.pinned and spec.preload and spec.idle_timeout == 0


def capacity_warnings(config: Config) -> list[str]:
    """Models that can run only while some pinned model is down, and models stopped before
    they would sleep (`check` prints these)."""
    out = []
    for spec in config.models.values():
        if spec.sleeps is not None and 0 < spec.idle_timeout <= spec.sleeps.after:
            out.append(f"{config.source}: models.{spec.name}: sleep.after "
                       f"{spec.sleeps.after:g} is not below idle_timeout {spec.idle_timeout:g}: "
                       "the model is stopped before it would sleep")
        for pin in config.models.values():
            if pin is spec or not pin.pinned:
                continue
            short = [res for res, cap in config.resources.items()
                     if pin.requires.get(res, 0.0) + spec.requires.get(res, 0.0) > cap + 1e-9]
            if short:
                when = ("never: it always runs" if _always_running(pin)
                        else "while it runs, requests get 503")
                out.append(f"{config.source}: models.{spec.name}: runs only while pinned model "
                           f"'{pin.name}' is down ({when}; short of {', '.join(short)})")
    return out


def _check_requires(
    ctx: Ctx, node: Node, where: str, requires: Mapping[str, float],
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


def _check_sleep(ctx: Ctx, vnode: Node, where: str, spec: ModelSpec,
                 resources: Mapping[str, float] | None) -> None:
    """`sleep:` fits `resources`, and the engine's rule for requests while asleep holds."""
    assert spec.sleeps is not None
    node = next((v for k, v in vnode.value if scalar(k) == "sleep"), vnode)
    if spec.sleeps.requires:
        _check_requires(ctx, node, f"{where}.sleep", spec.sleeps.requires, resources)
    for problem in sleep_problems(spec.sleeps, spec.mode, getattr(spec, "command", ())):
        ctx.err(node, f"{where}.sleep", problem)


def _canonical_host(host: str) -> str:
    return "127.0.0.1" if host in ("localhost", "127.0.0.1", "::1", "ip6-localhost") else host


def _inference(ctx: Ctx, values: dict[str, Any], env: Mapping[str, str]) -> InferenceServer:
    """`inference_server:`, its host and port else from the environment."""
    if "host" not in values:
        raw_host = env.get("INFERENCE_SERVER_HOST") or "localhost"
        if is_host(raw_host):
            values["host"] = raw_host
        else:
            ctx.problems.append(f"$INFERENCE_SERVER_HOST: expected {HOST_RULE}, got {raw_host!r}")
    if "port" not in values:
        raw = env.get("INFERENCE_SERVER_PORT") or "5002"
        if raw.isdigit() and 1 <= int(raw) <= 65535:
            values["port"] = int(raw)
        else:
            ctx.problems.append(f"$INFERENCE_SERVER_PORT: expected a port 1..65535, got {raw!r}")
    return InferenceServer(**values)


def parse_config(
    text: str, source: str = "<string>", environ: Mapping[str, str] | None = None
) -> Config:
    """Parse and validate a config document; raise ConfigError listing every problem."""
    env = os.environ if environ is None else environ
    ctx = Ctx(source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise ConfigError([f"{source}:{line}: invalid YAML: {exc}"]) from None
    if root is None:
        raise ConfigError([f"{source}:1: the file is empty; 'models' is required"])
    top = section(ctx, root, "", TOP_KEYS, required=TOP_REQUIRED)
    if top is None:
        raise ConfigError(ctx.problems)
    base = Path(source).resolve().parent if source != "<string>" else Path.cwd()
    nginx = NginxSettings(**_relative(top.get("nginx") or {}, NginxSettings, base))
    defaults = {"client_max_body_size": nginx.client_max_body_size, **(top.get("defaults") or {})}
    resources = top.get("resources")
    nodes = top.get("nodes") or {}
    if nodes and resources is not None:
        ctx.problems.append(f"{source}: with `nodes:`, declare `resources` per node")
    server = _inference(ctx, dict(top.get("inference_server") or {}), env)
    reserved = ("v2",) if nginx.openai == "false" else ("v1", "v2")
    state_default = env.get("STATE_DIRECTORY") or str(base / ".model-starter")
    dirs = _relative({k: top[k] for k in ("log_dir", "state_dir") if k in top}, Config, base)
    state_dir = dirs.get("state_dir", state_default)
    models = (_models(ctx, top["models"], base, defaults, resources, server, nodes, reserved,
                      state_dir)
              if "models" in top else {})
    if ctx.problems:
        raise ConfigError(ctx.problems)
    listen_host, listen_port = top.get("listen", ("127.0.0.1", 8080))
    logs_default = env.get("LOGS_DIRECTORY") or str(Path(state_dir) / "logs")
    return Config(
        models=models,
        listen_host=listen_host,
        listen_port=listen_port,
        nginx=nginx,
        inference=server,
        log_dir=dirs.get("log_dir", logs_default),
        state_dir=state_dir,
        log_max_bytes=top.get("log_max_bytes", Config.log_max_bytes),
        resources=dict(ONE_AT_A_TIME) if resources is None else resources,
        release_grace=top.get("release_grace", Config.release_grace),
        max_held=top.get("max_held", Config.max_held),
        max_event_streams=top.get("max_event_streams", Config.max_event_streams),
        allowed_hosts=top.get("allowed_hosts", Config.allowed_hosts),
        admin_token=top.get("admin_token") or env.get("MODEL_STARTER_TOKEN") or None,
        nodes=nodes,
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
