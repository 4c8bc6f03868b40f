#!/usr/bin/env bash
# Install what the tests need (idempotent), then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
.venv/bin/ruff check daemon tests bench
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
