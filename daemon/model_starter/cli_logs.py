"""`model-starter logs NAME [-f] [-n N]`: a model's log, from the running daemon's
`/_ms/logs/NAME` (so it works wherever the CLI reaches the admin API, with its token)."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import IO, Any
from urllib.parse import quote

from model_starter.protocol import admin_path

__all__ = ["add_logs_arguments", "logs_command"]

READ_TIMEOUT = 60.0  # the daemon sends a keepalive every 15 s on a quiet follow


def add_logs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model")
    p.add_argument("-n", "--lines", type=int, default=20, metavar="N",
                   help="how many of the last lines to print first (default 20)")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing what the model writes, until interrupted")


def logs_command(base: str, token: str | None, args: argparse.Namespace, where: str,
                 out: IO[str] | None = None) -> int:
    """`base` is the daemon's URL (http://host:port); `where` names it in errors."""
    out = out or sys.stdout
    url = base + admin_path("logs", quote(args.model, safe=""))
    try:
        if not args.follow:
            with _open(f"{url}?lines={args.lines}&format=text", token) as resp:
                out.write(resp.read().decode("utf-8", "replace"))
            return 0
        return _follow(url, token, args.lines, out)
    except urllib.error.HTTPError as exc:
        print(f"model-starter logs: {_detail(exc)}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"model-starter is not running at {where} ({getattr(exc, 'reason', exc)})",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _open(url: str, token: str | None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url, headers=headers)  # noqa: S310 - our daemon's URL
    return urllib.request.urlopen(req, timeout=READ_TIMEOUT)  # noqa: S310


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
        return f"{body.get('detail') or body.get('error')} (HTTP {exc.code})"
    except ValueError:
        return f"HTTP {exc.code}"


def _follow(url: str, token: str | None, lines: int, out: IO[str]) -> int:
    while True:
        with _open(f"{url}?follow=1&lines={lines}", token) as resp:
            end = _print_events(resp, out)
        if end != "lifetime":  # a follow's lifetime is bounded: then ask again, from now
            reason = "the daemon is shutting down" if end == "shutdown" else "the connection closed"
            print(f"model-starter logs: {reason}", file=sys.stderr)
            return 1
        lines = 0


def _print_events(stream: Iterable[bytes], out: IO[str]) -> str | None:
    """Print the lines of each SSE event; return the `end` reason (None: cut off)."""
    event, data = "message", ""
    for raw in stream:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
        elif not line and data:
            payload = json.loads(data)
            if event == "lines":
                out.write("".join(f"{text}\n" for text in payload["lines"]))
                out.flush()
            elif event == "rotated":
                print("model-starter logs: the model restarted (a new log file)", file=sys.stderr)
            elif event == "end":
                return str(payload.get("reason"))
            event, data = "message", ""
    return None
