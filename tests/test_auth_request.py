"""auth_request mode through real nginx: 204 from memory, JSON errors restored."""

from __future__ import annotations

from pathlib import Path

from tests.stack import fake_model, free_port, stack, starts


def test_auth_request_mode_starts_and_allows(tmp_path: Path, record: Path) -> None:
    """Cold: the auth call starts the model, then the request goes through; warm: same."""
    models = {"m": {**fake_model(free_port(), record=record), "mode": "auth_request"}}
    with stack(tmp_path, models, extra={"resources": {"gpu": 1}}) as s:
        cold = s.call("POST", "/m/v1/x?q=1", body=b"abc")
        assert cold.status == 200, cold
        assert cold.json()["path"] == "/v1/x?q=1" and cold.json()["body_len"] == 3
        warm = s.call("PUT", "/m/v1/y", body=b"z")
        assert warm.status == 200 and warm.json()["method"] == "PUT"
        assert s.get("/m").json()["path"] == "/"
        assert s.get("/m/status/504").status == 504  # the model's own answer
        assert len(starts(record)) == 1
        assert s.direct("GET", "/m/x", headers={"X-Model-Starter-Mode": "auth"}).status == 204


def test_auth_request_errors_are_json(tmp_path: Path, record: Path) -> None:
    """A failed start is a JSON 503 with Retry-After; the daemon down is a JSON 503 too."""
    models = {"bad": {**fake_model(free_port(), "--exit-at-once", "3", record=record),
                      "mode": "auth_request"}}
    with stack(tmp_path, models) as s:
        resp = s.get("/bad/x")
        assert resp.status == 503, resp
        assert resp.json()["error"] == "exited"
        assert resp.headers["retry-after"] == "5"
        s.stop_daemon()
        resp = s.get("/bad/x")
        assert resp.status == 503
        assert resp.json()["error"] == "starter_unavailable"
        assert resp.headers["retry-after"] == "5"
