"""A controllable fake "model" HTTP server for testing model-starter.

Standard library only, one thread per connection, minimal imports so it is
listening within a few tens of milliseconds of being spawned.

Usage: python tests/fakemodel.py --port N [--host H] [--listen-delay S]
       [--unhealthy-for S] [--never-healthy] [--exit-at-once CODE]
       [--record FILE] [--ignore-sigterm] [--sleep-mode]
       [--sleep-idle-seconds S [--wake-seconds W]]

Endpoints (any method; HEAD gets headers only):
  /health                      200 {"status":"ok"} or 503 {"status":"starting"}
  /status/CODE                 that status with {"from":"model","status":CODE}
  /stream?seconds=S&interval=I SSE: data: {"i": n, "t": time} then data: [DONE]
  /crash                       read the request and body, then os._exit(3)
  /crash-stream?after=S&interval=I  SSE stream, os._exit(3) after S seconds
  /slow?seconds=S              sleep S seconds, then answer like echo
  /pid                         {"pid": ...}
  /say?text=T                  print "say: T" (URL-decoded) to stderr, the model's log; echo
  with --sleep-mode, vLLM's sleep API (the model's work refused while asleep):
  POST /sleep?level=N          fall asleep (recorded as {"event": "sleep"}); 200
  POST /wake_up                wake (recorded as {"event": "wake"}); 200
  GET  /is_sleeping            {"is_sleeping": bool}
  while asleep, anything but /health, /pid and these answers 503 {"error": "asleep"}
  with --sleep-idle-seconds S, llama.cpp's self-sleep: asleep after S seconds without a request
  (/health, /props and /pid do not count); a request while asleep first reloads for W seconds
  (recorded as {"event": "wake"}); GET /props has {"is_sleeping": bool}
  anything else (e.g. /echo)   {"pid","method","path","headers","body_sha256","body_len"}

Request bodies may use Content-Length or Transfer-Encoding: chunked.
SIGTERM (and SIGINT) exit 0 immediately, even with open streams.
"""

from __future__ import annotations

import time

T0_MONO = time.monotonic()
T0_WALL = time.time()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from types import FrameType  # noqa: E402
from typing import BinaryIO  # noqa: E402

PID = os.getpid()
MAX_LINE = 65536
MAX_HEADERS = 200
IDLE_TIMEOUT = 300.0

REASONS: dict[int, str] = {
    100: "Continue",
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    301: "Moved Permanently",
    302: "Found",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class BadRequest(Exception):
    """The client sent something that is not valid HTTP/1.x."""


class ClientGone(Exception):
    """The peer closed the connection before a complete request arrived."""


def log(msg: str) -> None:
    try:
        sys.stderr.write(f"fakemodel[{PID}]: {msg}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class Recorder:
    """Appends JSON lines to a file, one os.write per line (O_APPEND)."""

    def __init__(self, path: str | None) -> None:
        self._fd: int | None = None
        self._lock = threading.Lock()
        if path:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, event: dict[str, object]) -> None:
        if self._fd is None:
            return
        data = (json.dumps(event, separators=(",", ":")) + "\n").encode()
        with self._lock:
            try:
                os.write(self._fd, data)
            except OSError as exc:
                log(f"record write failed: {exc}")


class State:
    def __init__(self, args: argparse.Namespace, recorder: Recorder) -> None:
        self.never_healthy: bool = args.never_healthy
        self.unhealthy_for: float = args.unhealthy_for
        self.recorder = recorder
        self.listen_mono: float = 0.0
        self._ready_recorded = False
        self._lock = threading.Lock()
        self.sleep_mode: bool = args.sleep_mode
        self.asleep = False
        self.sleep_idle: float | None = args.sleep_idle_seconds
        self.wake_seconds: float = args.wake_seconds
        self.last_task = time.monotonic()

    def self_sleep_task(self, path: str) -> None:
        """llama.cpp's --sleep-idle-seconds: a task wakes a sleeping engine (after a reload)."""
        if self.sleep_idle is None or path in ("/health", "/props", "/pid"):
            return
        with self._lock:
            if time.monotonic() - self.last_task >= self.sleep_idle:
                self.recorder.write({"event": "wake", "pid": PID, "time": time.time()})
                log("waking itself: reloading")
                time.sleep(self.wake_seconds)
            self.last_task = time.monotonic()

    def healthy(self) -> bool:
        if self.never_healthy:
            return False
        ok = time.monotonic() - self.listen_mono >= self.unhealthy_for
        if ok:
            with self._lock:
                first = not self._ready_recorded
                self._ready_recorded = True
            if first:
                spawn_to_ready = time.monotonic() - T0_MONO
                self.recorder.write(
                    {
                        "event": "ready",
                        "pid": PID,
                        "spawn_to_ready": spawn_to_ready,
                        "time": time.time(),
                    }
                )
                log(f"ready {spawn_to_ready:.3f}s after spawn")
        return ok


class Request:
    def __init__(
        self,
        method: str,
        target: str,
        version: str,
        headers: dict[str, str],
        peer: str,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.peer = peer
        path, _, query = target.partition("?")
        self.path = path
        self.query: dict[str, str] = {}
        for part in query.split("&"):
            if part:
                k, _, v = part.partition("=")
                self.query.setdefault(k, v)
        self.body_sha256 = hashlib.sha256(b"").hexdigest()
        self.body_len = 0

    @property
    def is_head(self) -> bool:
        return self.method == "HEAD"

    def wants_keepalive(self) -> bool:
        conn = self.headers.get("connection", "").lower()
        tokens = {t.strip() for t in conn.split(",")}
        if self.version == "HTTP/1.1":
            return "close" not in tokens
        return "keep-alive" in tokens

    def qfloat(self, name: str, default: float) -> float:
        raw = self.query.get(name)
        if raw is None or raw == "":
            return default
        value = float(raw)
        if value != value or value < 0:  # NaN or negative
            raise ValueError(name)
        return value


def read_line(rfile: BinaryIO) -> bytes:
    line = rfile.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise BadRequest("line too long")
    return line


def read_exact(rfile: BinaryIO, n: int, hasher: hashlib._Hash) -> None:
    while n > 0:
        chunk = rfile.read(min(n, 1 << 16))
        if not chunk:
            raise ClientGone("eof in body")
        hasher.update(chunk)
        n -= len(chunk)


def read_request(rfile: BinaryIO, peer: str) -> Request | None:
    """Parse the request head. None means a clean EOF between requests."""
    line = read_line(rfile)
    while line in (b"\r\n", b"\n"):  # tolerate stray CRLF between requests
        line = read_line(rfile)
    if not line:
        return None
    if not line.endswith(b"\n"):
        raise ClientGone("eof in request line")
    parts = line.decode("latin-1").rstrip("\r\n").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"bad request line {line[:200]!r}")
    method, target, version = parts
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        hline = read_line(rfile)
        if not hline:
            raise ClientGone("eof in headers")
        if hline in (b"\r\n", b"\n"):
            break
        text = hline.decode("latin-1").rstrip("\r\n")
        name, sep, value = text.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(f"bad header line {hline[:200]!r}")
        key = name.lower()
        value = value.strip(" \t")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    else:
        raise BadRequest("too many headers")
    return Request(method, target, version, headers, peer)


def read_body(req: Request, rfile: BinaryIO, wsock: socket.socket) -> None:
    te = req.headers.get("transfer-encoding", "").lower()
    cl = req.headers.get("content-length")
    chunked = "chunked" in [t.strip() for t in te.split(",")]
    if not chunked and cl is None:
        return
    if req.version == "HTTP/1.1" and req.headers.get("expect", "").lower() == "100-continue":
        wsock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    hasher = hashlib.sha256()
    total = 0
    if chunked:
        while True:
            size_line = read_line(rfile)
            if not size_line:
                raise ClientGone("eof in chunk size")
            size_text = size_line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise BadRequest(f"bad chunk size {size_line[:100]!r}") from None
            if size < 0:
                raise BadRequest("negative chunk size")
            if size == 0:
                while True:  # trailers, up to the empty line
                    trailer = read_line(rfile)
                    if not trailer:
                        raise ClientGone("eof in trailers")
                    if trailer in (b"\r\n", b"\n"):
                        break
                break
            read_exact(rfile, size, hasher)
            total += size
            crlf = read_line(rfile)
            if crlf not in (b"\r\n", b"\n"):
                raise BadRequest("missing CRLF after chunk")
    else:
        assert cl is not None
        try:
            total = int(cl.split(",")[0].strip())
        except ValueError:
            raise BadRequest(f"bad content-length {cl!r}") from None
        if total < 0:
            raise BadRequest("negative content-length")
        read_exact(rfile, total, hasher)
    req.body_sha256 = hasher.hexdigest()
    req.body_len = total


class Connection:
    def __init__(self, sock: socket.socket, peer: str, state: State) -> None:
        self.sock = sock
        self.peer = peer
        self.state = state
        self.rfile: BinaryIO = sock.makefile("rb")

    def send_head(
        self,
        req: Request,
        status: int,
        headers: list[tuple[str, str]],
        keepalive: bool,
    ) -> None:
        version = "HTTP/1.1" if req.version == "HTTP/1.1" else "HTTP/1.0"
        lines = [f"{version} {status} {REASONS.get(status, 'Unknown')}"]
        lines.append("Server: fakemodel")
        lines.append(f"X-Fakemodel-Pid: {PID}")
        lines.extend(f"{k}: {v}" for k, v in headers)
        lines.append("Connection: keep-alive" if keepalive else "Connection: close")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def send_json(self, req: Request, status: int, obj: object, keepalive: bool) -> None:
        body = (json.dumps(obj) + "\n").encode()
        no_body = status < 200 or status in (204, 304)
        headers = [("Content-Type", "application/json")]
        if not no_body:
            headers.append(("Content-Length", str(len(body))))
        self.send_head(req, status, headers, keepalive)
        sent = 0
        if not req.is_head and not no_body:
            self.sock.sendall(body)
            sent = len(body)
        log(f'{self.peer} "{req.method} {req.target} {req.version}" {status} {sent}')

    def echo_obj(self, req: Request) -> dict[str, object]:
        return {
            "pid": PID,
            "method": req.method,
            "path": req.target,
            "headers": req.headers,
            "body_sha256": req.body_sha256,
            "body_len": req.body_len,
        }

    def serve(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(IDLE_TIMEOUT)
        try:
            while True:
                try:
                    req = read_request(self.rfile, self.peer)
                except BadRequest as exc:
                    log(f"{self.peer} bad request: {exc}")
                    self.send_json(
                        Request("GET", "/", "HTTP/1.0", {}, self.peer),
                        400,
                        {"from": "model", "error": str(exc)},
                        False,
                    )
                    return
                if req is None:
                    return
                try:
                    read_body(req, self.rfile, self.sock)
                except BadRequest as exc:
                    log(f"{self.peer} bad request body: {exc}")
                    self.send_json(req, 400, {"from": "model", "error": str(exc)}, False)
                    return
                self.state.recorder.write(
                    {
                        "event": "request",
                        "pid": PID,
                        "method": req.method,
                        "path": req.target,
                        "sha256": req.body_sha256,
                        "time": time.time(),
                    }
                )
                if not self.dispatch(req):
                    return
        except (ClientGone, OSError) as exc:
            if not isinstance(exc, ClientGone | BrokenPipeError | ConnectionResetError):
                log(f"{self.peer} connection error: {exc!r}")
        finally:
            try:
                self.rfile.close()
                self.sock.close()
            except OSError:
                pass

    def dispatch(self, req: Request) -> bool:
        """Answer one request. Returns whether the connection stays open."""
        keepalive = req.wants_keepalive()
        path = req.path
        self.state.self_sleep_task(path)
        try:
            if path == "/props" and self.state.sleep_idle is not None:
                asleep = time.monotonic() - self.state.last_task >= self.state.sleep_idle
                self.send_json(req, 200, {"is_sleeping": asleep}, keepalive)
            elif path == "/health":
                if self.state.healthy():
                    self.send_json(req, 200, {"status": "ok", "pid": PID}, keepalive)
                else:
                    self.send_json(req, 503, {"status": "starting", "pid": PID}, keepalive)
            elif path == "/pid":
                self.send_json(req, 200, {"pid": PID}, keepalive)
            elif self.state.sleep_mode and path in ("/sleep", "/wake_up", "/is_sleeping"):
                self.sleep_api(req, path, keepalive)
            elif self.state.asleep:
                self.send_json(req, 503, {"from": "model", "error": "asleep"}, keepalive)
            elif path == "/say":
                from urllib.parse import unquote_plus

                log(f"say: {unquote_plus(req.query.get('text', ''))}")
                self.send_json(req, 200, self.echo_obj(req), keepalive)
            elif path.startswith("/status/"):
                try:
                    code = int(path[len("/status/") :])
                except ValueError:
                    code = 0
                if not 200 <= code <= 599:
                    self.send_json(req, 400, {"from": "model", "error": "bad status"}, keepalive)
                else:
                    self.send_json(req, code, {"from": "model", "status": code}, keepalive)
            elif path == "/crash":
                log(f'{self.peer} "{req.method} {req.target} {req.version}" crashing: exit 3')
                os._exit(3)
            elif path == "/stream":
                seconds = req.qfloat("seconds", 5.0)
                interval = req.qfloat("interval", 0.5)
                return self.stream(req, keepalive, seconds, interval, crash=False)
            elif path == "/crash-stream":
                after = req.qfloat("after", 1.0)
                interval = req.qfloat("interval", 0.2)
                return self.stream(req, keepalive, after, interval, crash=True)
            elif path == "/slow":
                time.sleep(req.qfloat("seconds", 1.0))
                self.send_json(req, 200, self.echo_obj(req), keepalive)
            else:
                self.send_json(req, 200, self.echo_obj(req), keepalive)
        except ValueError as exc:
            self.send_json(req, 400, {"from": "model", "error": f"bad query {exc}"}, keepalive)
        return keepalive

    def sleep_api(self, req: Request, path: str, keepalive: bool) -> None:
        if path == "/is_sleeping":
            self.send_json(req, 200, {"is_sleeping": self.state.asleep}, keepalive)
            return
        if req.method != "POST":
            self.send_json(req, 405, {"from": "model", "error": "POST only"}, keepalive)
            return
        self.state.asleep = path == "/sleep"
        event = "sleep" if self.state.asleep else "wake"
        self.state.recorder.write({"event": event, "pid": PID, "time": time.time()})
        log(f"{event} ({req.target})")
        self.send_json(req, 200, {"is_sleeping": self.state.asleep}, keepalive)

    def stream(
        self, req: Request, keepalive: bool, seconds: float, interval: float, crash: bool
    ) -> bool:
        chunked = req.version == "HTTP/1.1"
        keepalive = keepalive and chunked
        headers = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]
        if chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        self.send_head(req, 200, headers, keepalive)
        log(f'{self.peer} "{req.method} {req.target} {req.version}" 200 stream')
        if req.is_head:
            return keepalive

        def send(data: bytes) -> None:
            if chunked:
                self.sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))
            else:
                self.sock.sendall(data)

        start = time.monotonic()
        deadline = start + seconds
        interval = max(interval, 0.001)
        n = 0
        while time.monotonic() < deadline:
            send(b'data: {"i": %d, "t": %.6f}\n\n' % (n, time.time()))
            n += 1
            wait = min(start + n * interval, deadline) - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        if crash:
            log(f'{self.peer} "{req.method} {req.target}" crashing mid-stream: exit 3')
            os._exit(3)
        send(b"data: [DONE]\n\n")
        if chunked:
            self.sock.sendall(b"0\r\n\r\n")
        return keepalive


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fakemodel", description="Fake model server for tests.")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--listen-delay", type=float, default=0.0, metavar="SECONDS")
    p.add_argument("--unhealthy-for", type=float, default=0.0, metavar="SECONDS")
    p.add_argument("--never-healthy", action="store_true")
    p.add_argument("--exit-at-once", type=int, default=None, metavar="CODE")
    p.add_argument("--exit-when", default=None, metavar="FILE",
                   help="with --exit-at-once: exit only once FILE exists (the test says when)")
    p.add_argument("--record", default=None, metavar="FILE")
    p.add_argument("--ignore-sigterm", action="store_true")
    p.add_argument("--sleep-mode", action="store_true")
    p.add_argument("--sleep-idle-seconds", type=float, default=None, metavar="SECONDS")
    p.add_argument("--wake-seconds", type=float, default=1.5, metavar="SECONDS")
    return p.parse_args(argv)


def on_signal(signum: int, frame: FrameType | None) -> None:
    log(f"signal {signum}, exiting 0")
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    recorder = Recorder(args.record)
    recorder.write({"event": "start", "pid": PID, "time": T0_WALL, "port": args.port})

    if args.exit_at_once is not None:
        while args.exit_when and not os.path.exists(args.exit_when):
            time.sleep(0.01)
        sys.stderr.write(
            "fakemodel: failing on purpose\n" + "".join(f"line {i}\n" for i in range(1, 26))
        )
        sys.stderr.flush()
        return int(args.exit_at_once)

    if args.listen_delay > 0:
        log(f"delaying listen by {args.listen_delay}s")
        time.sleep(args.listen_delay)

    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind((args.host, args.port))
    except OSError as exc:
        log(f"cannot bind {args.host}:{args.port}: {exc}")
        return 1
    server.listen(256)
    state = State(args, recorder)
    state.listen_mono = time.monotonic()
    port = server.getsockname()[1]
    log(f"listening on {args.host}:{port} after {state.listen_mono - T0_MONO:.3f}s")

    while True:
        try:
            conn, addr = server.accept()
        except OSError as exc:
            log(f"accept failed: {exc}")
            time.sleep(0.01)
            continue
        peer = f"{addr[0]}:{addr[1]}"
        threading.Thread(
            target=Connection(conn, peer, state).serve, name=f"conn {peer}", daemon=True
        ).start()


if __name__ == "__main__":
    sys.exit(main())
