#!/usr/bin/env bash
# Give nginx room for herds of cold-start requests (idempotent; only ever raises values).
# Each proxied request holds two nginx connections, and a cold-start herd holds them for the
# whole start: Debian's stock `worker_connections 768` resets connections past ~700 clients.
# Sets, in the given nginx.conf (default /etc/nginx/nginx.conf):
#   events { worker_connections >= 4096; }   and, top level,   worker_rlimit_nofile >= 16384;
# (the master sets the workers' open-file limit itself, whatever nginx.service's LimitNOFILE).
# `model-starter doctor` says what the running nginx allows.
# Usage: bash scripts/nginx-limits.sh [NGINX_CONF]
set -euo pipefail
CONF="${1:-/etc/nginx/nginx.conf}"
python3 - "$CONF" <<'PY'
import re
import sys

path = sys.argv[1]
text = original = open(path).read()
WANT = {"worker_connections": 4096, "worker_rlimit_nofile": 16384}
for name, want in WANT.items():
    text = re.sub(rf"^(\s*{name}\s+)(\d+)\s*;",
                  lambda m, want=want: f"{m.group(1)}{max(int(m.group(2)), want)};", text, flags=re.M)
if not re.search(r"^\s*worker_connections\s", text, re.M):
    text, n = re.subn(r"^(\s*events\s*\{)", rf"\1\n\tworker_connections {WANT['worker_connections']};",
                      text, count=1, flags=re.M)
    if not n:
        text += f"\nevents {{\n\tworker_connections {WANT['worker_connections']};\n}}\n"
if not re.search(r"^\s*worker_rlimit_nofile\s", text, re.M):
    line = f"worker_rlimit_nofile {WANT['worker_rlimit_nofile']};\n"
    text, n = re.subn(r"^(\s*worker_processes\s+[^;]+;[^\n]*\n)", rf"\1{line}", text, count=1,
                      flags=re.M)
    if not n:
        text = line + text
if text != original:
    open(path, "w").write(text)
    print(f"nginx-limits: raised worker_connections / worker_rlimit_nofile in {path}")
else:
    print(f"nginx-limits: {path} already allows large herds")
PY
