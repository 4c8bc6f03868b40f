"""Bounded per-process log files that survive the daemon.

The child writes straight into the file (O_APPEND), not through a pipe, so a daemon
restart never hands a running model a broken pipe. The daemon bounds the file as it is
written: an inotify watch wakes it on every write, and past ``max_bytes`` it moves the head
of the file into ``NAME.log.1`` (the last ``max_bytes`` of it) and drops that head in place
(``FALLOC_FL_COLLAPSE_RANGE``: the child's O_APPEND writes go on at the new end and nothing
written meanwhile is lost). Where the filesystem cannot collapse, it copies the last
``max_bytes`` and truncates (a line written in between can be lost). At most
``2 * max_bytes`` (plus what one loop turn lets through) is on disk, for every supervised
process, the inference server included.

Files are never opened through a symlink, ``NAME.log.1`` is replaced by an exclusive temp
file's rename, and a log dir other users may write into is refused (`safefile`).
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from pathlib import Path

from model_starter.linuxfs import Inotify, collapse_head, watch_writes
from model_starter.safefile import ensure_dir, open_nofollow, write_atomic

__all__ = ["DIR_MODE", "LogFile"]

_MODE = 0o640  # never world-readable: prompts and tokens may end up in model logs
DIR_MODE = 0o750
TAIL_BYTES = 64 * 1024


class LogFile:
    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.previous = path.with_name(path.name + ".1")
        self.error: str | None = None
        self._rotated_this_run = False
        self._watch: tuple[Inotify, int] | None = None

    def open_for_child(self) -> int | None:
        """Rotate the last run's log away, open a fresh file for a new child and watch it.

        Returns None (and records why) when the file cannot be written: the model
        still starts, its output goes to /dev/null and the status says so.
        """
        self.error = None
        self._rotated_this_run = False
        try:
            ensure_dir(self.path.parent, DIR_MODE)
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.path, self.previous)  # moves a planted symlink, never its target
            fd = open_nofollow(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND,
                               _MODE)
            os.fchmod(fd, _MODE)
        except OSError as exc:
            self.error = f"cannot write log file {self.path}: {exc.strerror or exc}"
            return None
        self.watch()
        return fd

    # -- the bound ---------------------------------------------------------------------------

    def watch(self) -> None:
        """Enforce the bound on every write from now on (the file must exist)."""
        self.unwatch()
        try:
            self._watch = watch_writes(self.path, self.enforce_bound)
        except (OSError, RuntimeError):
            return  # no inotify (or no loop): the periodic `enforce_bound` still runs

    def unwatch(self) -> None:
        if self._watch is not None:
            inotify, wd = self._watch
            inotify.remove(wd)
            self._watch = None

    def enforce_bound(self) -> None:
        """Rotate the head of the file away when it grew past its bound."""
        try:
            fd = open_nofollow(self.path, os.O_RDWR)
        except OSError:
            return  # none yet (or a planted symlink: not ours to touch)
        try:
            st = os.fstat(fd)
            if st.st_size <= self.max_bytes:
                return
            block = max(st.st_blksize, 1)
            cut = -(-(st.st_size - self.max_bytes) // block) * block  # whole blocks, rounded up
            if cut < st.st_size:
                keep = min(self.max_bytes, cut)
                write_atomic(self.previous, os.pread(fd, keep, cut - keep), _MODE)
                collapsed = collapse_head(fd, cut)
            else:
                collapsed = False
            if not collapsed:
                data = os.pread(fd, self.max_bytes, st.st_size - self.max_bytes)
                write_atomic(self.previous, data, _MODE)
                os.ftruncate(fd, 0)
            self._rotated_this_run = True
        except OSError as exc:
            self.error = f"cannot rotate log file {self.path}: {exc.strerror or exc}"
        finally:
            os.close(fd)

    def tail(self, lines: int = 20) -> list[str]:
        """The last lines the process wrote (from the current file, then the rotated one)."""
        out: deque[str] = deque(maxlen=lines)
        paths = (self.previous, self.path) if self._rotated_this_run else (self.path,)
        for path in paths:
            try:
                with os.fdopen(open_nofollow(path, os.O_RDONLY), "rb") as fh:
                    fh.seek(max(0, os.fstat(fh.fileno()).st_size - TAIL_BYTES))
                    chunk = fh.read().decode("utf-8", "replace")
            except OSError:
                continue
            out.extend(line for line in chunk.splitlines() if line.strip())
        return list(out)
