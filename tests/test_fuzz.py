"""Bad input, generated: never a 500, never a traceback, never a start of anything unknown."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from model_starter.config import Config, ConfigError, parse_config, schema
from model_starter.nginx import render
from model_starter.protocol import per_model_activity
from tests.stack import NGINX, Stack, fake_model, free_port, kill_recorded, nginx_conf, starts

METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
MODEL_KEYS = sorted(schema.MODEL_KEYS)  # every key the schema declares
TOP_KEYS = sorted(schema.TOP_KEYS)

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=False) | st.text(max_size=20))
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)


def _parse(doc: Any) -> Config | None:
    try:
        return parse_config(yaml.safe_dump(doc), "fuzz.yaml", environ={})
    except ConfigError as exc:
        assert exc.problems and all(p.startswith("fuzz.yaml:") for p in exc.problems)
        return None


@settings(max_examples=300, deadline=None)
@given(documents)
def test_config_loader_random_documents(doc: Any) -> None:
    """Any YAML document is a Config or a ConfigError with file:line, nothing else."""
    _parse(doc)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(
    st.sampled_from(TOP_KEYS),
    documents,
    max_size=5,
).flatmap(lambda top: st.dictionaries(
    st.text(max_size=12), st.dictionaries(st.sampled_from(MODEL_KEYS), documents, max_size=6),
    max_size=3).map(lambda models: {**top, "models": models})))
def test_config_loader_wrong_types_in_known_keys(doc: dict[str, Any]) -> None:
    """Known keys with wrong types are reported, never raised as anything but ConfigError."""
    _parse(doc)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_config_loader_random_text(text: str) -> None:
    """Random text is a Config or a ConfigError."""
    with contextlib.suppress(ConfigError):
        parse_config(text, "fuzz.yaml", environ={})


# -- the daemon's routes ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    record = tmp / "records.jsonl"
    s = Stack(tmp, {"m": fake_model(free_port(), record=record)})
    with s:
        yield s, record
    assert not kill_recorded(record)


def raw_request(port: int, data: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    reply = b"".join(chunks)
    if not reply:
        return 0, b""  # the server may just close on garbage; that is no 500
    status_line, _, rest = reply.partition(b"\r\n")
    status = int(status_line.split()[1])
    body = rest.partition(b"\r\n\r\n")[2]
    return status, body


path_parts = st.sampled_from(["m", "nope", "..", ".", "%2F", "%00", "_ms", "status", "",
                              "é", "☃", "a" * 300, "%2e%2e", "?", "#", ";", "%", "m%2Fx"])
paths = st.lists(path_parts | st.text(max_size=30), min_size=1, max_size=6).map(
    lambda parts: "/" + "/".join(parts))


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(METHODS), path=paths,
       header=st.sampled_from(["", "X-Model-Starter-Model: nope\r\n",
                               "X-Model-Starter-Model: m\r\n",
                               "X-Model-Starter-Upstream-Sent: 12, x\r\n",
                               "X-Model-Starter-Mode: weird\r\n",
                               "X-Model-Starter-Client: fuzz\r\n",
                               "X-Model-Starter-Client: fuzz\r\nOrigin: http://evil.example\r\n",
                               "X-Big: " + "a" * 20000 + "\r\n"]),
       via_nginx=st.booleans())
def test_routes_never_500(daemon: tuple[Stack, Path], method: str, path: str, header: str,
                          via_nginx: bool) -> None:
    """Any method, path and header: a clear status, JSON errors, no traceback."""
    s, record = daemon
    port = s.nginx_port if via_nginx else s.daemon_port
    # CR/LF would end the request line: that is framing, not a path any client can send.
    target = path.replace("\r", "").replace("\n", "").encode("utf-8", "surrogatepass")
    data = (method.encode() + b" " + target + b" HTTP/1.1\r\nHost: localhost\r\n" + header.encode()
            + b"Content-Length: 0\r\nConnection: close\r\n\r\n")
    status, body = raw_request(port, data)
    assert status != 500 and status < 600, (status, body[:300])
    assert b"Traceback" not in body
    if status >= 400 and status != 504 and body and body.lstrip().startswith(b"{"):
        assert "error" in json.loads(body)
    started_ports = {r["port"] for r in starts(record)}
    assert started_ports <= {s.models["m"]["port"]}
    assert {m["name"] for m in s.direct("GET", "/_ms/status").json()["models"]} == {"m"}


# -- every config value that reaches nginx text ------------------------------------------------

FEED_KEY = "0123456789abcdef0123456789abcdef"
HOSTILE = ["x break; return 200 pwned; #", "foo\n", "a b", "a;b", "a{b", "a}b", "$host",
           "'q'", '"q"', "a#b", "x\nreturn 200 y;", "\\", "localhost\n", "-a", "a..b", ""]
nginx_chars = st.text("abz09.:-_[] ;{}#$'\"\n\\", min_size=1, max_size=16)
hostile = st.sampled_from(HOSTILE) | nginx_chars
VALID = {
    "name": st.sampled_from(["m", "a.b", "Z-9_x", "v1"]),
    "alias": st.sampled_from(["m", "Org/M-7B", "llama3.1:8b", "a@b+c"]),
    "host": st.sampled_from(["127.0.0.1", "::1", "localhost", "10.0.0.7", "example.com"]),
    "listen": st.sampled_from(["127.0.0.1:8000", "8000", "[::1]:8000 default_server",
                               "*:8000", "8000 reuseport backlog=511", "localhost:8000"]),
    "size": st.sampled_from(["1m", "100", "2g", "64K"]),
}
sources = st.sampled_from(["c.yaml", "a\nlocation / { return 200 x; }\n#.yaml", "é☃.yaml"])
FIELDS = ["model", "alias", "host", "v2_name", "model_size", "listen", "nginx.listen", "nginx.size",
          "inference.host", "$INFERENCE_SERVER_HOST"]


@st.composite
def nginx_configs(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, str], str]:
    """A config in which one value that reaches nginx text (or none) is hostile, the
    environment (`$INFERENCE_SERVER_HOST`) and the source name."""
    poison = draw(st.sampled_from([None, *FIELDS]))

    def value(field: str, kind: str) -> Any:
        return draw(hostile if field == poison and draw(st.booleans()) else
                    hostile | VALID[kind] if field == poison else VALID[kind])

    models: dict[str, Any] = {}
    for i in range(draw(st.integers(1, 3))):
        v2 = draw(st.booleans())
        spec: dict[str, Any] = ({"launcher": "v2"} if v2 else
                                {"command": ["x"], "port": 9001 + i, "host": value("host", "host")})
        if v2 and (poison == "v2_name" or draw(st.booleans())):
            spec["v2_name"] = value("v2_name", "name") + str(i)
        if draw(st.booleans()):
            spec["client_max_body_size"] = value("model_size", "size")
        if poison == "alias" or draw(st.booleans()):
            spec["aliases"] = [value("alias", "alias") + f"-alias{i}"]
        spec["mode"] = draw(st.sampled_from(["error_page", "auth_request"]))
        models[value("model", "name") + str(i)] = spec
    listen = (value("listen", "listen").split() or ["-"])[0]
    doc: dict[str, Any] = {"models": models, "listen": listen if ":" in listen else f"h:{listen}",
                           "state_dir": "/nonexistent-never-used",
                           "nginx": {"listen": value("nginx.listen", "listen"),
                                     "client_max_body_size": value("nginx.size", "size")}}
    if doc["listen"].startswith("*"):
        doc["listen"] = "127.0.0.1:8080"
    env: dict[str, str] = {}
    if draw(st.booleans()):
        doc["inference_server"] = {"host": value("inference.host", "host")}
    else:
        env["INFERENCE_SERVER_HOST"] = value("$INFERENCE_SERVER_HOST", "host")
    return doc, env, draw(sources)


def _statements(text: str) -> list[str]:
    """nginx's tokens, reduced to the structure: each directive's name, `{` and `}` (an
    entry of a `map` block, whose first word is data, counts as `<entry>`)."""
    out: list[str] = []
    blocks: list[str] = []
    start = True
    for m in re.finditer(r"#[^\n]*|'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[{};]|[^\s{};'\"#]+",
                         text):
        token = m.group()
        if token.startswith("#"):
            continue
        if token in "{};":
            if token == "{":
                blocks.append(out[-1] if out else "")
            elif token == "}":
                blocks.pop()
            if token != ";":
                out.append(token)
            start = True
        elif start:
            out.append("<entry>" if blocks and blocks[-1] == "map" else token)
            start = False
    return out


def _benign(doc: dict[str, Any], config: Config) -> dict[str, Any]:
    """The same config with every nginx-reaching value replaced by a plain one. Hosts keep
    their kind: on an IPv4 loopback address each V2 model gets its own `proxy_bind`, and
    each model's replays theirs."""
    def plain_host(host: str) -> str:
        return "127.0.0.1" if per_model_activity(host) else "localhost"

    models = {}
    for i, (name, spec) in enumerate(doc["models"].items()):
        plain = {k: v for k, v in spec.items() if k not in ("host", "v2_name", "aliases")}
        if "host" in spec:
            plain["host"] = plain_host(config.models[name].host)
        if "aliases" in spec:
            plain["aliases"] = [f"a{i}"]
        if "client_max_body_size" in plain:
            plain["client_max_body_size"] = "1m"
        if "v2_name" in spec:  # (the same as the name: fewer routes)
            plain["v2_name"] = f"m{i}" if spec["v2_name"] == name else f"v{i}"
        models[f"m{i}"] = plain
    nginx = {**doc["nginx"], "listen": "8000"}
    if "client_max_body_size" in nginx:
        nginx["client_max_body_size"] = "1m"
    return {**doc, "models": models, "listen": "127.0.0.1:8080", "nginx": nginx,
            "inference_server": {"host": plain_host(config.inference.host)}}


def _resolvable(config: Config) -> bool:
    """nginx -t resolves host names; only IP addresses and localhost are sure to resolve."""
    listen = config.nginx.listen.split()[0].rpartition(":")[0].strip("[]")
    hosts = [config.inference.host, config.listen_host, listen,
             *(m.host for m in config.models.values())]
    return all(h in ("", "*", "localhost") or re.fullmatch(r"[0-9.]+|[0-9a-f:]*:[0-9a-f:]*", h)
               for h in hosts)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=nginx_configs())
def test_generated_nginx_text_has_only_the_generators_directives(
    case: tuple[dict[str, Any], dict[str, str], str], tmp_path: Path,
) -> None:
    """Whatever the values: a ConfigError with file:line, or a config whose include has
    exactly the directives of the same config with plain values, and passes `nginx -t`."""
    doc, env, source = case
    try:
        config = parse_config(yaml.safe_dump(doc, sort_keys=False), source, environ=env)
    except ConfigError as exc:
        assert exc.problems and all(p.startswith(f"{source}:") or p.startswith("$")
                                    for p in exc.problems), exc.problems
        event("refused")
        return
    text = render(config, FEED_KEY)
    plain = yaml.safe_dump(_benign(doc, config), sort_keys=False)
    baseline = render(parse_config(plain, "c.yaml", environ={}), FEED_KEY)
    assert _statements(text) == _statements(baseline)
    if not _resolvable(config):
        event("accepted; names not resolvable, no nginx -t")
        return
    event("accepted; nginx -t")
    (tmp_path / "ms.conf").write_text(text)
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_conf(tmp_path, f"include {tmp_path / 'ms.conf'};"))
    result = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c", str(conf)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, (result.stderr, text)
