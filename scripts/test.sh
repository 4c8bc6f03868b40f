#!/usr/bin/env bash
# Install what the tests need (idempotent), then run the whole test suite
# (`-m 'not deploy'` leaves out the slow deployment tests: podman image, systemd unit).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
bash scripts/install-browser.sh    # Debian's chromium + chromedriver for the dashboard tests
bash scripts/install-mlserver.sh   # a real MLServer for the KServe V2 tests, in its own venv
# podman + Debian base images for the deployment tests; if that fails they skip, saying why.
bash scripts/install-deploy.sh || echo "test.sh: scripts/install-deploy.sh failed" >&2
.venv/bin/ruff check daemon tests bench
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
