"""Bounded per-model log files that survive the daemon.

The child writes straight into the file (O_APPEND), not through a pipe, so a
daemon restart never hands a running model a broken pipe. The daemon bounds the
file by copy-and-truncate: with O_APPEND the child's next write lands at the new
end, so nothing is corrupted and at most ``2 * max_bytes`` is kept on disk.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path

__all__ = ["LogFile"]

_MODE = 0o640  # never world-readable: prompts and tokens may end up in model logs


class LogFile:
    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.previous = path.with_name(path.name + ".1")
        self.error: str | None = None
        self._rotated_this_run = False

    def open_for_child(self) -> int | None:
        """Rotate the last run's log away and open a fresh file for a new child.

        Returns None (and records why) when the file cannot be written: the model
        still starts, its output goes to /dev/null and the status says so.
        """
        self.error = None
        self._rotated_this_run = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            if self.path.exists():
                os.replace(self.path, self.previous)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, _MODE)
            os.fchmod(fd, _MODE)
            return fd
        except OSError as exc:
            self.error = f"cannot write log file {self.path}: {exc.strerror or exc}"
            return None

    def enforce_bound(self) -> None:
        """Copy-and-truncate when the file grew past its bound."""
        try:
            if self.path.stat().st_size <= self.max_bytes:
                return
            with open(self.path, "rb") as src:
                src.seek(-self.max_bytes, os.SEEK_END)
                data = src.read(self.max_bytes)
            fd = os.open(self.previous, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _MODE)
            with os.fdopen(fd, "wb") as dst:
                dst.write(data)
            os.truncate(self.path, 0)
            self._rotated_this_run = True
        except OSError as exc:
            self.error = f"cannot rotate log file {self.path}: {exc.strerror or exc}"

    def tail(self, lines: int = 20) -> list[str]:
        """The last lines the model wrote (from the current file, then the rotated one)."""
        out: deque[str] = deque(maxlen=lines)
        paths = (self.previous, self.path) if self._rotated_this_run else (self.path,)
        for path in paths:
            try:
                with open(path, "rb") as fh:
                    fh.seek(max(0, os.fstat(fh.fileno()).st_size - 64 * 1024))
                    chunk = fh.read().decode("utf-8", "replace")
            except OSError:
                continue
            out.extend(line for line in chunk.splitlines() if line.strip())
        return list(out)
