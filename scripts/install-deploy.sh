#!/usr/bin/env bash
# Install what the deployment tests need (idempotent): podman with runc, mmdebstrap, and two
# local Debian 12 base images made from Debian packages (registry images cannot be pulled
# everywhere these tests run):
#   localhost/model-starter-base:bookworm     python3 + venv: the Dockerfile's BASE_IMAGE here
#   localhost/model-starter-systemd:bookworm  + systemd as PID 1, dbus, sudo, curl, procps:
#                                             a fresh "host" for the README's systemd install
# An image that already exists is kept (about 75 s each to make).
# Usage: bash scripts/install-deploy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

need=()
for pkg in podman runc mmdebstrap uidmap; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# Smaller images: no documentation, manual pages or translations.
SLIM=(--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias')
# The mirror may serve a snapshot whose Release file is past its Valid-Until date.
APTOPT=(--aptopt='Acquire::Check-Valid-Until "false"')

make_image() {  # NAME PACKAGES
    local name="$1" packages="$2" dir
    if $SUDO podman image exists "$name"; then
        echo "install-deploy: $name already there"
        return
    fi
    dir="$(mktemp -d)"
    # mmdebstrap picks the output format from the file name: it must end in .tar.
    $SUDO mmdebstrap --quiet --variant=minbase --include="$packages" "${SLIM[@]}" "${APTOPT[@]}" \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
        bookworm "$dir/rootfs.tar"
    $SUDO podman import --quiet "$dir/rootfs.tar" "$name" >/dev/null
    rm -rf "$dir"
    echo "install-deploy: $name built"
}

make_image localhost/model-starter-base:bookworm python3,python3-venv,ca-certificates
make_image localhost/model-starter-systemd:bookworm \
    python3,python3-venv,ca-certificates,systemd,systemd-sysv,dbus,sudo,curl,procps
