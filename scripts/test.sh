#!/usr/bin/env bash
# Install what the tests need (idempotent), then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
bash scripts/install-browser.sh    # Debian's chromium + chromedriver for the dashboard tests
bash scripts/install-mlserver.sh   # a real MLServer for the KServe V2 tests, in its own venv
.venv/bin/ruff check daemon tests bench
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
