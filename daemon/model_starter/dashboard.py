"""`GET /_ms/ui`: the operator's dashboard, one page of plain HTML/CSS/JS shipped in the
package (``model_starter/ui/``), no build step, nothing loaded from elsewhere.

The page's files hold no data, so a browser that cannot send the bearer token yet may load
them (the page then asks for the token); every other admin rule (loopback only without a
token, nothing through nginx) applies as to the API. The data comes from the admin API and
from `GET /_ms/ui/config.json` (the configured resource capacities), both fully guarded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sanic import Blueprint, HTTPResponse, Request, Sanic
from sanic import json as json_response

from model_starter.config import ADMIN_PREFIX
from model_starter.logs_api import Guard
from model_starter.pool import ModelPool
from model_starter.responses import error_response

__all__ = ["UI_DIR", "install_dashboard"]

UI_DIR = Path(__file__).parent / "ui"
CONTENT_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "logs.js": "text/javascript; charset=utf-8",
    "view.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}


def install_dashboard(
    app: Sanic[Any, Any] | Blueprint, pool: ModelPool, guard: Guard, prefix: str = ADMIN_PREFIX,
) -> None:
    """Register `GET {prefix}/ui`, its files and `{prefix}/ui/config.json`."""
    files = {name: (UI_DIR / name).read_bytes() for name in CONTENT_TYPES}

    def asset(request: Request, name: str) -> HTTPResponse:
        no = guard(request)
        if no is not None and no.status != 401:  # a missing token: the page asks for it
            return no
        if name not in files:
            return error_response(404, "not_found", f"no dashboard file named {name!r}")
        return HTTPResponse(files[name], content_type=CONTENT_TYPES[name], headers=HEADERS)

    @app.get(f"{prefix}/ui", name="dashboard_page", strict_slashes=True)
    async def page(request: Request) -> HTTPResponse:
        return asset(request, "index.html")

    @app.get(f"{prefix}/ui/", name="dashboard_page_slash", strict_slashes=True)
    async def page_slash(request: Request) -> HTTPResponse:
        return asset(request, "index.html")

    @app.get(f"{prefix}/ui/config.json", name="dashboard_config")
    async def config(request: Request) -> HTTPResponse:
        if (no := guard(request)) is not None:
            return no
        return json_response({"resources": dict(pool.config.resources)},
                             headers={"Cache-Control": "no-store"})

    @app.get(f"{prefix}/ui/<name>", name="dashboard_file")
    async def file(request: Request, name: str) -> HTTPResponse:
        return asset(request, name)
