"""systemd readiness notifications (Type=notify); silent when not run by systemd."""

from __future__ import annotations

import os

import sdnotify

__all__ = ["notify"]

_notifier: sdnotify.SystemdNotifier | None = None


def notify(state: str) -> None:
    """Send READY=1 / RELOADING=1 / STOPPING=1 / STATUS=... to $NOTIFY_SOCKET, if set."""
    global _notifier
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    if _notifier is None:
        _notifier = sdnotify.SystemdNotifier()
    _notifier.notify(state)
