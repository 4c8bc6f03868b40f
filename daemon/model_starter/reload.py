"""Live reload: validate the file first; a bad config leaves the daemon as it was.

One reload runs at a time (a SIGHUP and ``POST /_ms/reload`` queue behind each other on one
lock, so they can neither interleave nor race on the include's temp file), and the nginx
``reload_command`` is bounded by ``RELOAD_COMMAND_TIMEOUT``: a command that hangs is killed
and the reload reports it as failed, so systemd never stays in RELOADING.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from model_starter.commands import run_command
from model_starter.config import ConfigError, load_config
from model_starter.fleet import narrow
from model_starter.nginx import render
from model_starter.notify import notify
from model_starter.pool import ModelPool
from model_starter.safefile import open_nofollow, write_atomic

__all__ = ["RELOAD_COMMAND_TIMEOUT", "Reloader"]

log = logging.getLogger("model_starter.reload")

# How long nginx's reload command may take (`nginx -s reload` returns at once). A module
# constant, not a config key (yet): the config schema is owned elsewhere.
RELOAD_COMMAND_TIMEOUT = 30.0
INCLUDE_MODE = 0o644  # nginx (another user) reads it; it holds no secrets


class Reloader:
    """Re-reads the config file into the pool, one reload at a time."""

    def __init__(self, pool: ModelPool, path: str) -> None:
        self.pool = pool
        self.path = path
        self._lock = asyncio.Lock()

    async def reload(self) -> dict[str, Any]:
        """Re-read the file; apply it if valid. Returns what happened (for the admin API).

        A reload asked for while one runs waits for it, then reads the file afresh."""
        async with self._lock:
            notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
            try:
                return await self._reload()
            finally:
                notify("READY=1")

    async def _reload(self) -> dict[str, Any]:
        try:
            config = narrow(load_config(self.path), self.pool.config.node)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused, keeping the running config: %s", problem)
            return {"ok": False, "problems": exc.problems}
        summary: dict[str, Any] = {"ok": True, **await self.pool.reload(config)}
        if config.nginx.write_to and config.node is None:  # a node's is the front's job
            summary["nginx"] = await self._update_nginx(config.nginx.write_to)
        return summary

    async def _update_nginx(self, target: str) -> str:
        """Write the regenerated include atomically, then run the configured reload command."""
        config = self.pool.config
        text = render(config)
        dest = Path(target)
        try:
            if _current(dest) == text:
                return "unchanged"
            # An exclusive random temp file, renamed over the include: a planted symlink
            # (the temp's or the include's) is replaced, never written through.
            write_atomic(dest, text.encode(), INCLUDE_MODE)
        except OSError as exc:
            log.error("cannot write the nginx include %s: %s", dest, exc)
            return f"write failed: {exc}"
        if not config.nginx.reload_command:
            return "written"
        try:
            status, out = await run_command(config.nginx.reload_command,
                                            timeout=RELOAD_COMMAND_TIMEOUT)
        except TimeoutError:  # an OSError too: first
            log.error("the nginx reload command did not finish within %gs; killed it",
                      RELOAD_COMMAND_TIMEOUT)
            return f"reload failed: timed out after {RELOAD_COMMAND_TIMEOUT:g}s"
        except OSError as exc:
            log.error("cannot run the nginx reload command: %s", exc)
            return f"reload failed: {exc}"
        if status:
            message = out.strip()
            log.error("nginx reload command exited %s: %s", status, message)
            return f"reload failed ({status}): {message}"
        return "written and reloaded"


def _current(dest: Path) -> str | None:
    """The include as it is now (None: missing, unreadable or a symlink)."""
    try:
        with os.fdopen(open_nofollow(dest, os.O_RDONLY), "rb") as fh:
            return fh.read().decode(errors="replace")
    except OSError:
        return None
