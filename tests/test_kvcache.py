"""Lifecycle hooks and KV-cache persistence: a fake model for hooks, real llama.cpp for KV."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

from model_starter.config import ConfigError, parse_config
from model_starter.kvcache import KvStore
from model_starter.lifecycle_spec import KV_DIR_ENV, ArgvAction, HttpAction, KvCache
from tests.stack import Stack, fake_model, free_port, stack, starts, wait_for


def status_of(s: Stack, name: str) -> dict[str, Any]:
    return s.status()[name]


# --- config -----------------------------------------------------------------------------


def test_hooks_and_kv_cache_parse(tmp_path: Path) -> None:
    cfg = parse_config(f"""
state_dir: {tmp_path}/state
defaults:
  hooks:
    before_stop:
      - run: [echo, bye]
        timeout: 3
models:
  a:
    command: [x]
    port: 9001
    kv_cache: persist
    hooks:
      on_ready:
        - http: /warm
        - http: {{method: put, path: /w, body: {{"n": 1}}}}
  b:
    command: [y, --model, weights.gguf]
    port: 9002
    kv_cache: {{min_tokens: 10, budget_mb: 1.5, save_timeout: 2}}
""")
    a, b = cfg.models["a"], cfg.models["b"]
    assert a.hooks.on_ready == (HttpAction("/warm"), HttpAction("/w", "PUT", {"n": 1}))
    assert a.hooks.before_stop == ()  # a model's hooks replace the defaults' as a whole
    assert b.hooks.before_stop == (ArgvAction(("echo", "bye"), 3.0),)
    assert a.kv_cache == KvCache()
    assert b.kv_cache == KvCache(min_tokens=10, budget_mb=1.5, save_timeout=2.0)
    assert a.env[KV_DIR_ENV] == f"{tmp_path}/state/kv/a/active/"
    base = 2 * 600 + 10 + 10  # two starts, a stop, margin
    assert a.hold_timeout == base + 2 * 10 + 10 + 10  # on_ready hooks, restore, save
    assert b.hold_timeout == base + 3 + 10 + 2  # before_stop hook, restore, save


def test_hooks_and_kv_cache_problems_name_their_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("""
models:
  a:
    command: [x]
    port: 9001
    kv_cache: forever
    hooks:
      on_ready:
        - http: no-slash
        - run: []
        - {http: /x, run: [y]}
      after: []
  v:
    launcher: v2
    kv_cache: persist
""")
    text = "\n".join(info.value.problems)
    for expected in (":6: models.a.kv_cache: expected 'persist'",
                     ":9: models.a.hooks.on_ready[0].http.path",
                     ":10: models.a.hooks.on_ready[1].run",
                     ":11: models.a.hooks.on_ready[2]: an action has exactly one",
                     ":12: models.a.hooks.after: unknown key",
                     "models.v.kv_cache: only for launcher: process"):
        assert expected in text, text


# --- the file store ---------------------------------------------------------------------


def test_store_keeps_the_budget_and_removes_stale_keys(tmp_path: Path) -> None:
    store = KvStore(tmp_path / "kv" / "m" / "active")
    assert store.activate("old") == []
    (store.root / "old" / "1-slot0.bin").write_bytes(b"x" * 10)
    assert store.activate("new") == ["old"]  # another command or weights: never restored
    assert not (store.root / "old").exists()
    assert store.active.resolve() == (store.root / "new").resolve()
    for i, size in enumerate((400, 300, 200, 100)):  # written oldest first
        (store.active / f"{i:015d}-slot0.bin").write_bytes(b"x" * size)
    assert store.prune("new", keep=3, budget_bytes=10**6) == [f"{0:015d}-slot0.bin"]
    assert store.prune("new", keep=3, budget_bytes=350) == [f"{1:015d}-slot0.bin"]
    assert [p.name for p in store.files("new")] == [f"{3:015d}-slot0.bin", f"{2:015d}-slot0.bin"]
    assert store.size("new") == 300
    assert store.prune("new", keep=3, budget_bytes=50) == [f"{2:015d}-slot0.bin",
                                                           f"{3:015d}-slot0.bin"]
    assert store.files("new") == []


# --- hooks ------------------------------------------------------------------------------


def test_failing_hooks_keep_the_held_request_and_stop_stays_bounded(
    tmp_path: Path, record: Path
) -> None:
    port = free_port()
    mark = tmp_path / "ran"
    writer = [sys.executable, "-c",
              "import os, sys; open(sys.argv[1], 'a').write(os.environ['MODEL_STARTER_PHASE'] "
              "+ ' ' + os.environ['MODEL_STARTER_PORT'] + chr(10))", str(mark)]
    model = {**fake_model(port, record=record), "hooks": {
        "on_ready": [{"http": "/status/500"},
                     {"http": {"method": "GET", "path": "/slow?seconds=30"}, "timeout": 0.5},
                     {"run": ["false"]},
                     {"run": ["no-such-program-anywhere"]},
                     {"run": ["sleep", "30"], "timeout": 0.5},
                     {"run": writer}],
        "before_stop": [{"run": ["sleep", "30"], "timeout": 1}, {"run": writer}],
    }}
    with stack(tmp_path, {"m": model}) as s:
        r = s.get("/m/echo", timeout=60)
        assert r.status == 200, r.body  # held through five failing hooks, then released
        life = status_of(s, "m")["lifecycle"]
        assert life["hook_failures"] == 5
        assert [h["ok"] for h in life["hooks"]] == [False] * 5 + [True]
        assert "HTTP 500" in life["hooks"][0]["detail"]
        assert "timed out" in life["hooks"][1]["detail"]
        assert "exit status 1" in life["hooks"][2]["detail"]
        assert "timed out" in life["hooks"][4]["detail"]
        assert len(starts(record, port)) == 1

        stopped = s.direct("POST", "/_ms/models/m/stop", timeout=30)
        assert stopped.status == 200
        assert stopped.json()["state"] == "stopped"  # the hung hook did not hold the stop
        life = stopped.json()["lifecycle"]
        assert life["hooks"][-2]["phase"] == "before_stop"
        assert "timed out" in life["hooks"][-2]["detail"]
        assert mark.read_text().split() == ["on_ready", str(port), "before_stop", str(port)]


# --- real llama.cpp ---------------------------------------------------------------------

CTX = 5632


def long_prompt(sentences: int) -> str:
    colors = ("red", "green", "blue", "amber", "violet", "grey", "white")
    animals = ("otter", "heron", "badger", "lynx", "falcon", "marten", "newt", "ibis")
    cities = ("Lyon", "Quito", "Osaka", "Perth", "Tromso", "Accra", "Cusco", "Hanoi", "Bergen")
    lines = [f"Fact {i}: the {colors[i % 7]} {animals[i % 8]} number {i} lives in "
             f"{cities[i % 9]} and eats {i * 7 % 13} fish a day." for i in range(sentences)]
    return "Read these facts.\n" + "\n".join(lines) + "\nWhich city does the otter number 8 live in?"


def llama_model(port: int, *extra: str) -> dict[str, Any]:
    return {
        "command": [sys.executable, "-m", "model_starter.llamacpp", "--model", "smollm2",
                    "--port", str(port), "--ctx", str(CTX), "--parallel", "1", *extra],
        "port": port,
        "startup_timeout": 300,
        "idle_timeout": 0,
        "kv_cache": {"min_tokens": 1000, "budget_mb": 200, "save_timeout": 60,
                     "restore_timeout": 60},
    }


def first_token(s: Stack, prompt: str) -> tuple[float, str, int]:
    """Seconds to the first streamed token through nginx, the greedy answer, prompt tokens."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{s.nginx_port}/smollm2/v1",
                           api_key="unused", timeout=1200)
    t0 = time.monotonic()
    stream = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": prompt}], max_tokens=8,
        temperature=0, seed=42, stream=True, stream_options={"include_usage": True},
    )
    ttft, text, tokens = None, "", 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            ttft = time.monotonic() - t0 if ttft is None else ttft
            text += chunk.choices[0].delta.content
        if chunk.usage is not None:
            tokens = chunk.usage.prompt_tokens
    assert ttft is not None, "no token streamed"
    return ttft, text, tokens


def test_kv_cache_survives_a_stop_and_a_changed_command_does_not_restore(tmp_path: Path) -> None:
    pytest.importorskip("xllamacpp")
    port = free_port()
    with stack(tmp_path, {"smollm2": llama_model(port)}) as s:
        kv_root = tmp_path / "state" / "kv" / "smollm2"
        assert s.direct("POST", "/_ms/models/smollm2/start", timeout=600).status == 200
        prompt = long_prompt(160)  # ~27.6 tokens a line
        cold, text, tokens = first_token(s, prompt)  # the model runs: this is the prefill
        assert tokens >= 4000, tokens

        stopped = s.direct("POST", "/_ms/models/smollm2/stop", timeout=300).json()
        saved = stopped["lifecycle"]["kv_cache"]["last_save"]
        assert saved["ok"] and len(saved["files"]) == 1, saved
        key = saved["key"]
        files = list((kv_root / key).glob("*.bin"))
        assert len(files) == 1
        assert sum(f.stat().st_size for f in files) <= 200 * 1024 * 1024  # the budget

        warm, again, _ = first_token(s, prompt)  # held, started, restored, released
        restored = status_of(s, "smollm2")["lifecycle"]["kv_cache"]["last_restore"]
        assert restored["ok"] and restored["key"] == key and restored["files"], restored
        assert again == text  # greedy: the restored cache answers as the prefill did
        assert cold / warm >= 10, f"prefill {cold:.2f}s, after restore {warm:.2f}s"
        assert status_of(s, "smollm2")["starts"] == 2

        # Another command: the old files are stale, removed and never restored.
        s.models["smollm2"] = llama_model(port, "--alias", "smollm2")
        s.write_config()
        assert s.direct("POST", "/_ms/reload").json()["ok"]
        wait_for(lambda: status_of(s, "smollm2")["state"] == "stopped", 300, "the reload stop")
        first_token(s, "Say hello.")
        life = status_of(s, "smollm2")["lifecycle"]["kv_cache"]
        assert life["key"] != key
        assert life["last_restore"]["files"] == [], life
        assert key in life["last_restore"]["removed"], life
        assert not (kv_root / key).exists()
        assert (kv_root / "active").resolve() == (kv_root / life["key"]).resolve()
