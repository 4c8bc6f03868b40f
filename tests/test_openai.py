"""One OpenAI-compatible endpoint (/v1/, routed by the body's `model` inside nginx with njs)
and the KServe V2 paths (/v2/models/NAME/...): real nginx + njs, real daemon, real models."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from model_starter import nginx_openai
from model_starter.config import ConfigError, parse_config
from model_starter.nginx import render
from model_starter.nginx_openai import njs_note
from tests import mlserver
from tests.stack import NJS, ROOT, Response, Stack, fake_model, free_port, stack, starts

pytestmark = pytest.mark.skipif(NJS is None, reason="nginx's njs module is not installed "
                                "(libnginx-mod-http-js): run `bash scripts/install.sh`")
openai = pytest.importorskip("openai")

JSON = {"Content-Type": "application/json"}


def post(s: Stack, doc: Any, path: str = "/v1/chat/completions", **kw: Any) -> Response:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return s.call("POST", path, body=body, headers={**JSON, **kw.pop("headers", {})}, **kw)


def assert_openai_error(resp: Response, status: int, code: str | None) -> dict[str, Any]:
    """OpenAI's shape: {"error": {"message", "type", "param", "code"}}, JSON."""
    assert resp.status == status, resp
    assert resp.headers["content-type"].startswith("application/json"), resp
    err = resp.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}, err
    assert err["code"] == code and err["message"], err
    assert err["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    return dict(err)


def bundled_models() -> dict[str, dict[str, Any]]:
    """config.yaml's two SmolLM2 models (chat and embeddings), on free ports."""
    doc = yaml.safe_load((ROOT / "config.yaml").read_text())
    models: dict[str, dict[str, Any]] = doc["models"]
    for spec in models.values():
        port = free_port()
        argv = [str(a) for a in spec["command"]]
        argv[argv.index("--port") + 1] = str(port)
        spec.update(command=argv, port=port)
    return models


@pytest.mark.skipif(importlib.util.find_spec("xllamacpp") is None,
                    reason="xllamacpp is not installed")
def test_openai_sdk_one_base_url_for_both_bundled_models(tmp_path: Path) -> None:
    """models.list() names both models and their aliases; a streamed chat and embeddings,
    both cold at once: each model started once; the alias reaches the same process."""
    with stack(tmp_path, bundled_models(), extra={"resources": {"ram_gb": 1}}) as s:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{s.nginx_port}/v1",
                               api_key="unused", timeout=120, max_retries=0)
        ids = {m.id for m in client.models.list()}
        assert {"smollm2", "smollm2-embed", "smollm2-chat", "text-embedding-3-small"} <= ids
        assert client.models.retrieve("smollm2-chat").id == "smollm2-chat"
        assert all(m["state"] == "stopped" for m in s.status().values())  # listing starts nothing

        arrivals: list[float] = []
        text: list[str] = []
        vectors: list[list[float]] = []

        def chat() -> None:
            stream = client.chat.completions.create(
                model="smollm2",
                messages=[{"role": "user", "content": "Count from one to twenty in words."}],
                max_tokens=48, temperature=0, stream=True,
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    arrivals.append(time.monotonic())
                    text.append(chunk.choices[0].delta.content)

        def embed() -> None:
            vectors.append(client.embeddings.create(model="smollm2-embed",
                                                    input="hello").data[0].embedding)

        threads = [threading.Thread(target=chat), threading.Thread(target=embed)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
        assert len(arrivals) >= 10, ("".join(text), s.daemon_log()[-3000:])
        assert arrivals[-1] - arrivals[0] > 0.05  # token by token, not one buffered blob
        assert len(vectors) == 1 and len(vectors[0]) == 576
        status = s.status()
        assert status["smollm2"]["starts"] == status["smollm2-embed"]["starts"] == 1, status

        pids = {m: status[m]["pid"] for m in status}
        again = client.embeddings.create(model="text-embedding-3-small", input="hello")
        assert len(again.data[0].embedding) == 576
        reply = client.chat.completions.create(
            model="smollm2-chat", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        assert reply.choices[0].message.content is not None
        status = s.status()
        assert {m: status[m]["pid"] for m in status} == pids
        assert status["smollm2"]["starts"] == status["smollm2-embed"]["starts"] == 1


def test_body_routing_replays_5mb_and_aliases_reach_one_process(
        tmp_path: Path, record: Path) -> None:
    """A 5 MB JSON body after a cold start arrives intact at the URI the client used; an
    alias (any case) reaches the same PID; multipart bodies go by their `model` field."""
    hf = "Org/Model-7B:q4"  # an id like a Hugging Face repository's or Ollama's
    models = {"m": {**fake_model(free_port(), record=record), "aliases": ["m-alias", hf]},
              "other": fake_model(free_port(), record=record)}
    extra = {"resources": {"gpu": 2}}
    with stack(tmp_path, models, extra=extra) as s:
        doc = {"model": "m", "input": "x" * (5 * 1024 * 1024)}
        body = json.dumps(doc).encode()
        resp = post(s, body, "/v1/embeddings?api-version=1")
        assert resp.status == 200, resp
        echo = resp.json()
        assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
        assert echo["path"] == "/v1/embeddings?api-version=1" and echo["method"] == "POST"
        for name in ("m-alias", "M-ALIAS", "M", hf, hf.lower()):
            assert post(s, {"model": name}).json()["pid"] == echo["pid"]
        assert s.get(f"/v1/models/{hf}").json()["id"] == hf
        assert s.get("/v1/models/Org%2FModel-7B%3Aq4").json()["id"] == hf
        assert hf in [m["id"] for m in s.get("/v1/models").json()["data"]]
        assert s.get(f"/v2/models/{hf}/ready").json()["error"] == "unknown_model"  # /v1/ only
        form = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
                b"Content-Type: audio/wav\r\n\r\nRIFF\x00\xff model\r\n--XyZ\r\n"
                b"Content-Disposition: form-data; name=\"model\"\r\n\r\nother\r\n--XyZ--\r\n")
        resp = s.call("POST", "/v1/audio/transcriptions", body=form,
                      headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
        assert resp.status == 200, resp
        assert resp.json()["body_sha256"] == hashlib.sha256(form).hexdigest()
        assert resp.json()["pid"] != echo["pid"]
        # The V2 paths of a process model reach it with the same path, from cold too.
        s.direct("POST", "/_ms/models/other/stop")
        assert s.get("/v2/models/other/ready").json()["path"] == "/v2/models/other/ready"
        assert len(starts(record)) == 3
        # The prefix routes are unchanged.
        assert s.get("/m/v1/x?q=a%20b").json()["path"] == "/v1/x?q=a%20b"


def test_bad_requests_get_openai_errors_and_start_nothing(tmp_path: Path, record: Path) -> None:
    """Bad JSON, no model, an unknown model, a too large body: OpenAI-shaped, nothing starts."""
    models = {"m": fake_model(free_port(), record=record)}
    with stack(tmp_path, models, nginx_extra={"openai_max_body_size": "1m"}) as s:
        assert_openai_error(post(s, b"{not json"), 400, "invalid_json")
        assert_openai_error(post(s, {"messages": []}), 400, "missing_model")
        assert_openai_error(post(s, [1, 2]), 400, "missing_model")
        assert_openai_error(post(s, {"model": 7}), 400, "missing_model")
        assert_openai_error(s.get("/v1/chat/completions"), 400, "missing_model")
        err = assert_openai_error(post(s, {"model": "nope"}), 404, "model_not_found")
        assert "nope" in err["message"] and err["param"] == "model"
        assert_openai_error(post(s, {"model": "n" * 5000}), 404, "model_not_found")
        assert_openai_error(s.get("/v1/models/nope"), 404, "model_not_found")
        big = json.dumps({"model": "m", "input": "x" * (2 * 1024 * 1024)}).encode()
        assert_openai_error(post(s, big), 413, "request_too_large")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{s.nginx_port}/v1",
                               api_key="unused", max_retries=0)
        with pytest.raises(openai.NotFoundError) as exc:
            client.chat.completions.create(model="nope", messages=[])
        assert exc.value.code == "model_not_found"
        assert starts(record) == []
        assert s.status()["m"]["starts"] == 0
        resp = s.get("/v2/models/nope/infer")
        assert resp.status == 404 and resp.json()["error"] == "unknown_model"


def test_start_failure_and_daemon_down_are_openai_503s(tmp_path: Path, record: Path) -> None:
    """A model that cannot start and a daemon that is down: 503 + Retry-After, OpenAI's shape;
    the same failures on the prefix route keep the daemon's own shape."""
    models = {"bad": fake_model(free_port(), "--exit-at-once", "3", record=record),
              "m": fake_model(free_port(), record=record)}
    with stack(tmp_path, models, extra={"resources": {"gpu": 2}}) as s:
        resp = post(s, {"model": "bad"})
        err = assert_openai_error(resp, 503, "exited")
        # the reason and a request id; the model's log lines stay with the admin API
        assert resp.headers["retry-after"] and "log_tail" not in err and err["request_id"]
        assert s.call("POST", "/bad/v1/chat/completions", body=b"{}").json()["error"] == "exited"
        s.stop_daemon()
        resp = post(s, {"model": "m"})
        assert_openai_error(resp, 503, "starter_unavailable")
        assert resp.headers["retry-after"] == "5"
        assert s.get("/v1/models").status == 200  # nginx answers the list by itself


@pytest.mark.parametrize("style", ["locations", "conf.d"])
def test_auth_request_mode_and_include_styles(tmp_path: Path, record: Path, style: str) -> None:
    """auth_request models route by body too; errors keep OpenAI's shape; both includes."""
    models = {"m": {**fake_model(free_port(), record=record), "mode": "auth_request"},
              "bad": {**fake_model(free_port(), "--exit-at-once", "3", record=record),
                      "mode": "auth_request"}}
    with stack(tmp_path, models, style=style, extra={"resources": {"gpu": 2}}) as s:
        resp = post(s, {"model": "m", "n": 1}, "/v1/completions")
        assert resp.status == 200, resp
        assert resp.json()["path"] == "/v1/completions"
        assert post(s, {"model": "m"}).json()["pid"] == resp.json()["pid"]
        resp = post(s, {"model": "bad"})
        assert_openai_error(resp, 503, "exited")
        assert [m["id"] for m in s.get("/v1/models").json()["data"]] == ["m", "bad"]
        assert len(starts(record, models["m"]["port"])) == 1


@pytest.mark.skipif(not mlserver.available(), reason=mlserver.SKIP_REASON)
def test_v2_paths_from_cold_with_an_alias(tmp_path: Path) -> None:
    """/v2/models/NAME/infer from cold returns a prediction (real MLServer); an alias of a V2
    model reaches it under its server name; an unknown name is a JSON 404."""
    from tests.test_v2 import v2_config

    models, extra, _ = v2_config(tmp_path, ["iris"], aliases=["flower"])
    with stack(tmp_path, models, extra=extra) as s:
        body = json.dumps(mlserver.infer_body()).encode()
        resp = s.call("POST", "/v2/models/iris/infer", body=body, headers=JSON)
        assert resp.status == 200, (resp, s.daemon_log()[-2000:])
        assert mlserver.predictions(resp.json()) == [mlserver.IRIS_PREDICTION]
        resp = s.call("POST", "/v2/models/flower/infer", body=body, headers=JSON)
        assert mlserver.predictions(resp.json()) == [mlserver.IRIS_PREDICTION]
        assert s.get("/v2/models/flower").json()["name"] == "iris"
        assert s.get("/v2/models/iris/ready").status == 200
        resp = s.call("POST", "/v2/models/secret/infer", body=body, headers=JSON)
        assert resp.status == 404 and resp.json()["error"] == "unknown_model"
        assert s.get("/v1/models").json()["data"] == []  # V2 models do not speak OpenAI
        assert s.status()["iris"]["starts"] == 1


def config_text(models: str, nginx: str = "") -> str:
    return f"nginx: {{{nginx}}}\nmodels:\n{models}"


def test_aliases_are_unique_names_with_file_and_line() -> None:
    """An alias that clashes with a name or another alias (any case) is a config error."""
    text = config_text(
        "  a: {command: [x], port: 1, aliases: [b, x1]}\n"
        "  b: {command: [x], port: 2, aliases: [X1, 'bad name']}\n"
        "  v1: {command: [x], port: 3}\n"
        "  v2: {command: [x], port: 4}\n")
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "cfg.yaml")
    problems = "\n".join(exc.value.problems)
    assert "cfg.yaml:3: models.a.aliases[0]: 'b' already names model 'b'" in problems
    assert "cfg.yaml:4: models.b.aliases[1]" in problems
    assert "cfg.yaml:5: models.v1: /v1/ is the path of the OpenAI endpoint" in problems
    assert "cfg.yaml:6: models.v2: /v2/ is the path of the KServe V2 routes" in problems
    ok = parse_config(config_text("  v1: {command: [x], port: 3, aliases: [c]}\n",
                                  "openai: false"))
    assert ok.models["v1"].aliases == ("c",)


@pytest.mark.parametrize(("alias", "ok"), [
    ("Qwen/Qwen2.5-7B-Instruct", True), ("llama3.1:8b", True), ("gpt-4o", True),
    ("org/m@v2+x", True), ("a/..b", True), ("x" * 128, True),
    ("a//b", False), ("a/", False), ("/a", False), ("../a", False), ("a/./b", False),
    ("a/..", False), (".a", False), ("a b", False), ("~a", False), ("a$b", False),
    ('a"b', False), ("a;b", False), ("x" * 129, False), ("", False),
])
def test_alias_rule(alias: str, ok: bool) -> None:
    """Aliases may be ids like a Hugging Face repository's or Ollama's, nothing nginx would
    read otherwise; a wrong one is reported with file and line."""
    text = config_text(f"  a: {{command: [x], port: 1, aliases: [{json.dumps(alias)}]}}\n")
    if ok:
        assert parse_config(text, "cfg.yaml").models["a"].aliases == (alias,)
        return
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "cfg.yaml")
    assert exc.value.problems[0].startswith("cfg.yaml:3: models.a.aliases[0]: expected a name")


def test_a_v2_models_aliases_follow_the_name_rule() -> None:
    """A `launcher: v2` model is reached by /v2/models/NAME only: `org/model` is refused."""
    text = config_text("  iris: {launcher: v2, aliases: [flower, org/iris]}\n")
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "cfg.yaml")
    assert exc.value.problems == [
        "cfg.yaml:3: models.iris.aliases[1]: a V2 model is reached by /v2/models/NAME only, "
        "so its aliases follow the model name rule [A-Za-z0-9][A-Za-z0-9._-]{0,63}"]


def test_without_njs_the_include_has_no_openai_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """nginx.openai: false, or auto on a machine without njs (with a note): no js directives,
    prefix routes and V2 paths as before, the default error locations."""
    models = "  m: {command: [x], port: 1, aliases: [n]}\n"
    assert njs_note(parse_config(config_text(models))) is None
    monkeypatch.setattr(nginx_openai, "NJS_DIRS", ())
    for nginx in ("openai: false", "openai: auto"):
        config = parse_config(config_text(models, nginx))
        text = render(config)
        assert "js_" not in text and "/v1/" not in text and "$ms_api" not in text
        assert "location /m/ {" in text and "location /v2/models/m/ {" in text
    assert "libnginx-mod-http-js" in (njs_note(config) or "")
    assert njs_note(parse_config(config_text(models, "openai: false"))) is None
    enabled = render(parse_config(config_text("  m: {command: [x], port: 1}\n",
                                              "openai: true")))
    assert "js_content ms_router.route;" in enabled and "error_page 502 = @ms_down$ms_api;" \
        in enabled


def test_prefix_route_sends_the_same_uri_hot_and_on_the_replay(
        tmp_path: Path, record: Path) -> None:
    """The hot path replaces the prefix natively, the replay strips it with a rewrite: the
    model sees the same URI either way, encoded characters and query strings included."""
    with stack(tmp_path, {"m": fake_model(free_port(), record=record)}) as s:
        for path in ("/a%2Fb/c%20d?q=a%20b&r=%2F", "/x//y/%C3%A9?", "", "?k=v"):
            s.direct("POST", "/_ms/models/m/stop")
            cold = s.call("POST", f"/m{path}", body=b"1")
            warm = s.call("POST", f"/m{path}", body=b"1")
            assert cold.status == warm.status == 200, (path, cold, warm)
            assert cold.json()["path"] == warm.json()["path"], path
        assert len(starts(record)) == 4
