"""The `hooks:` and `kv_cache:` config keys: typed, immutable specs and their validation.

Kept apart from the config schema, which only names these keys: each parser takes
the YAML node, reports problems through the config's error context (`err(node, where,
msg)`, one "file:line: where: message" each) and returns a value or `INVALID`.

    hooks:
      on_ready:                      # after healthy, before held requests are released
        - http: {method: POST, path: /warm, body: {"x": 1}}
          timeout: 5
        - run: [my-tool, --warm]     # argv, the model's minimal environment
      before_stop:                   # before the stop; each action bounded by its timeout
        - http: /flush
    kv_cache: persist                # or a mapping, see KvCache
    sleep:                           # free accelerator memory without exiting, see Sleep
      preset: vllm                   # vllm | llamacpp | http (then `sleep:` and `wake:`)
      after: 300                     # idle seconds before sleeping
      requires: {ram: 16}            # held while asleep instead of `requires`
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

import yaml
from yaml.constructor import SafeConstructor

__all__ = [
    "INVALID",
    "KV_DIR_ENV",
    "ArgvAction",
    "Hooks",
    "HttpAction",
    "KvCache",
    "KvPreset",
    "Sleep",
    "SleepPreset",
    "extra_hold_seconds",
    "kv_active_dir",
    "parse_hooks",
    "parse_kv_cache",
    "parse_sleep",
    "sleep_problems",
]

# The llama.cpp runner (`model_starter.llamacpp`) takes its slot_save_path from here.
KV_DIR_ENV: Final = "MODEL_STARTER_KV_DIR"
DEFAULT_ACTION_TIMEOUT: Final = 10.0
HTTP_METHODS: Final = ("GET", "POST", "PUT", "PATCH", "DELETE")


class Invalid:
    """Returned by a parser after it reported a problem."""


INVALID: Final = Invalid()


class Problems(Protocol):
    def err(self, node: yaml.Node | None, where: str, msg: str) -> None: ...


@dataclass(frozen=True)
class HttpAction:
    """A request to the model itself (its host and port); any 2xx answer is success."""

    path: str
    method: str = "POST"
    body: Any = None  # JSON-able; None sends no body
    timeout: float = DEFAULT_ACTION_TIMEOUT

    def describe(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class ArgvAction:
    """A command (argv, no shell) run with the model's minimal environment; exit 0 is success."""

    argv: tuple[str, ...]
    timeout: float = DEFAULT_ACTION_TIMEOUT

    def describe(self) -> str:
        return " ".join(self.argv)


Action = HttpAction | ArgvAction
Phase = Literal["on_ready", "before_stop", "sleep", "wake"]


@dataclass(frozen=True)
class Hooks:
    on_ready: tuple[Action, ...] = ()
    before_stop: tuple[Action, ...] = ()

    def actions(self, phase: Literal["on_ready", "before_stop"]) -> tuple[Action, ...]:
        return self.on_ready if phase == "on_ready" else self.before_stop

    def seconds(self, phase: Literal["on_ready", "before_stop"]) -> float:
        """The longest a phase can take (its actions run one after the other)."""
        return sum(a.timeout for a in self.actions(phase))


class KvPreset(enum.StrEnum):
    """How the engine is asked to save and restore its slots (llama.cpp's /slots API)."""

    LLAMACPP = "llamacpp"


@dataclass(frozen=True)
class KvCache:
    """Persist the engine's KV cache across stops (see kvcache.py)."""

    preset: KvPreset = KvPreset.LLAMACPP
    min_tokens: int = 256  # slots holding fewer prompt tokens are not saved
    budget_mb: float = 4096.0  # per model; the oldest files go first
    save_timeout: float = 10.0  # the longest a stop waits for saving
    restore_timeout: float = 10.0  # the longest a start waits for restoring
    weights: str | None = None  # the weights file (default: the command's --model / -m)


class SleepPreset(enum.StrEnum):
    """How a model is put to sleep and woken (see the README's Sleep section)."""

    VLLM = "vllm"  # POST /sleep?level=1, POST /wake_up (needs auth_request mode)
    LLAMACPP = "llamacpp"  # the engine sleeps and wakes itself (--sleep-idle-seconds)
    HTTP = "http"  # the `sleep:` and `wake:` actions given (needs auth_request mode)


@dataclass(frozen=True)
class Sleep:
    """A sleep state: after `after` idle seconds the model sleeps and holds `requires`."""

    after: float
    preset: SleepPreset = SleepPreset.HTTP
    requires: Mapping[str, float] = field(default_factory=dict)
    sleep: HttpAction | None = None  # None: the engine sleeps itself
    wake: HttpAction | None = None  # None: the engine wakes itself (on a request)

    @property
    def self_waking(self) -> bool:
        """The engine wakes itself on a request: nginx may send to it while asleep."""
        return self.wake is None


VLLM_SLEEP: Final = HttpAction("/sleep?level=1")  # (the timeout is the `sleep:` mapping's)
VLLM_WAKE: Final = HttpAction("/wake_up")


def extra_hold_seconds(hooks: Hooks, kv: KvCache | None, sleep: Sleep | None = None) -> float:
    """What hooks, KV persistence and a wake call may add to a start plus a stop (hold
    timeout)."""
    kv_seconds = 0.0 if kv is None else kv.save_timeout + kv.restore_timeout
    wake_seconds = 0.0 if sleep is None or sleep.wake is None else sleep.wake.timeout
    return hooks.seconds("on_ready") + hooks.seconds("before_stop") + kv_seconds + wake_seconds


def kv_active_dir(state_dir: str, model: str) -> str:
    """The folder a model's engine saves to and restores from (trailing slash: llama.cpp
    joins it with the file name as text)."""
    return f"{state_dir.rstrip('/')}/kv/{model}/active/"


# --- parsing ----------------------------------------------------------------------------

_CONSTRUCTOR = SafeConstructor()


def _value(node: yaml.Node) -> Any:
    try:
        return _CONSTRUCTOR.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError):
        return node.value if isinstance(node, yaml.ScalarNode) else None


def _items(ctx: Problems, node: yaml.Node, where: str, allowed: tuple[str, ...]
           ) -> dict[str, yaml.Node] | None:
    if not isinstance(node, yaml.MappingNode):
        ctx.err(node, where, "expected a mapping")
        return None
    out: dict[str, yaml.Node] = {}
    for knode, vnode in node.value:
        key = _value(knode)
        if key not in allowed:
            ctx.err(knode, f"{where}.{key}", f"unknown key (allowed: {', '.join(allowed)})")
        elif key in out:
            ctx.err(knode, f"{where}.{key}", "duplicate key")
        else:
            out[key] = vnode
    return out


def _number(ctx: Problems, node: yaml.Node, where: str, lo: float, hi: float) -> float | None:
    v = _value(node)
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
        ctx.err(node, where, f"expected a number {lo:g}..{hi:g}, got {v!r}")
        return None
    return float(v)


def _argv(ctx: Problems, node: yaml.Node, where: str) -> tuple[str, ...] | None:
    v = _value(node)
    if (not isinstance(v, list) or not v
            or not all(isinstance(a, str | int | float) and not isinstance(a, bool) for a in v)):
        ctx.err(node, where, "expected a non-empty list of strings (argv; no shell is used)")
        return None
    return tuple(str(a) for a in v)


def _http(ctx: Problems, node: yaml.Node, where: str) -> dict[str, Any] | None:
    if isinstance(node, yaml.ScalarNode):
        fields: dict[str, Any] = {"path": _value(node)}
    else:
        items = _items(ctx, node, where, ("method", "path", "body"))
        if items is None:
            return None
        fields = {k: _value(v) for k, v in items.items()}
    path, method = fields.get("path"), str(fields.get("method", "POST")).upper()
    if not isinstance(path, str) or not path.startswith("/"):
        ctx.err(node, f"{where}.path", f"expected an HTTP path starting with '/', got {path!r}")
        return None
    if method not in HTTP_METHODS:
        ctx.err(node, f"{where}.method", f"expected one of {', '.join(HTTP_METHODS)}")
        return None
    return {"path": path, "method": method, "body": fields.get("body")}


def _action(ctx: Problems, node: yaml.Node, where: str) -> Action | None:
    items = _items(ctx, node, where, ("http", "run", "timeout"))
    if items is None:
        return None
    if ("http" in items) == ("run" in items):
        ctx.err(node, where, "an action has exactly one of 'http' or 'run'")
        return None
    timeout = DEFAULT_ACTION_TIMEOUT
    if "timeout" in items:
        t = _number(ctx, items["timeout"], f"{where}.timeout", 0.1, 3600)
        if t is None:
            return None
        timeout = t
    if "run" in items:
        argv = _argv(ctx, items["run"], f"{where}.run")
        return None if argv is None else ArgvAction(argv, timeout)
    http = _http(ctx, items["http"], f"{where}.http")
    return None if http is None else HttpAction(timeout=timeout, **http)


def _actions(ctx: Problems, node: yaml.Node, where: str) -> tuple[Action, ...] | None:
    if not isinstance(node, yaml.SequenceNode):
        ctx.err(node, where, "expected a list of actions")
        return None
    actions = [_action(ctx, a, f"{where}[{i}]") for i, a in enumerate(node.value)]
    return None if None in actions else tuple(a for a in actions if a is not None)


def parse_hooks(ctx: Problems, node: yaml.Node, where: str) -> Hooks | Invalid:
    items = _items(ctx, node, where, ("on_ready", "before_stop"))
    if items is None:
        return INVALID
    phases = {phase: _actions(ctx, vnode, f"{where}.{phase}") for phase, vnode in items.items()}
    if None in phases.values():
        return INVALID
    return Hooks(**{k: v for k, v in phases.items() if v is not None})


_KV_LIMITS: Final = {"min_tokens": (0, 10**8), "budget_mb": (0, 10**8),
                     "save_timeout": (0, 3600), "restore_timeout": (0, 3600)}


def parse_kv_cache(ctx: Problems, node: yaml.Node, where: str) -> KvCache | Invalid | None:
    """`persist` (every default), `false` (off), or a mapping of KvCache's fields."""
    if isinstance(node, yaml.ScalarNode):
        v = _value(node)
        if v == "persist":
            return KvCache()
        if v is False or v == "off":
            return None
        ctx.err(node, where, f"expected 'persist', false or a mapping, got {v!r}")
        return INVALID
    items = _items(ctx, node, where, ("preset", *_KV_LIMITS, "weights"))
    if items is None:
        return INVALID
    values: dict[str, Any] = {}
    ok = True
    for key, vnode in items.items():
        path = f"{where}.{key}"
        if key == "preset":
            v = _value(vnode)
            if v not in tuple(KvPreset):
                ctx.err(vnode, path, f"expected one of {', '.join(KvPreset)}, got {v!r}")
                ok = False
            else:
                values[key] = KvPreset(v)
        elif key == "weights":
            v = _value(vnode)
            if not isinstance(v, str) or not v:
                ctx.err(vnode, path, f"expected a file path, got {v!r}")
                ok = False
            else:
                values[key] = v
        else:
            n = _number(ctx, vnode, path, *_KV_LIMITS[key])
            if n is None:
                ok = False
            else:
                values[key] = int(n) if key == "min_tokens" else n
    return KvCache(**values) if ok else INVALID


def _amounts(ctx: Problems, node: yaml.Node, where: str) -> dict[str, float] | None:
    if not isinstance(node, yaml.MappingNode):
        ctx.err(node, where, "expected a mapping of resource: amount")
        return None
    out = {str(_value(k)): _number(ctx, v, f"{where}.{_value(k)}", 0, 1e12) for k, v in node.value}
    return None if None in out.values() else {k: v for k, v in out.items() if v is not None}


def parse_sleep(ctx: Problems, node: yaml.Node, where: str) -> Sleep | Invalid | None:
    """A mapping: `after` (required), `preset`, `requires`, `sleep`/`wake` (HTTP actions)."""
    if isinstance(node, yaml.ScalarNode) and _value(node) in (False, "off"):
        return None
    items = _items(ctx, node, where, ("preset", "after", "requires", "sleep", "wake", "timeout"))
    if items is None:
        return INVALID
    if "after" not in items:
        ctx.err(node, where, "missing required key 'after' (idle seconds before sleeping)")
        return INVALID
    after = _number(ctx, items["after"], f"{where}.after", 1, 10**7)
    preset_v = _value(items["preset"]) if "preset" in items else "http"
    if preset_v not in tuple(SleepPreset):
        ctx.err(items["preset"], f"{where}.preset",
                f"expected one of {', '.join(SleepPreset)}, got {preset_v!r}")
        return INVALID
    preset = SleepPreset(preset_v)
    timeout = DEFAULT_ACTION_TIMEOUT * 6
    if "timeout" in items:
        t = _number(ctx, items["timeout"], f"{where}.timeout", 0.1, 3600)
        timeout = t if t is not None else timeout
    actions: dict[str, HttpAction | None] = {}
    for name, default in (("sleep", VLLM_SLEEP), ("wake", VLLM_WAKE)):
        if name in items:
            if preset is not SleepPreset.HTTP:
                ctx.err(items[name], f"{where}.{name}", f"only with preset: http (preset "
                        f"{preset} has its own)")
                return INVALID
            http = _http(ctx, items[name], f"{where}.{name}")
            if http is None:
                return INVALID
            actions[name] = HttpAction(timeout=timeout, **http)
        elif preset is SleepPreset.VLLM:
            actions[name] = HttpAction(default.path, default.method, None, timeout)
        elif preset is SleepPreset.HTTP:
            ctx.err(node, where, f"missing required key '{name}' (an HTTP action; or a "
                    f"preset: {', '.join(p for p in SleepPreset if p != 'http')})")
            return INVALID
        else:
            actions[name] = None
    requires = _amounts(ctx, items["requires"], f"{where}.requires") if "requires" in items \
        else {}
    if after is None or requires is None:
        return INVALID
    return Sleep(after=after, preset=preset, requires=requires, **actions)


_SLEEP_IDLE_FLAG = re.compile(r"--sleep-idle-seconds(?:=(.*))?")


def sleep_problems(sleep: Sleep, mode: str, command: tuple[str, ...]) -> list[str]:
    """What makes a model's `sleep:` unsafe with its mode and command (the per-engine rule)."""
    if sleep.preset is SleepPreset.LLAMACPP:
        for i, arg in enumerate(command):
            m = _SLEEP_IDLE_FLAG.fullmatch(arg)
            if m is None:
                continue
            value = m.group(1) if m.group(1) is not None else \
                (command[i + 1] if i + 1 < len(command) else "")
            try:
                seconds = float(value)
            except ValueError:
                return [f"--sleep-idle-seconds {value!r} is not a number"]
            if abs(seconds - sleep.after) > 1e-9:
                return [f"after: {sleep.after:g} must equal the engine's --sleep-idle-seconds "
                        f"{value} (the daemon accounts for the sleep the engine takes)"]
            return []
        return [f"preset llamacpp: add `--sleep-idle-seconds {sleep.after:g}` to `command` "
                "(the engine sleeps and wakes itself; the daemon only accounts)"]
    if mode != "auth_request":
        return [f"preset {sleep.preset} needs `mode: auth_request`: in error_page mode nginx "
                "sends requests to the sleeping engine directly, and it does not wake itself"]
    return []
