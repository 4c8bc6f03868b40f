"""Run a short command to completion: argv (never a shell), output captured, bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

__all__ = ["run_command"]


async def run_command(
    argv: Sequence[str],
    timeout: float | None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> tuple[int, str]:
    """Exit status and stdout+stderr of `argv`.

    Raises OSError when it cannot be started, TimeoutError (after killing it) when it
    outlives `timeout`.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=None if env is None else dict(env), cwd=cwd,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")
