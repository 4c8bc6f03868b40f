"""The activity feed's secret: nginx writes it at the start of each log line it sends the
daemon (see ``protocol.activity_log_format``), the daemon drops lines without it.

It lives in ``state_dir/activity.key`` (mode 0600): the generated include may be written by
``model-starter nginx`` before the daemon runs, so both read the same file, and whoever comes
first creates it. A new key takes a regenerated include (and an nginx reload) to match.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from model_starter.config import Config
from model_starter.protocol import FEED_KEY_RE

__all__ = ["FEED_KEY_FILE", "FeedKeyError", "activity_key"]

FEED_KEY_FILE = "activity.key"


class FeedKeyError(Exception):
    """The key file cannot be read or made, or does not hold a key."""


def activity_key(config: Config) -> str:
    """The feed key of this config's state dir, created on first use."""
    folder = Path(config.state_dir)
    path = folder / FEED_KEY_FILE
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = _read(path)
        if key is None:
            _create(folder, path)
            key = _read(path)
    except OSError as exc:
        raise FeedKeyError(f"cannot read or create the activity feed key {path}: {exc}") from None
    if key is None or not FEED_KEY_RE.fullmatch(key):
        raise FeedKeyError(f"{path} does not hold an activity feed key (32 hex digits); "
                           "remove it to have a new one made")
    return key


def _read(path: Path) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    with os.fdopen(fd) as f:
        return f.read(256).strip()


def _create(folder: Path, path: Path) -> None:
    """Write a new key under a random name, then link it into place: a concurrent creator
    either wins (we read its key) or loses; nobody ever reads a half-written file."""
    tmp = folder / f".{FEED_KEY_FILE}.{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(16) + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink()
