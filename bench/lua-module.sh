#!/usr/bin/env bash
# Unpack Debian's Lua module for nginx (OpenResty's lua-nginx-module) and what it loads into
# DIR, installing nothing: `MS_BENCH_LUA_ROOT=DIR .venv/bin/python -m bench.fig_openai` then
# measures it as one more floor of routing by the body (bench/router_floor.py).
set -euo pipefail
dir=$(realpath -m "${1:?usage: bash bench/lua-module.sh DIR}")
mkdir -p "$dir/debs"
cd "$dir/debs"
apt-get download libnginx-mod-http-lua libnginx-mod-http-ndk libluajit2-5.1-2 lua-cjson \
    lua-resty-core lua-resty-lrucache libpcre3 2>&1 | grep -v '^W: Download is performed unsandboxed' || true
for deb in ./*.deb; do
    dpkg -x "$deb" "$dir"
done
test -f "$dir/usr/lib/nginx/modules/ngx_http_lua_module.so"
echo "unpacked into $dir: MS_BENCH_LUA_ROOT=$dir"
