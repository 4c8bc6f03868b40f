"""Run a short command to completion: argv (never a shell), output captured, bounded; and
the minimal environment every process the daemon starts gets (models, their commands, the
nginx reload command): never the daemon's own, which may hold `MODEL_STARTER_TOKEN`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["INHERITED_ENV", "model_environment", "run_command"]

DRAIN_TIMEOUT = 1.0  # s: the output of a command killed at its timeout, read to its end
# The only variables a started process inherits from the daemon; the rest comes from `env:`.
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME")


def model_environment(spec_env: Mapping[str, str], parent: Mapping[str, str]) -> dict[str, str]:
    """The environment of a started process: a minimal inherited set plus the configured one.

    The daemon's own interpreter directory (its venv's bin/) comes first on PATH, so
    `python3 -m ...` and console scripts installed beside model-starter resolve.
    """
    env = {k: parent[k] for k in INHERITED_ENV if k in parent}
    bindir = str(Path(sys.executable).parent)
    path = env.get("PATH", os.defpath)
    env["PATH"] = path if path.split(os.pathsep)[0] == bindir else f"{bindir}{os.pathsep}{path}"
    env.update(spec_env)
    return env


async def run_command(
    argv: Sequence[str],
    timeout: float | None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> tuple[int, str]:
    """Exit status and stdout+stderr of `argv`, run with `env` (default: the minimal
    environment, `model_environment({}, os.environ)`).

    Raises OSError when it cannot be started, TimeoutError when it outlives `timeout`. At a
    timeout or a cancellation it is killed with every process it started in its group.
    """
    env = model_environment({}, os.environ) if env is None else env
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=dict(env), cwd=cwd,
        start_new_session=True,  # its own process group: a timeout ends all it started
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:  # the timeout, or the caller was cancelled (a shutdown)
        await _end(proc)
        raise
    return proc.returncode or 0, out.decode(errors="replace")


async def _end(proc: asyncio.subprocess.Process) -> None:
    """Kill the command and every process it started in its group; read its output pipe to
    the end so that it is closed now, not by the garbage collector once the loop is gone
    (bounded: a process that left the group may still hold it)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(_read_all(proc.stdout), DRAIN_TIMEOUT)


async def _read_all(stream: asyncio.StreamReader | None) -> None:
    if stream is not None:
        await stream.read()
