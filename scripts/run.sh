#!/usr/bin/env bash
# Set everything up on a fresh Debian/Ubuntu machine and run model-starter on config.yaml:
# packages + venv, the nginx drop-in (/etc/nginx/conf.d/model-starter.conf), nginx, the daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG="${1:-config.yaml}"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
bash scripts/install.sh
.venv/bin/model-starter check --config "$CONFIG"
.venv/bin/model-starter nginx --config "$CONFIG" | $SUDO tee /etc/nginx/conf.d/model-starter.conf >/dev/null
# Room for herds of cold-start requests (stock worker_connections 768 resets past ~700 clients).
$SUDO bash scripts/nginx-limits.sh /etc/nginx/nginx.conf
$SUDO nginx -t -q
if pidof nginx >/dev/null; then
    $SUDO nginx -s reload
else
    $SUDO systemctl start nginx 2>/dev/null || $SUDO nginx
fi
echo "nginx: http://$(.venv/bin/python -c 'import sys,yaml; print(yaml.safe_load(open(sys.argv[1])).get("nginx",{}).get("listen","127.0.0.1:8000"))' "$CONFIG")/<model>/..."
# One descriptor per held request: use the whole hard limit (the soft one is often 1024).
ulimit -n "$(ulimit -Hn)"
exec .venv/bin/model-starter serve --config "$CONFIG"
