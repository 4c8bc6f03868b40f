"""Figure: time to first token after a stop/start, with and without KV-cache persistence.

    .venv/bin/python bench/fig_kvcache.py [--sizes 1000 4000 7500]

Real llama.cpp (SmolLM2-135M via model_starter.llamacpp, one slot) behind the real daemon
and nginx. Per prompt size: two models on one config, `kv` (kv_cache: persist) and
`plain` (none). For each: started through the admin API, then

- kv:    a long prompt (prefill, the model already running), admin stop (timed: includes
         the save), the same prompt through nginx (start + restore + first token);
- plain: admin stop (timed: no save), the same prompt through nginx (start + prefill).

Prints a markdown table and writes it to bench/out/fig_kvcache.md. Everything binds
127.0.0.1; the stack stops its processes by PID.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.stack import Stack, free_port  # noqa: E402 - the repository root must be importable first

SENTENCE_TOKENS = 25.5  # SmolLM2 tokens per line below (measured)


def prompt(tokens: int) -> str:
    animals = ("otter", "heron", "badger", "lynx", "falcon", "marten", "newt", "ibis")
    cities = ("Lyon", "Quito", "Osaka", "Perth", "Tromso", "Accra", "Cusco", "Hanoi", "Bergen")
    lines = [f"Fact {i}: the {animals[i % 8]} number {i} lives in {cities[i % 9]} and eats "
             f"{i * 7 % 13} fish a day." for i in range(int(tokens / SENTENCE_TOKENS))]
    return "Read these facts.\n" + "\n".join(lines) + "\nWhich city does the otter number 8 live in?"


def model(port: int, ctx: int, kv: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "command": [sys.executable, "-m", "model_starter.llamacpp", "--model", "smollm2",
                    "--port", str(port), "--ctx", str(ctx), "--parallel", "1"],
        "port": port, "startup_timeout": 600, "idle_timeout": 0,
    }
    if kv:
        entry["kv_cache"] = {"min_tokens": 100, "save_timeout": 120, "restore_timeout": 120}
    return entry


def first_token(s: Stack, name: str, text: str) -> tuple[float, int, str]:
    """Seconds to the first streamed token through nginx, prompt tokens, the answer."""
    body = json.dumps({"messages": [{"role": "user", "content": text}], "max_tokens": 4,
                       "temperature": 0, "seed": 42, "stream": True,
                       "stream_options": {"include_usage": True}})
    conn = http.client.HTTPConnection("127.0.0.1", s.nginx_port, timeout=3600)
    t0 = time.monotonic()
    conn.request("POST", f"/{name}/v1/chat/completions", body=body,
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    ttft, tokens, answer = None, 0, ""
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: {"):
            continue
        chunk = json.loads(line[6:])
        content = (chunk.get("choices") or [{}])[0].get("delta", {}).get("content")
        if content:
            ttft = time.monotonic() - t0 if ttft is None else ttft
            answer += content
        if chunk.get("usage"):
            tokens = chunk["usage"]["prompt_tokens"]
    conn.close()
    assert ttft is not None
    return ttft, tokens, answer


def admin(s: Stack, name: str, action: str) -> tuple[float, dict[str, Any]]:
    t0 = time.monotonic()
    r = s.direct("POST", f"/_ms/models/{name}/{action}", timeout=3600)
    assert r.status == 200, r.body
    return time.monotonic() - t0, r.json()


def measure(size: int, tmp: Path) -> dict[str, Any]:
    ctx = min(int(size * 1.3) + 512, 8192)  # SmolLM2 was trained on 8192
    models = {"kv": model(free_port(), ctx, True), "plain": model(free_port(), ctx, False)}
    text = prompt(size)
    with Stack(tmp, models) as s:
        admin(s, "kv", "start")
        prefill, tokens, answer = first_token(s, "kv", text)
        stop_kv, status = admin(s, "kv", "stop")
        save = status["lifecycle"]["kv_cache"]["last_save"]
        kv_dir = tmp / "state" / "kv" / "kv" / save["key"]
        saved_mb = sum(p.stat().st_size for p in kv_dir.glob("*.bin")) / 1e6
        with_kv, _, answer_kv = first_token(s, "kv", text)
        st = s.status()["kv"]
        restore = st["lifecycle"]["kv_cache"]["last_restore"]
        admin(s, "kv", "stop")
        admin(s, "plain", "start")
        stop_plain, _ = admin(s, "plain", "stop")
        without, _, _ = first_token(s, "plain", text)
        start_plain = s.status()["plain"]["last_start_seconds"]
    return {"size": size, "tokens": tokens, "prefill": prefill, "with_kv": with_kv,
            "without": without, "stop_kv": stop_kv, "stop_plain": stop_plain,
            "save": save["seconds"], "restore": restore["seconds"], "saved_mb": saved_mb,
            "start_kv": st["last_start_seconds"], "start_plain": start_plain,
            "same_answer": answer == answer_kv}


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| prompt tokens | prefill (model running) | TTFT after stop/start, no persistence "
           "| TTFT after stop/start, persisted | speed-up | stop, no save | stop incl. save "
           "| save | restore | saved | same greedy answer |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(
            f"| {r['tokens']} | {r['prefill']:.2f} s | {r['without']:.2f} s | {r['with_kv']:.2f} s "
            f"| {r['without'] / r['with_kv']:.1f}x | {r['stop_plain'] * 1000:.0f} ms "
            f"| {r['stop_kv'] * 1000:.0f} ms | {r['save'] * 1000:.0f} ms "
            f"| {r['restore'] * 1000:.0f} ms | {r['saved_mb']:.0f} MB | {r['same_answer']} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 7500])
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="fig-kvcache-") as tmp:
            rows.append(measure(size, Path(tmp)))
        print(json.dumps(rows[-1]), flush=True)
    text = table(rows)
    print(text)
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "fig_kvcache.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
