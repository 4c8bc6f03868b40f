#!/usr/bin/env bash
# Install the browser the dashboard tests drive: Debian's Chromium and its chromedriver
# (idempotent; the tests use these binaries, nothing is downloaded by selenium).
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver
