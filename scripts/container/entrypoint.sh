#!/bin/bash
# PID 1 of the model-starter container: write the nginx include, run nginx and the daemon.
# SIGTERM/SIGINT (`docker stop`): the daemon stops every model and exits, then nginx quits;
# the container exits with the daemon's status (0). If either dies, the other is stopped too.
set -euo pipefail
CONFIG="${MODEL_STARTER_CONFIG:-/etc/model-starter/config.yaml}"
NGINX_CONF=/etc/model-starter/nginx.conf
RUNDIR=/var/lib/model-starter/nginx

# One descriptor per held request: use the whole hard limit (some engines set a soft 1024).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
model-starter check --config "$CONFIG" >/dev/null
mkdir -p "$RUNDIR"
model-starter nginx --config "$CONFIG" >"$RUNDIR/model-starter.conf"
nginx -e stderr -c "$NGINX_CONF" -t -q

nginx -e stderr -c "$NGINX_CONF" &
nginx_pid=$!
model-starter serve --config "$CONFIG" "$@" &
daemon_pid=$!

stop() {  # [EXIT_STATUS]: the daemon's own unless given
    kill -TERM "$daemon_pid" 2>/dev/null || true
    status=0
    wait "$daemon_pid" || status=$?
    status="${1:-$status}"
    kill -QUIT "$nginx_pid" 2>/dev/null || true
    wait "$nginx_pid" || true
    exit "$status"
}
trap stop TERM INT
# Returns when either child exits (or a trapped signal arrives and stop() runs).
wait -n "$nginx_pid" "$daemon_pid" || true
echo "model-starter-entrypoint: nginx or the daemon exited; stopping" >&2
stop 1
