"""What a model's supervisor runs between "healthy" and "release", and before a stop.

`after_ready`: restore the KV cache, then the `on_ready` hooks. `before_stop` (never for
a crash): save the KV cache, then the `before_stop` hooks. Each part is bounded by its
own timeout and never raises, so no held request is lost and no stop waits forever.
"""

from __future__ import annotations

import collections
import logging
from typing import Any, Protocol

import aiohttp

from model_starter.config import ModelSpec, ProcessSpec
from model_starter.events import Event, HookFailed, KvRestored, KvSaved, StopReason
from model_starter.hooks import HookResult, run_actions
from model_starter.kvcache import KvPersistence, KvReport
from model_starter.lifecycle_spec import Action, Phase

__all__ = ["NOTHING", "Lifecycle", "ModelLifecycle", "lifecycle_for"]

log = logging.getLogger("model_starter.lifecycle")

KEEP_RESULTS = 16
NO_SAVE_REASONS = frozenset({StopReason.CRASH})


class _Model(Protocol):
    spec: ModelSpec

    def emit(self, event: Event) -> None: ...


def _kv_event(model: str, report: KvReport) -> Event:
    cls = KvSaved if report.action == "save" else KvRestored
    return cls(model=model, ok=report.ok, detail=report.detail, key=report.key,
               files=report.files, removed=report.removed, seconds=round(report.seconds, 3))


class Lifecycle:
    """A model with no hooks and no KV persistence: nothing to do."""

    async def after_ready(self, model: _Model) -> None:
        """Between healthy and release; never raises (cancellation aside)."""

    async def before_stop(self, model: _Model, reason: StopReason) -> None:
        """Before a stop (never a crash); never raises, bounded by its timeouts."""

    def status(self) -> dict[str, Any] | None:
        return None


NOTHING = Lifecycle()


class ModelLifecycle(Lifecycle):
    def __init__(self, spec: ModelSpec, state_dir: str, session: aiohttp.ClientSession) -> None:
        self.spec = spec
        self.session = session
        self.kv = (KvPersistence(spec, spec.kv_cache, state_dir, session)
                   if isinstance(spec, ProcessSpec) and spec.kv_cache is not None else None)
        self.results: collections.deque[HookResult] = collections.deque(maxlen=KEEP_RESULTS)

    async def after_ready(self, model: _Model) -> None:
        try:
            if self.kv is not None:
                report = await self.kv.restore()
                model.emit(_kv_event(self.spec.name, report))
            await self._run(model, "on_ready", self.spec.hooks.on_ready)
        except Exception:  # a bug here must not fail the start and its held requests
            log.exception("model=%s after_ready failed", self.spec.name)

    async def before_stop(self, model: _Model, reason: StopReason) -> None:
        if reason in NO_SAVE_REASONS:
            return
        try:
            if self.kv is not None:
                report = await self.kv.save()
                model.emit(_kv_event(self.spec.name, report))
            await self._run(model, "before_stop", self.spec.hooks.before_stop)
        except Exception:  # nor keep the model from stopping
            log.exception("model=%s before_stop failed", self.spec.name)

    async def _run(self, model: _Model, phase: Phase, actions: tuple[Action, ...]) -> bool:
        if not actions:
            return True
        ok = True
        for result in await run_actions(phase, actions, self.spec, self.session):
            self.results.append(result)
            if not result.ok:
                ok = False
                model.emit(HookFailed(model=self.spec.name, phase=result.phase,
                                      action=result.action, detail=result.detail,
                                      seconds=round(result.seconds, 3)))
        return ok

    def status(self) -> dict[str, Any]:
        return {
            "hooks": [r.as_json() for r in self.results],
            "hook_failures": sum(not r.ok for r in self.results),
            "kv_cache": None if self.kv is None else self.kv.status(),
        }


def lifecycle_for(spec: ModelSpec, state_dir: str, session: aiohttp.ClientSession) -> Lifecycle:
    """The lifecycle of a model that has hooks or KV persistence, else `NOTHING`."""
    if spec.kv is None and not spec.hooks.on_ready and not spec.hooks.before_stop:
        return NOTHING
    return ModelLifecycle(spec, state_dir, session)
