"""Figure openai: the single OpenAI endpoint (routed by the body inside nginx with njs) against
the path-prefix route, and the prefix route against a plain `proxy_pass`."""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.driver import run_alone
from bench.harness import Row, Settings, figure, fresh_dir, stop_process
from bench.plain_proxy import HotPathStack, one_worker_conf, run_nginx
from bench.router_floor import NJS_KINDS, lua_root, njs_floor, start_lua_floor
from bench.wrk import WrkResult, nginx_workers, run_wrk
from tests.stack import NJS, fake_model, free_port, pid_alive, port_open, request, wait_for

BUSY_MIN = 0.9  # nginx worker CPU s per wall s for a gated round to count
SIZES = (("1 KB", 1024, 0.9), ("64 KB", 64 * 1024, None), ("1 MB", 1024 * 1024, None))


def _start_sink(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    """The fast "model": a one-worker nginx answering 200 "ok" to any method and body."""
    conf = one_worker_conf(
        tmp / "sink", port, """location / { default_type application/json; return 200 '{"ok":true}'; }""",
        http="client_max_body_size 8m; client_body_buffer_size 2m;")
    return run_nginx(conf, conf.parent, port, "the sink nginx")


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

    what: str  # the row's metric, without ", req/s"
    a: tuple[str, str, str | None]  # (name, url, wrk script)
    b: tuple[str, str, str | None]
    gated: bool  # rounds count only when the nginx worker was busy on both sides
    target: float | None = None  # b / a in req/s at least
    cpu_target: float | None = None  # b / a in nginx worker CPU per request at most
    worker: int = 0  # the nginx worker measured (0: the front nginx's)
    got: list[tuple[WrkResult, WrkResult]] = field(default_factory=list)
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
            print(f"  openai {pair.what[:40]} {attempts} {name:8s} {r.rps:9.0f} req/s "
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
    divided by `POST /<model>/v1/chat/completions` (the path-prefix route) on the same model,
    bodies of 1 KB, 64 KB and 1 MB: first before a model process (`tests/fakemodel.py`, a
    Python model that hashes each body; what a client of a model sees), then before an
    instant "model" (a one-worker nginx answering 200), where the one-worker front nginx is
    the bottleneck and the ratio is nginx's own cost. Then the prefix route (`GET /m/bench`)
    divided by a plain `location /plain/ { proxy_pass http://up/; }` in the same front nginx,
    and the floors of any routing by the body (`bench/router_floor.py`), each divided by a
    plain `proxy_pass` of the same 1 KB POST. Rounds alternate (ABBA), `wrk -t1 -c16`; ratios
    per round, medians shown. nginx worker CPU per request from /proc/PID/stat (10 ms ticks)."""
    fig = "openai"
    if NJS is None:
        return [Row(fig, "skipped", "nginx's njs module is not installed", ok=None)]
    rounds, seconds, conns = (3, 2, 16) if settings.quick else (5, 3, 16)
    tmp = fresh_dir(settings.out / "openai")
    sink_port = free_port()
    model = {"command": ["sleep", "infinity"], "port": sink_port, "startup_timeout": 10}
    procs: list[subprocess.Popen[bytes]] = []
    floor_http, floor_locations = njs_floor(tmp, sink_port)
    lua = lua_root()
    py = {**fake_model(free_port()), "idle_timeout": 0}
    s = HotPathStack(tmp, {"m": model, "py": py}, backend_port=sink_port,
                     nginx_extra={"openai": "true", "openai_max_body_size": "4m"},
                     plain_http=floor_http, plain_locations=floor_locations)
    pairs: list[Pair] = []
    errors = 0
    try:
        procs.append(_start_sink(tmp, sink_port))
        with s:
            assert s.nginx is not None
            wait_for(lambda: port_open(s.plain_port), 10, "the plain server")
            worker = wait_for(lambda: nginx_workers(s.nginx.pid if s.nginx else 0), 10,
                              "nginx worker")[0]
            front = f"http://127.0.0.1:{s.nginx_port}"
            plain = f"http://127.0.0.1:{s.plain_port}"
            for model_name, before in (("py", "before a Python model (tests/fakemodel.py)"),
                                       ("m", 'nginx-bound (an instant "model")')):
                for label, size, target in SIZES:
                    script, body = _post_script(tmp, size, model_name)
                    by_body = f"{front}/v1/chat/completions"
                    prefix = f"{front}/{model_name}/v1/chat/completions"
                    for url in (by_body, prefix):  # the first one starts py
                        _check(url, body)
                    pairs.append(Pair(
                        f"{label} body {before}: routed by body / prefix route",
                        ("prefix", prefix, script), ("by-body", by_body, script),
                        gated=model_name == "m" and size <= 1024,
                        target=target if model_name == "py" else None))
            pairs.append(Pair("GET: prefix route / plain proxy_pass",
                              ("plain", f"{plain}/plain/bench", None),
                              ("prefix", f"{front}/m/bench", None),
                              gated=True, target=0.99, cpu_target=1.01))
            script, body = _post_script(tmp, 1024)
            for kind in NJS_KINDS:
                _check(f"{plain}/floor-{kind}/x", body)
                pairs.append(Pair(f"1 KB POST, floor: njs-{kind} / plain proxy_pass",
                                  ("plain", f"{plain}/plain-post/x", script),
                                  (f"njs-{kind}", f"{plain}/floor-{kind}/x", script),
                                  gated=True))
            if lua is not None:
                port = free_port()
                procs.append(start_lua_floor(tmp, lua, port, sink_port))
                lua_url = f"http://127.0.0.1:{port}"
                _check(f"{lua_url}/floor-lua/x", body)
                pairs.append(Pair("1 KB POST, floor: lua-parse / plain proxy_pass",
                                  ("plain", f"{lua_url}/plain-post/x", script),
                                  ("lua-parse", f"{lua_url}/floor-lua/x", script), gated=True,
                                  worker=nginx_workers(procs[-1].pid)[0]))
            for pair in pairs:
                pid = pair.worker or worker
                run_wrk(pair.a[1], 1, conns, pid, pair.a[2])  # warm-up, not recorded
                # A ratio judged against a target gets twice the rounds: the spread of one
                # round on a shared machine is ±0.1.
                more = 2 * rounds + 1 if pair.target else rounds
                errors += _rounds(pair, pid, more, seconds, conns)
            if not pid_alive(s.daemon.pid if s.daemon else -1):
                raise RuntimeError("the daemon died during the run")
            if s.status()["m"].get("starts"):
                raise RuntimeError("the daemon was asked to start the always-up model")
    finally:
        s.close()
        for proc in procs:
            stop_process(proc, signal.SIGQUIT)
    return _rows(fig, pairs, errors, rounds, seconds, conns)


def _check(url: str, body: bytes) -> None:
    """One POST that must answer 200 before its route is measured (a cold model starts)."""
    port, path = url.removeprefix("http://127.0.0.1:").split("/", 1)
    got = request(int(port), "POST", f"/{path}", body=body,
                  headers={"Content-Type": "application/json"}, timeout=30)
    if got.status != 200:
        raise RuntimeError(f"{url}: {got.status} {got.body[:200]!r}")


def _rows(fig: str, pairs: list[Pair], errors: int, rounds: int, seconds: int,
          conns: int) -> list[Row]:
    out: list[Row] = []
    for pair in pairs:
        rps = _median(pair, lambda a, b: b.rps / a.rps)
        cpu = _median(pair, lambda a, b: b.cpu_per_request / a.cpu_per_request)
        a_name, b_name = pair.a[0], pair.b[0]
        ratios = ", ".join(f"{b.rps / a.rps:.3f}" for a, b in pair.got)
        warn = (f"UNRELIABLE (the nginx worker was never busy ≥ {BUSY_MIN}: the machine was "
                "loaded); " if pair.unreliable else "")
        out.append(Row(fig, f"{pair.what}, req/s", f"{rps:.3f}",
                       f"≥ {pair.target}" if pair.target else "",
                       None if pair.target is None or pair.unreliable else rps >= pair.target,
                       note=f"{warn}{_median(pair, lambda a, b: a.rps):,.0f} vs "
                            f"{_median(pair, lambda a, b: b.rps):,.0f} req/s; rounds {ratios}"))
        cpu_note = (f"{a_name} {_median(pair, lambda a, b: a.cpu_per_request) * 1e6:.1f} µs, "
                    f"{b_name} {_median(pair, lambda a, b: b.cpu_per_request) * 1e6:.1f} µs; "
                    f"worker busy {_median(pair, lambda a, b: a.busy):.2f} / "
                    f"{_median(pair, lambda a, b: b.busy):.2f}")
        limit = pair.cpu_target
        out.append(Row(fig, f"{pair.what}, nginx worker CPU per request", f"{cpu:.3f}",
                       f"≤ {limit}" if limit else "",
                       None if limit is None or pair.unreliable else cpu <= limit,
                       note=cpu_note))
    out.append(Row(fig, "errors (non-2xx + socket)", str(errors), "0", errors == 0,
                   note=f"{rounds} rounds per pair ({2 * rounds + 1} where there is a target), "
                        f"`wrk -t1 -c{conns} -d{seconds}s`, ABBA"))
    return out


if __name__ == "__main__":
    sys.exit(run_alone("openai"))
