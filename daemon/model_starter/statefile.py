"""``state_dir/NAME.json``: what a daemon records about a model process it started, so a
restarted daemon can adopt it.

Model processes run as the daemon's user and can write these files, so nothing in them is
trusted: a record must match a strict schema (`Record.parse`), and before any signal the
process must still be the one we started (`is_ours`: the kernel's start time, its
``/proc/PID/cmdline`` and leading its own process group). A bad file costs only its model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_starter.safefile import ensure_dir, open_nofollow, write_atomic

__all__ = ["Record", "StateFile", "is_ours", "process_start_time"]

log = logging.getLogger("model_starter.state")

DIR_MODE = 0o700
FILE_MODE = 0o600
MAX_BYTES = 64 * 1024  # a record is a few hundred bytes; a bigger file is not one of ours


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (guards against PID reuse), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])


def _cmdline(pid: int) -> tuple[str, ...] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    return tuple(part.decode(errors="surrogateescape") for part in raw.split(b"\0")[:-1])


def _int(data: dict[str, Any], key: str, lo: int, hi: int, what: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{key} must be {what}, got {value!r}")
    return value


@dataclass(frozen=True)
class Record:
    pid: int
    start_time: int
    command: tuple[str, ...]
    port: int | None = None

    @classmethod
    def parse(cls, data: Any) -> Record:
        """A record from untrusted JSON data; ValueError says what is wrong."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        pid = _int(data, "pid", 2, 2**22, "an integer > 1")  # 0, 1, -1, true: never
        start = _int(data, "start_time", 0, 2**63, "the kernel's start time (an integer)")
        command = data.get("command")
        if (not isinstance(command, list) or not command
                or not all(isinstance(a, str) for a in command)):
            raise ValueError("command must be a non-empty list of strings")
        port = None if data.get("port") is None else _int(data, "port", 1, 65535, "a port")
        return cls(pid, start, tuple(command), port)

    def as_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "start_time": self.start_time, "command": list(self.command),
                "port": self.port}


def is_ours(record: Record) -> bool:
    """Is `record.pid` still the process we started: same kernel start time, same argv,
    and the leader of its own process group (so a group signal reaches only its tree)?"""
    if process_start_time(record.pid) != record.start_time:
        return False
    if _cmdline(record.pid) != record.command:
        return False
    try:
        return os.getpgid(record.pid) == record.pid
    except OSError:
        return False


class StateFile:
    """One model's record in the state dir."""

    def __init__(self, state_dir: Path, name: str) -> None:
        self.dir = state_dir
        self.path = state_dir / f"{name}.json"

    def write(self, record: Record) -> None:
        """Raises OSError (`safefile.UnsafeDirectory` for a dir others could write into)."""
        ensure_dir(self.dir, DIR_MODE, private=True)
        write_atomic(self.path, json.dumps(record.as_json()).encode(), FILE_MODE)

    def read(self) -> Record | None:
        """The record, or None when there is none or it is not valid (then it is removed,
        and why is logged)."""
        try:
            ensure_dir(self.dir, DIR_MODE, private=True)
            fd = open_nofollow(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error("cannot read the state file %s: %s", self.path, exc.strerror or exc)
            return None
        try:
            with os.fdopen(fd, "rb") as fh:
                return Record.parse(json.loads(fh.read(MAX_BYTES + 1)[:MAX_BYTES]))
        except (OSError, ValueError, RecursionError) as exc:
            log.error("ignoring the state file %s: %s", self.path, exc)
            self.remove()
            return None

    def remove(self, pid: int | None = None) -> None:
        """Remove the record (only if it is `pid`'s, when given)."""
        with contextlib.suppress(OSError):
            if pid is None or (rec := self._peek()) is None or rec.pid == pid:
                self.path.unlink()

    def _peek(self) -> Record | None:
        try:
            fd = open_nofollow(self.path, os.O_RDONLY)
            with os.fdopen(fd, "rb") as fh:
                return Record.parse(json.loads(fh.read(MAX_BYTES)))
        except (OSError, ValueError, RecursionError):
            return None
