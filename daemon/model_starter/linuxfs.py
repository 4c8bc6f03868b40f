"""Two Linux calls through libc: inotify, just enough to hear about every write to a file,
and ``fallocate(FALLOC_FL_COLLAPSE_RANGE)``, which drops the head of a file in place."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

__all__ = ["ModifyWatch", "collapse_head"]

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


class ModifyWatch:
    """A non-blocking fd that turns readable when `path` (the inode it names now) is written."""

    def __init__(self, path: Path) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if _libc.inotify_add_watch(fd, os.fsencode(path), IN_MODIFY) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"cannot watch {path}")
        self.fd = fd

    def drain(self) -> None:
        """Consume the pending events (their content does not matter: the size does)."""
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.fd)
