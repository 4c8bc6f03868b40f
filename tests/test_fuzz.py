"""Bad input, generated: never a 500, never a traceback, never a start of anything unknown."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_starter.config import Config, ConfigError, parse_config, schema
from tests.stack import Stack, fake_model, free_port, kill_recorded, starts

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
                               "X-Big: " + "a" * 20000 + "\r\n"]),
       via_nginx=st.booleans())
def test_routes_never_500(daemon: tuple[Stack, Path], method: str, path: str, header: str,
                          via_nginx: bool) -> None:
    """Any method, path and header: a clear status, JSON errors, no traceback."""
    s, record = daemon
    port = s.nginx_port if via_nginx else s.daemon_port
    # CR/LF would end the request line: that is framing, not a path any client can send.
    target = path.replace("\r", "").replace("\n", "").encode("utf-8", "surrogatepass")
    data = (method.encode() + b" " + target + b" HTTP/1.1\r\nHost: fuzz\r\n" + header.encode()
            + b"Content-Length: 0\r\nConnection: close\r\n\r\n")
    status, body = raw_request(port, data)
    assert status != 500 and status < 600, (status, body[:300])
    assert b"Traceback" not in body
    if status >= 400 and status != 504 and body and body.lstrip().startswith(b"{"):
        assert "error" in json.loads(body)
    started_ports = {r["port"] for r in starts(record)}
    assert started_ports <= {s.models["m"]["port"]}
    assert {m["name"] for m in s.direct("GET", "/_ms/status").json()["models"]} == {"m"}
