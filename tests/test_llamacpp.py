"""A real model: SmolLM2-135M under llama.cpp's server (xllamacpp), cold, through nginx."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from tests.stack import free_port, stack

openai = pytest.importorskip("openai")
pytest.importorskip("xllamacpp")


def llama(port: int, *extra: str) -> dict[str, object]:
    return {
        "command": [sys.executable, "-m", "model_starter.llamacpp", "--model", "smollm2",
                    "--port", str(port), "--ctx", "1024", "--parallel", "1", *extra],
        "port": port,
        "startup_timeout": 120,
    }


def test_openai_stream_from_cold_smollm2(tmp_path: Path) -> None:
    """chat.completions.create(stream=True) against a cold model: tokens arrive one by one."""
    models = {"smollm2": llama(free_port(), "--alias", "smollm2"),
              "smollm2-embed": llama(free_port(), "--alias", "smollm2-embed", "--embedding")}
    with stack(tmp_path, models) as s:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{s.nginx_port}/smollm2/v1",
                               api_key="unused", timeout=120)
        stream = client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "Count from one to twenty in words."}],
            max_tokens=48, temperature=0, stream=True,
        )
        arrivals = []
        text = ""
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic())
                text += chunk.choices[0].delta.content
        assert len(arrivals) >= 10, text
        assert arrivals[-1] - arrivals[0] > 0.05  # spread out in time, not one buffered blob
        assert s.status()["smollm2"]["state"] == "ready"

        emb = openai.OpenAI(base_url=f"http://127.0.0.1:{s.nginx_port}/smollm2-embed/v1",
                            api_key="unused", timeout=120)
        vec = emb.embeddings.create(model="smollm2-embed", input="hello").data[0].embedding
        assert len(vec) == 576
        assert s.status()["smollm2"]["starts"] == 1


def test_smollm2_sleeps_and_wakes_itself(tmp_path: Path) -> None:
    """llama.cpp's own sleep (`--sleep-idle-seconds`, preset llamacpp), error_page mode: the
    engine unloads the model when idle, the daemon counts it asleep (same process); a request
    through nginx reaches the engine, which reloads and answers; the daemon counts it awake."""
    from tests.stack import request, wait_for

    port = free_port()
    # The runner from this checkout's sources (an installed package may predate the flag).
    here = {"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "daemon")}
    models = {"smollm2": {**llama(port, "--alias", "smollm2", "--sleep-idle-seconds", "2"),
                          "sleep": {"preset": "llamacpp", "after": 2}, "env": here}}
    with stack(tmp_path, models, extra={"release_grace": 0.2}) as s:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{s.nginx_port}/smollm2/v1",
                               api_key="unused", timeout=120)

        def ask() -> str:
            out = client.chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": "Name three colours."}],
                max_tokens=48, temperature=0)
            return out.choices[0].message.content or ""

        first = ask()
        pid = s.status()["smollm2"]["pid"]
        # (Not polling the port meanwhile: any connection to it is activity for the daemon.)
        wait_for(lambda: s.status()["smollm2"]["state"] == "sleeping", 30, "the daemon's sleep")
        wait_for(lambda: request(port, "GET", "/props").json().get("is_sleeping") is True, 10,
                 "the engine's own sleep")
        assert s.status()["smollm2"]["pid"] == pid
        assert ask() == first  # the engine reloaded itself; same greedy answer
        log = tmp_path / "daemon.log"
        wait_for(lambda: "model=smollm2 state waking -> ready" in log.read_text(), 30,
                 "the daemon to count the engine awake")
        assert s.status()["smollm2"]["pid"] == pid and s.status()["smollm2"]["starts"] == 1
