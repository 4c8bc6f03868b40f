"""Live reload: validate the file first; a bad config leaves the daemon as it was."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from model_starter.commands import run_command
from model_starter.config import ConfigError, load_config
from model_starter.nginx import render
from model_starter.notify import notify
from model_starter.pool import ModelPool

__all__ = ["reload_config"]

log = logging.getLogger("model_starter.reload")


async def reload_config(pool: ModelPool, path: str) -> dict[str, Any]:
    """Re-read `path`; apply it if valid. Returns what happened (for the admin API)."""
    notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
    try:
        try:
            config = load_config(path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused, keeping the running config: %s", problem)
            return {"ok": False, "problems": exc.problems}
        summary: dict[str, Any] = {"ok": True, **await pool.reload(config)}
        if config.nginx.write_to:
            summary["nginx"] = await _update_nginx(pool, config.nginx.write_to)
        return summary
    finally:
        notify("READY=1")


async def _update_nginx(pool: ModelPool, target: str) -> str:
    """Write the regenerated include atomically, then run the configured reload command."""
    config = pool.config
    text = render(config)
    dest = Path(target)
    try:
        if dest.exists() and dest.read_text() == text:
            return "unchanged"
        tmp = dest.with_name(f".{dest.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, dest)
    except OSError as exc:
        log.error("cannot write the nginx include %s: %s", dest, exc)
        return f"write failed: {exc}"
    if not config.nginx.reload_command:
        return "written"
    try:
        status, out = await run_command(config.nginx.reload_command, timeout=None)
    except OSError as exc:
        log.error("cannot run the nginx reload command: %s", exc)
        return f"reload failed: {exc}"
    if status:
        message = out.strip()
        log.error("nginx reload command exited %s: %s", status, message)
        return f"reload failed ({status}): {message}"
    return "written and reloaded"
