"""Figure herd: 1000 concurrent requests to one cold model."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.driver import run_alone
from bench.harness import Row, Settings, dist_ms, figure, fresh_dir, mb, ms, percentile, proc_status_kb
from tests.stack import Stack, fake_model, free_port, kill_recorded, nginx_conf, port_open, wait_for
from tests.stack import starts as starts_of


def listen_counters() -> tuple[int, int]:
    """(ListenOverflows, ListenDrops) of the host, from /proc/net/netstat (TcpExt)."""
    with open("/proc/net/netstat") as fh:
        lines = fh.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table.get("ListenOverflows", 0)), int(table.get("ListenDrops", 0))
    return 0, 0


def sysctl(name: str) -> str:
    try:
        return Path("/proc/sys/" + name.replace(".", "/")).read_text().strip()
    except OSError:
        return "?"


@dataclass
class HerdStack(Stack):
    """The generated locations include inside our own server, with a listen backlog that
    matches the herd (the generated `listen` has nginx's default of 511)."""

    backlog: int = 4096

    def write_nginx(self) -> Path:
        ngdir = self.generate_include("locations")
        conf = ngdir / "nginx.conf"
        conf.write_text(nginx_conf(ngdir, f"""include {ngdir}/model-starter-upstreams.conf;
    server {{
        listen 127.0.0.1:{self.nginx_port} backlog={self.backlog};
        server_name _;
        include {ngdir}/model-starter-locations.conf;
    }}""", worker_connections=8192, main="worker_rlimit_nofile 16384;", log_level="warn"))
        return conf


class AcceptQueues:
    """Samples the accept queue (sk_ack_backlog: rx_queue of a LISTEN row in /proc/net/tcp)
    of some listening ports every few ms in a thread; keeps the maximum per port."""

    def __init__(self, ports: dict[str, int], interval: float = 0.005) -> None:
        self.ports = ports
        self.peak = dict.fromkeys(ports, 0)
        self._hex = {f"{p:04X}": name for name, p in ports.items()}
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, name="accept-queues", daemon=True)

    def __enter__(self) -> AcceptQueues:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with contextlib.suppress(OSError), open("/proc/net/tcp") as fh:
                next(fh, None)
                for line in fh:
                    f = line.split()
                    if len(f) > 4 and f[3] == "0A":  # LISTEN
                        name = self._hex.get(f[1].rsplit(":", 1)[1])
                        if name is not None:
                            queued = int(f[4].split(":")[1], 16)
                            self.peak[name] = max(self.peak[name], queued)


@dataclass(frozen=True)
class HerdResult:
    statuses: dict[int, int]
    errors: list[str]
    latencies: list[float]
    pids: set[int]
    wall: float


def herd_requests(port: int, n: int, timeout: float = 120.0) -> HerdResult:
    """n concurrent GETs through nginx at once (aiohttp, no connection limit, no keep-alive)."""
    import aiohttp

    async def run() -> HerdResult:
        statuses: dict[int, int] = {}
        errors: list[str] = []
        latencies: list[float] = []
        pids: set[int] = set()
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
            go = asyncio.Event()

            async def one(i: int) -> None:
                await go.wait()
                t0 = time.perf_counter()
                try:
                    async with session.get(f"http://127.0.0.1:{port}/m/herd/{i}") as resp:
                        body = await resp.read()
                        statuses[resp.status] = statuses.get(resp.status, 0) + 1
                        if resp.status == 200:
                            pids.add(int(json.loads(body)["pid"]))
                        elif len(errors) < 20:
                            errors.append(f"{resp.status} {body[:200]!r}")
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                latencies.append(time.perf_counter() - t0)

            tasks = [asyncio.create_task(one(i)) for i in range(n)]
            await asyncio.sleep(0.05)  # every task waits at the gate
            t0 = time.perf_counter()
            go.set()
            await asyncio.gather(*tasks)
            wall = time.perf_counter() - t0
        return HerdResult(statuses, errors, latencies, pids, wall)

    return asyncio.run(run())


@figure("herd", order=50)
def herd(settings: Settings) -> list[Row]:
    """Thundering herd. 1000 concurrent GETs (aiohttp, no connection limit, a new connection
    each) released at once through nginx to one cold fake model with `--listen-delay 0.5`;
    nginx runs the generated locations include in our own server with `listen ...
    backlog=4096`, `worker_connections 8192`. Per repeat: the model is stopped via the admin
    API, then the herd; its record file must show exactly one start, every answer must be
    200 from that one process. The daemon's peak RSS is VmHWM (/proc/PID/status) after all
    repeats. The host's TcpExt ListenOverflows/ListenDrops (/proc/net/netstat) are read
    around the herds: a non-zero delta means some SYNs were dropped and retried by the
    client's kernel (latency, not errors)."""
    fig = "herd"
    n, repeats = 1000, (1 if settings.quick else 3)
    tmp = fresh_dir(settings.out / "herd")
    record = tmp / "records.jsonl"
    port = free_port()
    model = {**fake_model(port, "--listen-delay", "0.5", record=record), "startup_timeout": 30}
    s = HerdStack(tmp, {"m": model})
    results: list[HerdResult] = []
    starts: list[int] = []
    peaks: list[dict[str, int]] = []
    try:
        with s:
            assert s.daemon is not None
            daemon = s.daemon.pid
            rss_idle = proc_status_kb(daemon, "VmRSS")
            overflow0 = listen_counters()
            for r in range(repeats):
                queues = AcceptQueues({"nginx": s.nginx_port, "daemon": s.daemon_port,
                                       "model": port})
                if r:
                    stop = s.direct("POST", "/_ms/models/m/stop")
                    if stop.status != 200:
                        raise RuntimeError(f"stop: {stop.status} {stop.body!r}")
                    wait_for(lambda: not port_open(port), 10, "the model to stop")
                    time.sleep(0.5)
                before = len(starts_of(record))
                with queues:
                    res = herd_requests(s.nginx_port, n)
                after = len(starts_of(record))
                results.append(res)
                starts.append(after - before)
                peaks.append(queues.peak)
                print(f"  herd {r + 1}/{repeats}: {res.statuses}, {len(res.errors)} errors, "
                      f"{after - before} start(s), wall {res.wall:.2f}s, "
                      f"p50 {ms(percentile(res.latencies, 50))}", file=sys.stderr)
                for e in res.errors[:5]:
                    print(f"    {e}", file=sys.stderr)
            overflow1 = listen_counters()
            hwm = proc_status_kb(daemon, "VmHWM")
            rss_after = proc_status_kb(daemon, "VmRSS")
            fds_after = len(os.listdir(f"/proc/{daemon}/fd"))
    finally:
        s.close()
        kill_recorded(record)
    errors = sum(n - r.statuses.get(200, 0) for r in results)
    one_pid = all(len(r.pids) == 1 for r in results)
    lat = [x for r in results for x in r.latencies]
    return [
        Row(fig, f"starts per herd of {n} ({repeats} herds)", ", ".join(map(str, starts)), "1 each",
            all(x == 1 for x in starts), note="fakemodel record file"),
        Row(fig, "errors (non-200 + client exceptions)", str(errors), "0", errors == 0,
            note="; ".join(e for r in results for e in r.errors[:3])[:300]),
        Row(fig, "all 200s answered by the one started process", "yes" if one_pid else "no",
            ok=one_pid),
        Row(fig, "daemon peak RSS (VmHWM)", mb(hwm), "≤ 150 MB", hwm <= 150 * 1024,
            note=f"RSS idle before {mb(rss_idle)}, after the herds {mb(rss_after)}; "
                 f"{fds_after} open fds after"),
        Row(fig, "client latency, all herds", dist_ms(lat),
            note="includes the model's 0.5 s listen delay"),
        Row(fig, "herd wall time (gate -> last answer), per herd",
            ", ".join(f"{r.wall:.2f} s" for r in results)),
        Row(fig, "host ListenOverflows / ListenDrops during the herds",
            f"+{overflow1[0] - overflow0[0]} / +{overflow1[1] - overflow0[1]}",
            note=f"somaxconn {sysctl('net.core.somaxconn')}, tcp_max_syn_backlog "
                 f"{sysctl('net.ipv4.tcp_max_syn_backlog')}; daemon backlog 4096 (capped by "
                 "somaxconn), nginx backlog 4096, fakemodel listen(256)"),
        Row(fig, "peak accept queue per listener, per herd",
            "; ".join(", ".join(f"{k} {v}" for k, v in p.items()) for p in peaks),
            note="LISTEN rx_queue in /proc/net/tcp sampled every 5 ms (a lower bound); backlogs: "
                 "nginx 4096, daemon min(4096, somaxconn), model 256"),
    ]


if __name__ == "__main__":
    sys.exit(run_alone("herd"))
