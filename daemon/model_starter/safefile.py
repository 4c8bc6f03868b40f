"""Files the daemon writes where someone else might have planted something.

Every file is opened with ``O_NOFOLLOW`` (a planted symlink is refused, never followed),
temp files get exclusive random names (``O_CREAT | O_EXCL``: never an existing file), and a
directory writable by other users is refused with a message that says why.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

__all__ = ["UnsafeDirectory", "check_dir", "ensure_dir", "open_nofollow", "write_atomic"]

NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeDirectory(OSError):
    """A directory the daemon refuses to write into (another user could plant files there)."""


def check_dir(path: Path, *, private: bool = False) -> None:
    """Refuse `path` when a user other than us (or root) owns it or other users may write in
    it; `private`: also when it is not ours or its group may write in it."""
    st = os.stat(path)
    me = os.geteuid()
    owners = (me,) if private else (me, 0)
    if st.st_uid not in owners:
        raise UnsafeDirectory(f"{path} is owned by uid {st.st_uid}, not by the daemon's user "
                              f"(uid {me}); refusing to use it")
    writable = stat.S_IWOTH | (stat.S_IWGRP if private else 0)
    if st.st_mode & writable:
        who = "other users" if st.st_mode & stat.S_IWOTH else "its group"
        raise UnsafeDirectory(f"{path} is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o});"
                              f" refusing to use it (chmod {'go' if private else 'o'}-w)")


def ensure_dir(path: Path, mode: int, *, private: bool = False) -> None:
    """Create `path` with `mode` if missing, then `check_dir` it."""
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    check_dir(path, private=private)


def open_nofollow(path: Path, flags: int, mode: int = 0o600) -> int:
    """`os.open` that refuses a symlink at `path` (ELOOP)."""
    return os.open(path, flags | NOFOLLOW, mode)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data`: an exclusive random temp file beside it, then a rename
    (a rename replaces a planted symlink itself, never its target)."""
    check_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
