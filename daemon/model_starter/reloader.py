"""Live reload of the models: new ones at once, removed ones stopped, changed ones
restarted once idle (in-flight work finishes first), unchanged ones untouched.

It works on the pool's `models` mapping and builds supervisors through the pool's
`add` callback, so it needs nothing else of the pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Literal

from model_starter.config import ModelSpec
from model_starter.events import State, StopReason
from model_starter.supervisor import ModelSupervisor

__all__ = ["Change", "Reloader", "Summary"]

Change = Literal["added", "removed", "changed", "unchanged"]
Summary = dict[Change, list[str]]


class Reloader:
    def __init__(
        self,
        models: dict[str, ModelSupervisor],
        add: Callable[[ModelSpec], ModelSupervisor],
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
    ) -> None:
        """`add` builds a supervisor for a spec and puts it into `models`; `spawn` runs a
        background task the pool cancels at shutdown."""
        self._models = models
        self._add = add
        self._spawn = spawn
        self._pending: dict[str, ModelSpec] = {}  # changed by a reload, swapped in when idle

    def apply(self, specs: Mapping[str, ModelSpec], release_grace: float) -> Summary:
        """Bring the models in line with `specs`; what changed, by kind."""
        summary: Summary = {"added": [], "removed": [], "changed": [], "unchanged": []}
        for name in [n for n in self._models if n not in specs]:
            sup = self._models.pop(name)
            self._pending.pop(name, None)
            summary["removed"].append(name)
            self._spawn(sup.close(StopReason.REMOVED))
        for name, spec in specs.items():
            current = self._models.get(name)
            if current is None:
                self._add(spec)
                summary["added"].append(name)
            elif current.spec != spec:
                self._pending[name] = spec
                summary["changed"].append(name)
            else:
                self._pending.pop(name, None)
                summary["unchanged"].append(name)
            self._models[name].set_release_grace(release_grace)
        self.apply_pending()
        return summary

    def apply_pending(self) -> None:
        """Swap in changed specs of models that are not running; ask idle running ones to stop."""
        for name, spec in list(self._pending.items()):
            sup = self._models[name]
            if sup.idle_for_replacement():
                del self._models[name]
                self._add(spec).inherit(sup)
                del self._pending[name]
            elif sup.state in (State.READY, State.SLEEPING):
                task = sup.try_stop(StopReason.RELOAD)
                if task is not None:  # swap the moment it is down, before a request restarts it
                    task.add_done_callback(lambda _: self.apply_pending())
