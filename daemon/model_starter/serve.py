"""`model-starter serve`: run the daemon in the foreground (Sanic, single process)."""

from __future__ import annotations

import logging
import sys

from model_starter.config import Config

__all__ = ["serve"]

# A herd of cold requests arrives at once; Sanic's default backlog of 100 drops the rest.
LISTEN_BACKLOG = 4096


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("model_starter").setLevel(level.upper())


def serve(config: Config, listen: str | None = None, log_level: str = "info") -> int:
    setup_logging(log_level)
    from model_starter.app import create_app

    host, port = config.listen_host, config.listen_port
    if listen:
        host, _, p = listen.rpartition(":")
        host, port = host.strip("[]"), int(p)
    app = create_app(config)
    logging.getLogger("model_starter").info(
        "serving %d model(s) on %s:%d: %s", len(config.models), host, port, ", ".join(config.models)
    )
    app.run(host=host, port=port, single_process=True, access_log=False, motd=False,
            backlog=LISTEN_BACKLOG)
    return 0
