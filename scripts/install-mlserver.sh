#!/usr/bin/env bash
# Install a real Seldon MLServer (KServe V2 protocol) for the tests, in its own
# venv .venv-mlserver at the repo root, so that MLServer's dependencies never
# meet the project's pinned ones in .venv.  Idempotent: does nothing when the
# pinned versions are already there.  Takes about a minute from scratch.
# Usage: bash scripts/install-mlserver.sh
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-mlserver
# uvloop>=0.22 makes every model load fail with HTTP 500 in MLServer 1.7.1.
# pandas 3 / numpy 2.4 / scikit-learn 1.9 are what pip resolves today; pinned
# so the models trained by tests/mlserver.py keep loading the same way.
PINS=(
    "mlserver==1.7.1"
    "mlserver-sklearn==1.7.1"
    "uvloop==0.21.0"
    "scikit-learn==1.9.1"
    "joblib==1.6.0"
    "numpy==2.4.6"
    "scipy==1.17.1"
    "pandas==3.1.1"
)

installed() {
    [ -x "$VENV/bin/python" ] && [ -x "$VENV/bin/mlserver" ] || return 1
    "$VENV/bin/python" - "${PINS[@]}" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import PackageNotFoundError, version

for pin in sys.argv[1:]:
    name, _, want = pin.partition("==")
    try:
        if version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
EOF
}

if installed; then
    echo "install-mlserver: $VENV already has ${PINS[*]}"
    exit 0
fi

python3 -c 'import venv, ensurepip' 2>/dev/null || {
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends python3-venv
}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# Keep the venv out of git whatever the top-level .gitignore says.
printf '*\n' > "$VENV/.gitignore"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-input "${PINS[@]}" 2>&1 \
    | { grep -v "^WARNING: Location 'file:" || true; }  # this machine's pip.conf noise
installed || { echo "install-mlserver: pinned versions missing after install" >&2; exit 1; }
echo "install-mlserver: $VENV ready ($("$VENV/bin/mlserver" --version))"
