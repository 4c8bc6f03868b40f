"""Figure openai: the single OpenAI endpoint (routed by the body inside nginx with njs) against
the path-prefix route, and the prefix route against a plain `proxy_pass`."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.driver import run_alone
from bench.harness import Row, Settings, figure, fresh_dir, stop_process
from bench.plain_proxy import HotPathStack, run_nginx
from bench.wrk import WrkResult, nginx_workers, run_wrk
from tests.stack import NJS, fake_model, free_port, pid_alive, port_open, request, wait_for

BUSY_MIN = 0.9  # nginx worker CPU s per wall s for a gated round to count
SIZES = (("1 KB", 1024, 0.9), ("64 KB", 64 * 1024, None), ("1 MB", 1024 * 1024, None))


def _start_sink(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    """The fast "model": a one-worker nginx answering 200 "ok" to any method and body."""
    d = tmp / "sink"
    d.mkdir(parents=True, exist_ok=True)
    user = "user root;" if os.geteuid() == 0 else ""
    conf = d / "nginx.conf"
    conf.write_text(f"""{user}
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    client_max_body_size 8m;
    client_body_buffer_size 2m;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ default_type application/json; return 200 '{{"ok":true}}'; }}
    }}
}}
""")
    return run_nginx(conf, d, port, "the sink nginx")


# The njs floor: what any routing by the body costs in Debian's njs before our router's own
# work. `redirect` enters the njs VM and redirects (the body is not read); `parse` also reads
# the body and parses it. Both redirect to a plain `proxy_pass` of the same server.
FLOOR_JS = """
function redirect(r) { r.internalRedirect('@plain_post'); }
function parse(r) { JSON.parse(r.requestText); r.internalRedirect('@plain_post'); }
export default {redirect, parse};
"""


def _floor_nginx(tmp: Path, backend: int) -> tuple[str, str]:
    """(http-level text, locations) of the njs floor in the plain server."""
    js = tmp / "floor.js"
    js.write_text(FLOOR_JS)
    return (f"js_import ms_floor from {js};",
            f"""location /floor-redirect/ {{ js_content ms_floor.redirect; }}
        location /floor-parse/ {{
            client_body_buffer_size 4m; client_max_body_size 4m; js_content ms_floor.parse;
        }}
        location /plain-post/ {{ proxy_pass http://127.0.0.1:{backend}/; }}
        location @plain_post {{ proxy_pass http://127.0.0.1:{backend}; }}""")


def _post_script(tmp: Path, size: int, model: str = "m") -> tuple[str, bytes]:
    """A wrk Lua script POSTing a chat request of about `size` bytes; and that body."""
    pad = max(0, size - len(json.dumps({"model": model, "messages": [
        {"role": "user", "content": ""}]})))
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "x" * pad}]})
    script = tmp / f"post-{model}-{size}.lua"
    script.write_text('wrk.method = "POST"\n'
                      'wrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = {json.dumps(body)}\n")
    return str(script), body.encode()


@dataclass
class Pair:
    """Two routes run in alternating (ABBA) rounds; the ratio is b / a per round."""

    label: str
    a: tuple[str, str, str | None]  # (name, url, wrk script)
    b: tuple[str, str, str | None]
    gated: bool  # rounds count only when the nginx worker was busy on both sides
    got: list[tuple[WrkResult, WrkResult]]
    unreliable: bool = False  # gated, but no round had the nginx worker as the bottleneck


def _rounds(pair: Pair, worker: int, rounds: int, seconds: int, conns: int) -> int:
    """Run `pair` until `rounds` rounds count (at most 3x); returns the errors seen."""
    errors, attempts, every = 0, 0, []
    while len(pair.got) < rounds and attempts < 3 * rounds:
        order = [pair.a, pair.b] if attempts % 2 == 0 else [pair.b, pair.a]
        attempts += 1
        res: dict[str, WrkResult] = {}
        for name, url, script in order:
            r = res[name] = run_wrk(url, seconds, conns, worker, script)
            errors += r.errors
            print(f"  openai {pair.label} {attempts} {name:8s} {r.rps:9.0f} req/s "
                  f"{r.cpu_per_request * 1e6:7.1f} us CPU/req busy {r.busy:.2f} "
                  f"errors {r.errors}", file=sys.stderr)
        one = (res[pair.a[0]], res[pair.b[0]])
        every.append(one)
        if not pair.gated or min(x.busy for x in one) >= BUSY_MIN:
            pair.got.append(one)
    if not pair.got:  # never nginx-bound: keep every round, reported as such
        pair.got.extend(every)
        pair.unreliable = True
    return errors


def _median(pair: Pair, of: Callable[[WrkResult, WrkResult], float]) -> float:
    return statistics.median(of(a, b) for a, b in pair.got)


@figure("openai", order=25)
def openai_endpoint(settings: Settings) -> list[Row]:
    """OpenAI endpoint. `POST /v1/chat/completions` routed by the body's `model` (njs
    `js_content` reads the body, a `map` names the model's location, `internalRedirect`)
    divided by `POST /m/v1/chat/completions` (the path-prefix route) on the same fast "model"
    (a one-worker nginx answering 200), bodies of 1 KB, 64 KB and 1 MB; then the prefix route
    (`GET /m/bench`) divided by a plain `location /plain/ { proxy_pass http://up/; }` in the
    same one-worker front nginx. Rounds alternate (ABBA), `wrk -t1 -c16`; ratios per round,
    medians shown. nginx worker CPU per request from /proc/PID/stat (10 ms ticks)."""
    fig = "openai"
    if NJS is None:
        return [Row(fig, "skipped", "nginx's njs module is not installed", ok=None)]
    rounds, seconds, conns = (3, 2, 16) if settings.quick else (5, 3, 16)
    tmp = fresh_dir(settings.out / "openai")
    sink_port = free_port()
    model = {"command": ["sleep", "infinity"], "port": sink_port, "startup_timeout": 10}
    sink: subprocess.Popen[bytes] | None = None
    floor_http, floor_locations = _floor_nginx(tmp, sink_port)
    # A model that does some work per request (tests/fakemodel.py: a thread per connection,
    # hashes the body): the ratio a client of a small real model would see.
    py = {**fake_model(free_port()), "idle_timeout": 0}
    s = HotPathStack(tmp, {"m": model, "py": py}, backend_port=sink_port,
                     nginx_extra={"openai": "true", "openai_max_body_size": "4m"},
                     plain_http=floor_http, plain_locations=floor_locations)
    pairs: list[Pair] = []
    errors = 0
    try:
        sink = _start_sink(tmp, sink_port)
        with s:
            assert s.nginx is not None
            wait_for(lambda: port_open(s.plain_port), 10, "the plain server")
            worker = wait_for(lambda: nginx_workers(s.nginx.pid if s.nginx else 0), 10,
                              "nginx worker")[0]
            front = f"http://127.0.0.1:{s.nginx_port}"
            for label, size, _target in SIZES:
                script, body = _post_script(tmp, size)
                for path in ("/v1/chat/completions", "/m/v1/chat/completions"):
                    check = request(s.nginx_port, "POST", path, body=body,
                                    headers={"Content-Type": "application/json"})
                    if check.status != 200:
                        raise RuntimeError(f"{path} ({label}): {check.status} {check.body[:200]!r}")
                pairs.append(Pair(label, ("prefix", f"{front}/m/v1/chat/completions", script),
                                  ("by-body", f"{front}/v1/chat/completions", script),
                                  gated=size <= 1024, got=[]))
            pairs.append(Pair("GET", ("plain", f"http://127.0.0.1:{s.plain_port}/plain/bench",
                                      None),
                              ("prefix", f"{front}/m/bench", None), gated=True, got=[]))
            script, body = _post_script(tmp, 1024, "py")
            for path in ("/v1/chat/completions", "/py/v1/chat/completions"):  # starts py
                check = request(s.nginx_port, "POST", path, body=body,
                                headers={"Content-Type": "application/json"}, timeout=30)
                if check.status != 200:
                    raise RuntimeError(f"{path} (py): {check.status} {check.body[:200]!r}")
            pairs.append(Pair("py", ("prefix", f"{front}/py/v1/chat/completions", script),
                              ("by-body", f"{front}/v1/chat/completions", script),
                              gated=False, got=[]))
            script, body = _post_script(tmp, 1024)
            plain = f"http://127.0.0.1:{s.plain_port}"
            for kind in ("redirect", "parse"):
                check = request(s.plain_port, "POST", f"/floor-{kind}/x", body=body,
                                headers={"Content-Type": "application/json"})
                if check.status != 200:
                    raise RuntimeError(f"/floor-{kind}/: {check.status} {check.body[:200]!r}")
                pairs.append(Pair(f"floor-{kind}", ("plain", f"{plain}/plain-post/x", script),
                                  (f"njs-{kind}", f"{plain}/floor-{kind}/x", script),
                                  gated=True, got=[]))
            for pair in pairs:
                run_wrk(pair.a[1], 1, conns, worker, pair.a[2])  # warm-up, not recorded
                errors += _rounds(pair, worker, rounds, seconds, conns)
            if not pid_alive(s.daemon.pid if s.daemon else -1):
                raise RuntimeError("the daemon died during the run")
            if s.status()["m"].get("starts"):
                raise RuntimeError("the daemon was asked to start the always-up model")
    finally:
        s.close()
        stop_process(sink, signal.SIGQUIT)
    return _rows(fig, pairs, errors, rounds, seconds, conns)


def _rows(fig: str, pairs: list[Pair], errors: int, rounds: int, seconds: int,
          conns: int) -> list[Row]:
    out: list[Row] = []
    rest = [("GET", 0, 0.99), ("py", 0, None), ("floor-redirect", 0, None),
            ("floor-parse", 0, None)]
    for pair, (label, _size, target) in zip(pairs, [*SIZES, *rest], strict=True):
        rps = _median(pair, lambda a, b: b.rps / a.rps)
        cpu = _median(pair, lambda a, b: b.cpu_per_request / a.cpu_per_request)
        a_name, b_name = pair.a[0], pair.b[0]
        ratios = ", ".join(f"{b.rps / a.rps:.3f}" for a, b in pair.got)
        what = (f"{b_name} / {a_name}" if label == "GET"
                else f"1 KB POST, njs floor: {b_name} / plain proxy_pass"
                if label.startswith("floor")
                else "1 KB body, a Python model (tests/fakemodel.py): routed by body / prefix route"
                if label == "py" else f"{label} body: routed by body / prefix route")
        warn = (f"UNRELIABLE (the nginx worker was never busy ≥ {BUSY_MIN}: the machine was "
                "loaded); " if pair.unreliable else "")
        out.append(Row(fig, f"{what}, req/s", f"{rps:.3f}",
                       f"≥ {target}" if target else "",
                       None if target is None or pair.unreliable else rps >= target,
                       note=f"{warn}{_median(pair, lambda a, b: a.rps):,.0f} vs "
                            f"{_median(pair, lambda a, b: b.rps):,.0f} req/s; rounds {ratios}"))
        cpu_note = (f"{a_name} {_median(pair, lambda a, b: a.cpu_per_request) * 1e6:.1f} µs, "
                    f"{b_name} {_median(pair, lambda a, b: b.cpu_per_request) * 1e6:.1f} µs; "
                    f"worker busy {_median(pair, lambda a, b: a.busy):.2f} / "
                    f"{_median(pair, lambda a, b: b.busy):.2f}")
        gate = label == "GET"
        out.append(Row(fig, f"{what}, nginx worker CPU per request", f"{cpu:.3f}",
                       "≤ 1.01" if gate else "",
                       (cpu <= 1.01) if gate and not pair.unreliable else None, note=cpu_note))
    out.append(Row(fig, "errors (non-2xx + socket)", str(errors), "0", errors == 0,
                   note=f"{rounds} rounds per pair, `wrk -t1 -c{conns} -d{seconds}s`, ABBA"))
    return out


if __name__ == "__main__":
    sys.exit(run_alone("openai"))
