"""Test harness: a real nginx (Debian's package) + the real daemon + real model processes.

Everything binds 127.0.0.1 and is stopped by PID when the stack closes.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from model_starter.nginx_openai import njs_module
from model_starter.protocol import CLIENT_HEADER

ROOT = Path(__file__).resolve().parent.parent
FAKEMODEL = str(ROOT / "tests" / "fakemodel.py")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NJS = njs_module()  # nginx's njs module (the OpenAI endpoint); load_module is main-context only


def nginx_conf(ngdir: Path, http: str, *, worker_connections: int = 4096, main: str = "",
               log_level: str = "info") -> str:
    """A one-worker nginx.conf whose files all live in `ngdir`, with `http` inside http {}."""
    user = "user root;" if os.geteuid() == 0 else ""  # tmp dirs are private to us
    return f"""
{user}
daemon off;
worker_processes 1;
{f"load_module {NJS};" if NJS else ""}
{main}
pid {ngdir}/nginx.pid;
error_log {ngdir}/error.log {log_level};
events {{ worker_connections {worker_connections}; }}
http {{
    access_log off;
    client_body_temp_path {ngdir}/body;
    proxy_temp_path {ngdir}/proxy;
    {http}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `predicate` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is as good as gone (its parent has not reaped it yet).
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
    host: str = "127.0.0.1",
) -> Response:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def fake_model(port: int, *extra: str, record: Path | None = None) -> dict[str, Any]:
    """A model entry running tests/fakemodel.py on `port`."""
    argv = [sys.executable, FAKEMODEL, "--port", str(port), *extra]
    if record is not None:
        argv += ["--record", str(record)]
    return {"command": argv, "port": port, "startup_timeout": 10, "stop_timeout": 5}


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def starts(record: Path, port: int | None = None) -> list[dict[str, Any]]:
    """The process starts the fake models recorded (on one port, or all)."""
    return [r for r in read_records(record)
            if r["event"] == "start" and (port is None or r["port"] == port)]


@dataclass
class Stack:
    """nginx + daemon for one config; use as a context manager."""

    tmp: Path
    models: dict[str, dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)
    style: str = "conf.d"
    nginx_extra: dict[str, Any] = field(default_factory=dict)
    daemon_port: int = field(default_factory=free_port)
    nginx_port: int = field(default_factory=free_port)
    daemon: subprocess.Popen[bytes] | None = None
    nginx: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.tmp / "config.yaml"

    def write_config(self) -> None:
        doc = {
            "listen": f"127.0.0.1:{self.daemon_port}",
            "nginx": {"listen": f"127.0.0.1:{self.nginx_port}", **self.nginx_extra},
            "log_dir": str(self.tmp / "logs"),
            "state_dir": str(self.tmp / "state"),
            "models": self.models,
            **self.extra,
        }
        self.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "model_starter", *args, "--config", str(self.config_path)],
            capture_output=True, text=True, check=check, timeout=120,
        )

    def generate_include(self, style: str) -> Path:
        """`model-starter nginx --style STYLE` into the nginx folder; returns the folder."""
        ngdir = self.nginx_dir
        ngdir.mkdir(exist_ok=True)
        out = self.cli("nginx", "--style", style, "--output-dir", str(ngdir), check=False)
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        return ngdir

    def write_nginx(self) -> Path:
        ngdir = self.generate_include(self.style)
        if self.style == "conf.d":
            http_inc, server = f"include {ngdir}/model-starter.conf;", ""
        else:
            http_inc = f"include {ngdir}/model-starter-upstreams.conf;"
            server = (
                f"server {{ listen 127.0.0.1:{self.nginx_port}; server_name _;\n"
                f"  include {ngdir}/model-starter-locations.conf; }}"
            )
        conf = ngdir / "nginx.conf"
        conf.write_text(nginx_conf(ngdir, f"{http_inc}\n    {server}"))
        return conf

    def nginx_test(self) -> subprocess.CompletedProcess[str]:
        conf = self.write_nginx()
        return subprocess.run([NGINX, "-t", "-c", str(conf), "-p", str(conf.parent)],
                              capture_output=True, text=True, timeout=30)

    def start_nginx(self) -> None:
        conf = self.write_nginx()
        self.nginx = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(conf.parent)])
        wait_for(lambda: port_open(self.nginx_port), 10, "nginx to listen")

    def reload_nginx(self) -> None:
        assert self.nginx is not None
        self.write_nginx()
        self.nginx.send_signal(signal.SIGHUP)

    @property
    def nginx_dir(self) -> Path:
        return self.tmp / "nginx"

    def start_daemon(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / "daemon.log", "ab")  # noqa: SIM115 - owned by the process
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "model_starter", "serve", "--config", str(self.config_path),
             "--log-level", "debug", *args],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for(lambda: port_open(self.daemon_port) or self.daemon.poll() is not None, 20,
                 "the daemon to listen")
        assert self.daemon.poll() is None, self.daemon_log()
        return self.daemon

    def stop_daemon(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.daemon is None or self.daemon.poll() is not None:
            return None if self.daemon is None else self.daemon.returncode
        self.daemon.send_signal(sig)
        try:
            return self.daemon.wait(timeout)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            self.daemon.wait()
            raise

    def daemon_log(self) -> str:
        path = self.tmp / "daemon.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def get(self, path: str, **kw: Any) -> Response:
        return request(self.nginx_port, "GET", path, **kw)

    def call(self, method: str, path: str, **kw: Any) -> Response:
        return request(self.nginx_port, method, path, **kw)

    def direct(self, method: str, path: str, **kw: Any) -> Response:
        """A call to the daemon itself, as the CLI makes it (with the client header)."""
        kw["headers"] = {CLIENT_HEADER: "tests", **(kw.get("headers") or {})}
        return request(self.daemon_port, method, path, **kw)

    def status(self) -> dict[str, dict[str, Any]]:
        data = self.direct("GET", "/_ms/status").json()
        return {m["name"]: m for m in data["models"]}

    def __enter__(self) -> Stack:
        self.write_config()
        try:
            self.start_daemon()
            self.start_nginx()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop_daemon()
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait()
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)
            try:
                self.nginx.wait(10)
            except subprocess.TimeoutExpired:
                self.nginx.kill()
                self.nginx.wait()


def kill_recorded(record: Path) -> list[int]:
    """Kill (by PID) any model process a test left behind; return those that were alive."""
    alive = []
    for rec in read_records(record):
        if rec.get("event") == "start" and pid_alive(rec["pid"]):
            alive.append(rec["pid"])
            with contextlib.suppress(ProcessLookupError):
                os.killpg(rec["pid"], signal.SIGKILL)
    return alive


@contextlib.contextmanager
def stack(tmp: Path, models: dict[str, dict[str, Any]], **kw: Any) -> Iterator[Stack]:
    s = Stack(tmp, models, **kw)
    with s:
        yield s
