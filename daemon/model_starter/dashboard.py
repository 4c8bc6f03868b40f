"""`GET /_ms/ui`: the operator's dashboard, one page of plain HTML/CSS/JS shipped in the
package (``model_starter/ui/``), no build step, nothing loaded from elsewhere.

The routes live on the admin blueprint, behind its one guard. The page's files hold no data,
so the guard lets a browser that cannot send the bearer token yet load them
(:func:`public_asset`); the page then asks for the token. Every other admin rule (loopback
only without a token, nothing through nginx) applies as to the API. The data comes from the
admin API and from `GET /_ms/ui/config.json` (the configured resource capacities).
"""

from __future__ import annotations

from pathlib import Path

from sanic import Blueprint, HTTPResponse, Request
from sanic import json as json_response

from model_starter.protocol import ADMIN_PREFIX
from model_starter.responses import error_response

__all__ = ["PATHS", "UI_DIR", "install_dashboard", "public_asset"]

UI_DIR = Path(__file__).parent / "ui"
_JS = "text/javascript; charset=utf-8"
CONTENT_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "app.js": _JS,
    "api.js": _JS,
    "logs.js": _JS,
    "view.js": _JS,
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
_PAGE = f"{ADMIN_PREFIX}/ui"
_PUBLIC = frozenset({_PAGE, f"{_PAGE}/", *(f"{_PAGE}/{name}" for name in CONTENT_TYPES)})
# Every path the dashboard answers (all GET): its page and files, and its data.
PATHS = (*sorted(_PUBLIC), f"{_PAGE}/config.json")


def public_asset(path: str) -> bool:
    """Whether `path` is one of the page's own files (no data: loadable before the token)."""
    return path in _PUBLIC


def install_dashboard(bp: Blueprint) -> None:
    """Register `GET <bp prefix>/ui`, its files and `/ui/config.json` on the admin blueprint."""
    files = {name: (UI_DIR / name).read_bytes() for name in CONTENT_TYPES}

    def asset(name: str) -> HTTPResponse:
        if name not in files:
            return error_response(404, "not_found", f"no dashboard file named {name!r}")
        return HTTPResponse(files[name], content_type=CONTENT_TYPES[name], headers=HEADERS)

    @bp.get("/ui", name="dashboard_page", strict_slashes=True)
    async def page(request: Request) -> HTTPResponse:
        return asset("index.html")

    @bp.get("/ui/", name="dashboard_page_slash", strict_slashes=True)
    async def page_slash(request: Request) -> HTTPResponse:
        return asset("index.html")

    @bp.get("/ui/config.json", name="dashboard_config")
    async def config(request: Request) -> HTTPResponse:
        resources = request.app.ctx.pool.config.resources
        return json_response({"resources": dict(resources)}, headers={"Cache-Control": "no-store"})

    @bp.get("/ui/<name>", name="dashboard_file")
    async def file(request: Request, name: str) -> HTTPResponse:
        return asset(name)
