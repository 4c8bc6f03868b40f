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
    reserved: tuple[str, ...] = (),
) -> dict[str, ModelSpec]:
    items = mapping(ctx, node, "models")
    if items is None:
        return {}
    if not items:
        ctx.err(node, "models", "at least one model is required")
    models: dict[str, ModelSpec] = {}
    taken: dict[tuple[str, int], str] = {}
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
        if cls is V2Spec:
            # The model lives in the shared inference server; ready = its V2 ready endpoint.
            v2 = values.get("v2_name", name)
            values.update(host=inference.host, port=inference.port,
                          health=f"/v2/models/{v2}/ready")
        values = _relative({**defaults, **values}, cls, base)
        if "requires" in values:
            _check_requires(ctx, knode, where, values["requires"], resources)
        elif resources is not None:
            values["requires"] = {}  # declared capacities: a model holds only what it says
        spec = cls(name=name, **values)
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
        models[name] = spec
    _check_pinned(ctx, node, models, resources)
    _check_names(ctx, items, models, reserved)
    return models


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
            else:
                owner[alias.lower()] = name


def _check_pinned(
    ctx: Ctx, node: Node, models: Mapping[str, ModelSpec], resources: Mapping[str, float] | None
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
    server = _inference(ctx, dict(top.get("inference_server") or {}), env)
    reserved = ("v2",) if nginx.openai == "false" else ("v1", "v2")
    models = (_models(ctx, top["models"], base, defaults, resources, server, reserved)
              if "models" in top else {})
    if ctx.problems:
        raise ConfigError(ctx.problems)
    listen_host, listen_port = top.get("listen", ("127.0.0.1", 8080))
    state_default = env.get("STATE_DIRECTORY") or str(base / ".model-starter")
    logs_default = env.get("LOGS_DIRECTORY") or str(Path(state_default) / "logs")
    dirs = _relative({k: top[k] for k in ("log_dir", "state_dir") if k in top}, Config, base)
    return Config(
        models=models,
        listen_host=listen_host,
        listen_port=listen_port,
        nginx=nginx,
        inference=server,
        log_dir=dirs.get("log_dir", logs_default),
        state_dir=dirs.get("state_dir", state_default),
        log_max_bytes=top.get("log_max_bytes", Config.log_max_bytes),
        resources=dict(ONE_AT_A_TIME) if resources is None else resources,
        release_grace=top.get("release_grace", Config.release_grace),
        max_event_streams=top.get("max_event_streams", Config.max_event_streams),
        allowed_hosts=top.get("allowed_hosts", Config.allowed_hosts),
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
