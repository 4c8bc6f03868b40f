"""Two Linux calls through libc: inotify, just enough to hear about every write to a file,
and ``fallocate(FALLOC_FL_COLLAPSE_RANGE)``, which drops the head of a file in place."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import struct
from collections.abc import Callable
from pathlib import Path

__all__ = ["Inotify", "collapse_head", "watch_writes"]

IN_MODIFY = 0x2
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
FALLOC_FL_COLLAPSE_RANGE = 0x08

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def collapse_head(fd: int, length: int) -> bool:
    """Remove the first `length` bytes of the file in place (a writer with O_APPEND goes on
    at the new end; nothing written meanwhile is lost). `length` must be a multiple of the
    filesystem's block size and end before the end of the file. False where the filesystem
    cannot (tmpfs, NFS, ...)."""
    return bool(_libc.fallocate(fd, FALLOC_FL_COLLAPSE_RANGE, 0, length) == 0)


class Inotify:
    """One inotify instance on one event loop, one callback per watched file. (One shared
    instance: creating and closing an instance that had a watch costs milliseconds.)"""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.fd, self.loop = fd, loop
        self._callbacks: dict[int, Callable[[], None]] = {}
        loop.add_reader(fd, self._read)

    def add(self, path: Path, on_modify: Callable[[], None]) -> int:
        """Call `on_modify` whenever the file `path` names now is written; returns its id."""
        wd = int(_libc.inotify_add_watch(self.fd, os.fsencode(path), IN_MODIFY))
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"cannot watch {path}")
        self._callbacks[wd] = on_modify
        return wd

    def remove(self, wd: int) -> None:
        if self._callbacks.pop(wd, None) is not None:
            _libc.inotify_rm_watch(self.fd, wd)

    def _read(self) -> None:
        due: set[int] = set()
        try:
            while buf := os.read(self.fd, 65536):
                offset = 0
                while offset < len(buf):
                    wd, _mask, _cookie, size = _EVENT.unpack_from(buf, offset)
                    due.add(wd)
                    offset += _EVENT.size + size
        except BlockingIOError:
            pass
        for wd in due:
            callback = self._callbacks.get(wd)
            if callback is not None:
                callback()


_EVENT = struct.Struct("iIII")
_shared: Inotify | None = None


def watch_writes(path: Path, on_modify: Callable[[], None]) -> tuple[Inotify, int]:
    """Watch `path` on the running loop's shared inotify instance."""
    global _shared
    loop = asyncio.get_running_loop()
    if _shared is None or _shared.loop is not loop:
        if _shared is not None and _shared.loop.is_closed():
            os.close(_shared.fd)  # an earlier loop's (tests run many)
        _shared = Inotify(loop)
    return _shared, _shared.add(path, on_modify)
