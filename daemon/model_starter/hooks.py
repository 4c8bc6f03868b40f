"""Run lifecycle actions (`hooks:`): HTTP requests to the model, or argv commands.

Every action is bounded by its own timeout and never raises: a failure is logged and
returned as a HookResult (shown in status), and the start or stop goes on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass

import aiohttp

from model_starter.commands import run_command
from model_starter.config import ModelSpec
from model_starter.launchers.process import model_environment
from model_starter.lifecycle_spec import Action, ArgvAction, HttpAction, Phase

__all__ = ["HookResult", "run_actions"]

log = logging.getLogger("model_starter.hooks")

DETAIL_CHARS = 500
BACKSTOP = 2.0  # each action bounds itself; this only guards against a stuck await


@dataclass(frozen=True)
class HookResult:
    phase: Phase
    action: str
    ok: bool
    detail: str
    seconds: float
    time: float

    def as_json(self) -> dict[str, object]:
        return {"phase": self.phase, "action": self.action, "ok": self.ok, "detail": self.detail,
                "seconds": round(self.seconds, 3), "time": self.time}


async def run_actions(
    phase: Phase, actions: tuple[Action, ...], spec: ModelSpec, session: aiohttp.ClientSession
) -> list[HookResult]:
    """Run `actions` one after the other; each ends within its timeout."""
    results = []
    for action in actions:
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(action.timeout + BACKSTOP):
                ok, detail = await _run(action, phase, spec, session)
        except TimeoutError:
            ok, detail = False, f"timed out after {action.timeout:g}s"
        except (OSError, aiohttp.ClientError) as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        result = HookResult(phase, action.describe(), ok, detail[-DETAIL_CHARS:],
                            time.monotonic() - t0, time.time())
        if ok:
            log.info("model=%s %s hook %r done in %.3fs", spec.name, phase, result.action,
                     result.seconds)
        else:
            log.warning("model=%s %s hook %r failed: %s", spec.name, phase, result.action,
                        result.detail)
        results.append(result)
    return results


async def _run(
    action: Action, phase: Phase, spec: ModelSpec, session: aiohttp.ClientSession
) -> tuple[bool, str]:
    if isinstance(action, ArgvAction):
        return await _run_argv(action, phase, spec)
    return await _run_http(action, spec, session)


async def _run_argv(action: ArgvAction, phase: Phase, spec: ModelSpec) -> tuple[bool, str]:
    env = model_environment(spec.env, os.environ)
    env.update(MODEL_STARTER_MODEL=spec.name, MODEL_STARTER_HOST=spec.host,
               MODEL_STARTER_PORT=str(spec.port), MODEL_STARTER_PHASE=phase)
    status, out = await run_command(action.argv, action.timeout, env, spec.cwd)
    return status == 0, f"exit status {status}: {out.strip()}" if status else out.strip()


async def _run_http(
    action: HttpAction, spec: ModelSpec, session: aiohttp.ClientSession
) -> tuple[bool, str]:
    url = f"http://{spec.host}:{spec.port}{action.path}"
    timeout = aiohttp.ClientTimeout(total=action.timeout)
    async with session.request(action.method, url, json=action.body, timeout=timeout) as resp:
        text = await resp.text(errors="replace")
        return 200 <= resp.status < 300, f"HTTP {resp.status}: {text.strip()}"
