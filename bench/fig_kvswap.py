"""Figure: two conversations on two models that do not fit together, with and without
KV-cache persistence.

    .venv/bin/python bench/fig_kvswap.py [--sizes 1000 4000 7500]

Real llama.cpp (SmolLM2-135M via model_starter.llamacpp, one slot each) behind the real
daemon and nginx. `resources: {gpu: 1}` and each model `requires: {gpu: 1}`: one runs at a
time, so every request for the other is a swap (an eviction, then a cold start). Per prompt
size and per setting (`kv_cache: persist` on both models, or none):

1. conversation A on model a (a's cold start and prefill);
2. conversation B on model b: a is evicted (persisted: its slot is saved), b starts;
3. A again on a: b is evicted, a starts (persisted: its slot is restored) — time to first
   token of the return;
4. B again on b: the same for b.

Reported: the time to first token of each return, with and without persistence, the speed-up,
each model's eviction (its stop, incl. the save) and the greedy answers compared. Prints a
markdown table and writes it to bench/out/fig_kvswap.md. Everything binds 127.0.0.1; the
stack stops its processes by PID.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.fig_kvcache import first_token, model, prompt  # noqa: E402 - root importable first
from bench.fig_swap import EventReader  # noqa: E402
from tests.stack import Stack, free_port  # noqa: E402


def _evictions(events: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Each model's stops by eviction: seconds from its stopping to its stopped event."""
    out: dict[str, list[float]] = {"a": [], "b": []}
    began: dict[str, float] = {}
    for e in events:
        name = e.get("model")
        if name not in out:
            continue
        if e.get("event") == "state" and e.get("new") == "stopping":
            began[name] = e["time"]
        elif e.get("event") == "stopped" and e.get("reason") == "evicted" and name in began:
            out[name].append(e["time"] - began.pop(name))
    return out


def measure(size: int, kv: bool, tmp: Path) -> dict[str, Any]:
    ctx = min(int(size * 1.3) + 512, 8192)  # SmolLM2 was trained on 8192
    models = {name: {**model(free_port(), ctx, kv), "requires": {"gpu": 1}} for name in "ab"}
    text_a, text_b = prompt(size), prompt(size).replace("otter", "heron")
    with Stack(tmp, models, extra={"resources": {"gpu": 1}}) as s:
        reader = EventReader(s.daemon_port)
        try:
            first_a, tokens, answer_a = first_token(s, "a", text_a)
            first_b, _, answer_b = first_token(s, "b", text_b)
            back_a, _, again_a = first_token(s, "a", text_a)
            back_b, _, again_b = first_token(s, "b", text_b)
        finally:
            reader.close()
        evicted = _evictions(reader.events)
    return {"size": size, "kv": kv, "tokens": tokens, "first_a": first_a, "first_b": first_b,
            "back_a": back_a, "back_b": back_b, "evict_a": evicted["a"],
            "evict_b": evicted["b"], "same": answer_a == again_a and answer_b == again_b}


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| prompt tokens | return to A: no persistence → persisted | return to B: no "
           "persistence → persisted | eviction (stop) no save → with save | same greedy answers |",
           "|---|---|---|---|---|"]
    by_size: dict[int, dict[bool, dict[str, Any]]] = {}
    for r in rows:
        by_size.setdefault(r["size"], {})[r["kv"]] = r
    for pair in by_size.values():
        plain, kv = pair.get(False), pair.get(True)
        if plain is None or kv is None:
            continue

        def back(key: str, plain: dict[str, Any] = plain, kv: dict[str, Any] = kv) -> str:
            return (f"{plain[key]:.2f} s → {kv[key]:.2f} s "
                    f"({plain[key] / kv[key]:.1f}x)")

        def stops(r: dict[str, Any]) -> str:
            all_ = r["evict_a"] + r["evict_b"]
            return f"{1000 * max(all_):.0f} ms" if all_ else "-"

        out.append(f"| {kv['tokens']:,} | {back('back_a')} | {back('back_b')} "
                   f"| {stops(plain)} → {stops(kv)} | {plain['same'] and kv['same']} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 7500])
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        for kv in (False, True):
            with tempfile.TemporaryDirectory(prefix="fig-kvswap-") as tmp:
                rows.append(measure(size, kv, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    text = table(rows)
    print(text)
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "fig_kvswap.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
