"""The admin API is one blueprint behind one guard, at exactly the protocol's paths (the ones
the CLI calls)."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

from model_starter.app import create_app
from model_starter.config import parse_config
from model_starter.dashboard import PATHS as DASHBOARD_PATHS
from model_starter.dashboard import public_asset
from model_starter.protocol import ADMIN_PREFIX, MODEL_HEADER, VIA_HEADER, AdminPath, admin_path
from tests.stack import fake_model, free_port, stack, starts

GET_PATHS = ("status", "metrics", "events", "logs")


def _calls() -> list[tuple[str, str]]:
    """(method, path) of every admin call, as the protocol (and so the CLI) spells it, and
    every path of the dashboard page."""
    return [("GET" if what in GET_PATHS else "POST", admin_path(what, "m"))
            for what in get_args(AdminPath)] + [("GET", path) for path in DASHBOARD_PATHS]


def test_admin_paths_are_the_blueprint_routes() -> None:
    """Every protocol admin path resolves to a route of the admin blueprint, and the
    blueprint has no route the protocol does not name."""
    config = parse_config(f"models:\n  m:\n    command: [x]\n    port: {free_port()}\n")
    app = create_app(config, name="admin_paths")
    app.router.finalize()
    reached = {app.router.get(path, method, None)[0].name for method, path in _calls()}
    blueprint = {r.name for r in app.router.routes if r.path.startswith(ADMIN_PREFIX[1:])}
    assert all(name.startswith("admin_paths.admin.") for name in reached)
    assert reached == blueprint


def test_the_guard_refuses_every_admin_route(tmp_path: Path, record: Path) -> None:
    """Proxied (through nginx, or carrying our headers): 404; without the token: 401; the
    guard answers before any handler runs, so nothing starts."""
    models = {"m": fake_model(free_port(), record=record)}
    with stack(tmp_path, models, extra={"admin_token": "s3cret"}) as s:
        token = {"Authorization": "Bearer s3cret"}
        for method, path in _calls():
            assert s.call(method, path).status == 404, path
            # The dashboard page's own files hold no data: loadable before the token.
            assert s.direct(method, path).status == (200 if public_asset(path) else 401), path
            for header in (VIA_HEADER, MODEL_HEADER):
                resp = s.direct(method, path, headers={**token, header: "x"})
                assert (resp.status, resp.json()["error"]) == (404, "not_found"), path
        assert starts(record) == []
        assert s.direct("GET", admin_path("status"), headers=token).status == 200
