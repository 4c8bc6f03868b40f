"""`GET /_ms/logs/NAME`: a model's log as a tail (JSON, or text) or followed live (SSE).

    ?lines=N        the last N lines (default 100, at most 10000)
    ?format=text    plain text instead of JSON (also with `Accept: text/plain`)
    ?follow=1       SSE: `event: lines` with the tail, then each batch of new lines;
                    `event: rotated` when the model restarted (a fresh file); `event: end`
                    when the follow's lifetime is over or the daemon stops
    ?seconds=S      a shorter lifetime for this follow (capped at the longest lifetime)

Bounded: at most `FollowLimits.max_followers` follows at once (the next one gets 429), each
lives at most `FollowLimits.max_seconds`. The file is read in bounded chunks, never whole.
The routes live on the admin blueprint, behind its one guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sanic import Blueprint, HTTPResponse, Request, Sanic
from sanic import json as json_response
from sanic.response import text as text_response

from model_starter.events import Event, Shutdown
from model_starter.launchers.process import ProcessLauncher
from model_starter.launchers.v2 import V2Launcher
from model_starter.protocol import ERROR_UNKNOWN_MODEL
from model_starter.responses import error_response
from model_starter.supervisor import ModelSupervisor

__all__ = ["FollowLimits", "install_logs", "log_path", "read_tail"]

DEFAULT_LINES = 100
MAX_LINES = 10_000
MAX_TAIL_BYTES = 4 * 1024 * 1024  # a tail never reads more than this from the end
CHUNK_BYTES = 256 * 1024  # what one follow step reads at most
MAX_LINE_BYTES = 64 * 1024  # a longer unterminated line is sent as it is
KEEPALIVE_SECONDS = 15.0
TRUE = frozenset({"1", "true", "yes", "on"})


@dataclass(frozen=True)
class FollowLimits:
    max_followers: int = 8
    max_seconds: float = 3600.0
    poll_seconds: float = 0.2  # how often a follow looks at the file's size


def log_path(sup: ModelSupervisor) -> Path | None:
    """The file the model's output goes to (a V2 model's is its inference server's)."""
    launcher = sup.launcher
    if isinstance(launcher, V2Launcher) and launcher.process is not None:
        server = launcher.process.launcher
        return server.logfile.path if isinstance(server, ProcessLauncher) else None
    return launcher.logfile.path if isinstance(launcher, ProcessLauncher) else None


@dataclass(frozen=True)
class Tail:
    lines: list[str]
    inode: int | None  # the file the tail was read from (None: no file yet)
    end: int  # the offset the tail ends at: a follow continues from here


def read_tail(path: Path, count: int) -> Tail:
    """The last `count` lines of the file, reading backwards at most MAX_TAIL_BYTES."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return Tail([], None, 0)
    with fh:
        st = os.fstat(fh.fileno())
        end = pos = st.st_size
        data = b""
        while pos > 0 and data.count(b"\n") <= count and end - pos < MAX_TAIL_BYTES:
            step = min(64 * 1024, pos, MAX_TAIL_BYTES - (end - pos))
            pos -= step
            fh.seek(pos)
            data = fh.read(step) + data
    lines = data.decode("utf-8", "replace").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if pos > 0 and lines:
        lines.pop(0)  # the first one is cut
    return Tail(lines[-count:] if count else [], st.st_ino, end)


class Follower:
    """Reads what was appended to a log file since the last look; notices rotation."""

    def __init__(self, path: Path, tail: Tail) -> None:
        self.path = path
        self._inode = tail.inode
        self._pos = tail.end
        self._partial = b""

    def read_new(self) -> tuple[list[str], bool]:
        """(new complete lines, whether the file was replaced or truncated since)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return [], False
        rotated = False
        if st.st_ino != self._inode or st.st_size < self._pos:
            rotated = self._inode is not None
            self._inode, self._pos, self._partial = st.st_ino, 0, b""
        if st.st_size == self._pos:
            return [], rotated
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._pos)
                data = fh.read(min(st.st_size - self._pos, CHUNK_BYTES))
        except FileNotFoundError:
            return [], rotated
        self._pos += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        if len(self._partial) > MAX_LINE_BYTES:
            complete.append(self._partial)
            self._partial = b""
        return [line.decode("utf-8", "replace") for line in complete], rotated


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


@dataclass
class Follows:
    """The follows open in one daemon."""

    limits: FollowLimits
    open: set[asyncio.Task[Any]] = field(default_factory=set)


def install_logs(bp: Blueprint, limits: FollowLimits | None = None) -> None:
    """Register `GET <bp prefix>/logs/<name>` on the (admin) blueprint."""

    def follows_of(app: Sanic[Any, Any]) -> Follows:
        follows: Follows | None = getattr(app.ctx, "log_follows", None)
        if follows is None:
            follows = app.ctx.log_follows = Follows(limits or FollowLimits())
        return follows

    @bp.get("/logs/<name>")
    async def logs(request: Request, name: str) -> HTTPResponse | None:
        follows = follows_of(request.app)
        lim = follows.limits
        sup = request.app.ctx.pool.get(name)
        if sup is None:
            return error_response(404, ERROR_UNKNOWN_MODEL, f"no model named {name!r} is configured",
                                  model=name)
        try:
            count = int(request.args.get("lines", DEFAULT_LINES))
            seconds = float(request.args.get("seconds", lim.max_seconds))
        except ValueError:
            return error_response(400, "bad_request", "lines must be an integer and seconds a "
                                  "number", model=name)
        if not 0 <= count <= MAX_LINES or not seconds > 0:
            return error_response(400, "bad_request", f"lines must be within 0..{MAX_LINES} "
                                  "and seconds above 0", model=name)
        path = log_path(sup)
        follow = request.args.get("follow", "").lower() in TRUE
        if follow and path is None:
            return error_response(409, "not_followable", f"model {name!r} has no log file "
                                  f"({sup.launcher.kind} launcher); ask for its tail instead",
                                  model=name)
        if not follow:
            return await _tail_response(request, name, sup, path, count)
        if len(follows.open) >= lim.max_followers:
            return error_response(429, "too_many_followers", f"{lim.max_followers} log follows "
                                  "are open already; close one or ask for the tail",
                                  retry_after=5, model=name, limit=lim.max_followers)
        assert path is not None
        task = asyncio.current_task()
        assert task is not None
        follows.open.add(task)
        try:
            await _follow(request, name, path, count, min(seconds, lim.max_seconds), follows)
        finally:
            follows.open.discard(task)
        return None


async def _tail_response(request: Request, name: str, sup: ModelSupervisor, path: Path | None,
                         count: int) -> HTTPResponse:
    if path is not None:  # up to MAX_TAIL_BYTES of reading: not on the event loop
        lines = (await asyncio.to_thread(read_tail, path, count)).lines
    else:  # the output the launcher keeps in memory (a start command's)
        lines = sup.launcher.tail(count) if count else []
    accept = request.headers.get("Accept", "")
    if request.args.get("format") == "text" or (
            "text/plain" in accept and "application/json" not in accept):
        return text_response("".join(f"{line}\n" for line in lines))
    return json_response({"model": name, "path": None if path is None else str(path),
                          "lines": lines})


async def _follow(request: Request, name: str, path: Path, count: int, seconds: float,
                  follows: Follows) -> None:
    with request.app.ctx.hub.subscribe() as events:  # to end at once when the daemon stops
        await _stream(request, name, path, count, seconds, follows.limits, events)


async def _stream(request: Request, name: str, path: Path, count: int, seconds: float,
                  lim: FollowLimits, events: asyncio.Queue[Event]) -> None:
    response = await request.respond(
        content_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    tail = await asyncio.to_thread(read_tail, path, count)
    follower = Follower(path, tail)
    await response.send(_sse("lines", {"model": name, "lines": tail.lines}))
    t0 = last_sent = time.monotonic()
    reason = "lifetime"
    while (now := time.monotonic()) - t0 < seconds:
        lines, rotated = follower.read_new()
        if rotated:
            await response.send(_sse("rotated", {"model": name}))
        if lines:
            await response.send(_sse("lines", {"model": name, "lines": lines}))
            last_sent = now
        elif now - last_sent >= KEEPALIVE_SECONDS:
            await response.send(": keepalive\n\n")
            last_sent = now
        # The next look at the file, or at once when the daemon stops.
        wait = min(lim.poll_seconds, max(0.0, seconds - (time.monotonic() - t0)))
        with contextlib.suppress(TimeoutError):
            if isinstance(await asyncio.wait_for(events.get(), wait), Shutdown):
                reason = "shutdown"
                break
    await response.send(_sse("end", {"model": name, "reason": reason}))
    await response.eof()
