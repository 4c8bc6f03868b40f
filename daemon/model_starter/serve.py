"""`model-starter serve`: run the daemon in the foreground (Sanic, single process)."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

from model_starter.config import Config
from model_starter.logs import setup_logging
from model_starter.safefile import UnsafeDirectory, ensure_dir
from model_starter.statefile import DIR_MODE

__all__ = ["serve"]

# A herd of cold requests arrives at once; Sanic's default backlog of 100 drops the rest.
LISTEN_BACKLOG = 4096


def serve(
    config: Config, config_path: str, listen: str | None = None, log_level: str = "info",
    log_format: str = "text",
) -> int:
    setup_logging(log_level, log_format)
    try:  # pids in a folder others can write into could be forged: refuse to run at all
        ensure_dir(Path(config.state_dir), DIR_MODE, private=True)
    except UnsafeDirectory as exc:
        logging.getLogger("model_starter").error("cannot start: state_dir %s", exc)
        return 1
    except OSError as exc:  # as before: models run, adoption after a restart will not
        logging.getLogger("model_starter").error("state_dir %s: %s", config.state_dir,
                                                 exc.strerror or exc)
    from model_starter.app import create_app
    from model_starter.daemon import Daemon

    daemon = Daemon(config, config_path)
    # A reload asked for before we are ready is recorded, not fatal (see Daemon).
    signal.signal(signal.SIGHUP, daemon.record_reload)
    host, port = config.listen_host, config.listen_port
    if listen:
        host, _, p = listen.rpartition(":")
        host, port = host.strip("[]"), int(p)
    app = create_app(config, config_path, daemon=daemon)
    logging.getLogger("model_starter").info(
        "serving %d model(s) on %s:%d: %s", len(config.models), host, port, ", ".join(config.models)
    )
    app.run(host=host, port=port, single_process=True, access_log=False, motd=False,
            backlog=LISTEN_BACKLOG)
    return 0
