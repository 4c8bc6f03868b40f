"""What any routing by the body costs nginx before a router's own work: the floors of
`fig_openai`, each measured against a plain `proxy_pass` of the same POST in the same nginx.

njs (Debian's libnginx-mod-http-js), in the front nginx beside the generated include:
`redirect` enters the njs VM and redirects (nginx has read the body: `js_content` always
does; njs does not touch it), `text` also takes the body as a string (`r.requestText`),
`parse` also parses it (`JSON.parse`).

Lua (OpenResty's lua-nginx-module, Debian's libnginx-mod-http-lua, the other way to run code
in nginx), only when `MS_BENCH_LUA_ROOT` names a folder where `bench/lua-module.sh` unpacked
it (nothing is installed): a one-worker nginx of its own that reads the body, decodes it with
lua-cjson and redirects (`ngx.exec`), beside its own plain `proxy_pass`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from bench.plain_proxy import one_worker_conf, run_nginx

__all__ = ["NJS_KINDS", "lua_root", "njs_floor", "start_lua_floor"]

NJS_KINDS = ("redirect", "text", "parse")
NJS_JS = """
function redirect(r) { r.internalRedirect('@plain_post'); }
function text(r) { if (r.requestText.length) { r.internalRedirect('@plain_post'); } }
function parse(r) { JSON.parse(r.requestText); r.internalRedirect('@plain_post'); }
export default {redirect, text, parse};
"""
IN_MEMORY = "client_body_buffer_size 4m; client_max_body_size 4m;"


def _plain(backend: int) -> str:
    """The plain `proxy_pass` every floor is divided by, and the floors' redirect target."""
    return (f"location /plain-post/ {{ proxy_pass http://127.0.0.1:{backend}/; }}\n"
            f"        location @plain_post {{ proxy_pass http://127.0.0.1:{backend}; }}")


def njs_floor(tmp: Path, backend: int) -> tuple[str, str]:
    """(http-level text, locations) of the njs floors, for the front nginx's plain server."""
    js = tmp / "floor.js"
    js.write_text(NJS_JS)
    floors = "\n".join(f"        location /floor-{kind}/ {{ {IN_MEMORY} js_content "
                       f"ms_floor.{kind}; }}" for kind in NJS_KINDS)
    return f"js_import ms_floor from {js};", f"{floors}\n        {_plain(backend)}"


def lua_root() -> Path | None:
    """The folder `bench/lua-module.sh` unpacked Debian's Lua module into, if given."""
    root = os.environ.get("MS_BENCH_LUA_ROOT")
    if not root:
        return None
    path = Path(root)
    if not (path / "usr/lib/nginx/modules/ngx_http_lua_module.so").is_file():
        raise RuntimeError(f"MS_BENCH_LUA_ROOT={root}: no usr/lib/nginx/modules/"
                           "ngx_http_lua_module.so there; run bench/lua-module.sh DIR first")
    return path


def _one(root: Path, pattern: str) -> Path:
    found = sorted(root.glob(pattern))
    if not found:
        raise RuntimeError(f"{root}: nothing matches {pattern}; run bench/lua-module.sh again")
    return found[0]


def start_lua_floor(tmp: Path, root: Path, port: int, backend: int
                    ) -> subprocess.Popen[bytes]:
    """A one-worker nginx on `port` with /plain-post/ and /floor-lua/ (see the module)."""
    modules = root / "usr/lib/nginx/modules"
    cjson = _one(root, "usr/lib/*/lua/5.1/cjson.so").parent
    libs = {_one(root, "usr/lib/*/libluajit-5.1.so.2").parent,
            _one(root, "*lib/*/libpcre.so.3").parent}
    conf = one_worker_conf(tmp / "lua", port, f"""location /floor-lua/ {{
            {IN_MEMORY}
            content_by_lua_block {{
                ngx.req.read_body()
                local doc = cjson.decode(ngx.req.get_body_data() or "")
                if doc then ngx.exec("@plain_post") else ngx.exit(400) end
            }}
        }}
        {_plain(backend)}""", http=f"""lua_package_path "{root}/usr/share/lua/5.1/?.lua;;";
    lua_package_cpath "{cjson}/?.so;;";
    init_by_lua_block {{ cjson = require "cjson.safe" }}""",
        main=f"load_module {modules}/ndk_http_module.so;\n"
             f"load_module {modules}/ngx_http_lua_module.so;")
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join(str(p) for p in sorted(libs))}
    return run_nginx(conf, conf.parent, port, "the Lua floor nginx", env=env)
