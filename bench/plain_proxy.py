"""The setup hot-path and auth-request share: one front nginx holding the generated conf.d
include and, beside it, a plain `proxy_pass` server; both proxy to a one-worker backend nginx
answering 200 "ok" (the fast "model", so the front nginx is the bottleneck)."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import stop_process
from tests.stack import NGINX, Stack, free_port, nginx_conf, port_open, wait_for


@dataclass
class HotPathStack(Stack):
    """The generated conf.d include plus a plain `proxy_pass` server in the same nginx."""

    plain_port: int = field(default_factory=free_port)
    backend_port: int = 0
    plain_http: str = ""  # more http-level text, and more locations in the plain server
    plain_locations: str = ""

    def write_nginx(self) -> Path:
        ngdir = self.generate_include("conf.d")
        conf = ngdir / "nginx.conf"
        conf.write_text(nginx_conf(ngdir, f"""include {ngdir}/model-starter.conf;
    {self.plain_http}
    server {{
        listen 127.0.0.1:{self.plain_port};
        server_name _;
        location /plain/ {{ proxy_pass http://127.0.0.1:{self.backend_port}/; }}
        {self.plain_locations}
    }}""", log_level="warn"))
        return conf


def one_worker_conf(d: Path, port: int, server: str, http: str = "", main: str = "") -> Path:
    """Write `d`/nginx.conf: a one-worker nginx of ours listening on `port` (the benchmarks'
    backends and floors), `server` its server block's body, `http` and `main` more text."""
    d.mkdir(parents=True, exist_ok=True)
    conf = d / "nginx.conf"
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(f"""{user}
{main}
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    {http}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        {server}
    }}
}}
""")
    return conf


def write_backend_conf(tmp: Path, port: int) -> Path:
    """nginx.conf of a one-worker nginx answering 200 "ok" on `port`: the fast "model"."""
    return one_worker_conf(tmp / "backend", port,
                           'location / { default_type text/plain; return 200 "ok\\n"; }')


def start_backend_nginx(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    """Run the backend nginx of `write_backend_conf` ourselves (the daemon never starts it)."""
    conf = write_backend_conf(tmp, port)
    return run_nginx(conf, conf.parent, port, "backend nginx")


def run_nginx(conf: Path, prefix: Path, port: int, what: str,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start an nginx of ours on `conf`; return once it listens on `port`."""
    proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(prefix)], env=env)
    try:
        wait_for(lambda: port_open(port) or proc.poll() is not None, 10, what)
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
    except BaseException:
        stop_process(proc, signal.SIGQUIT)
        raise
    return proc


def get_body(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()
