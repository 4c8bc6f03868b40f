"""Helpers for the deployment tests: podman containers (cleaned up by name), the README's
marked install blocks, and the project's files as a tarball.

Machine quirks (see scripts/install-deploy.sh): registry images cannot be pulled, so the base
images are made from Debian packages; containers start only with rlimits below the host's;
package installs need the host's CA bundle and pip configuration (TLS is intercepted here).
"""

from __future__ import annotations

import contextlib
import functools
import re
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.stack import ROOT

BASE_IMAGE = "localhost/model-starter-base:bookworm"
SYSTEMD_IMAGE = "localhost/model-starter-systemd:bookworm"
# Below this machine's hard limits (podman cannot raise a container's rlimits past them).
ULIMITS = ("--ulimit", "nofile=16384:16384", "--ulimit", "nproc=4096:8192")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PIP_CONF = Path("/etc/pip.conf")
README = ROOT / "README.md"


def podman(*args: str, check: bool = True, timeout: float = 600,
           input: str | None = None) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout,
                         input=input, check=False)
    if check and out.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {out.returncode}:\n"
                             f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def host_package_config() -> list[str]:
    """Volumes giving a container or build this host's CA bundle (and pip.conf, if any)."""
    mounts = [f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
    if PIP_CONF.exists():
        mounts.append(f"{PIP_CONF}:{PIP_CONF}:ro")
    return [arg for m in mounts for arg in ("-v", m)]


@functools.cache
def deploy_tools() -> str | None:
    """Install podman and the base images (idempotent); None, or why podman cannot work here."""
    out = subprocess.run(["bash", str(ROOT / "scripts" / "install-deploy.sh")], capture_output=True,
                         text=True, timeout=1200, check=False)
    if out.returncode != 0:
        return f"scripts/install-deploy.sh failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    probe = podman("run", "--rm", *ULIMITS, "--network=none", BASE_IMAGE, "true", check=False,
                   timeout=120)
    if probe.returncode != 0:
        return f"podman cannot run a container on this machine: {probe.stderr.strip()[-500:]}"
    return None


def require_deploy_tools() -> None:
    reason = deploy_tools()
    if reason:
        pytest.skip(reason)


def readme_block(name: str) -> str:
    """The code block that follows `<!-- deploy-test: NAME -->` in the README (fenced or
    indented), as the shell text a reader would paste."""
    text = README.read_text()
    marker = f"<!-- deploy-test: {name} -->"
    assert marker in text, f"README has no block marked {marker}"
    rest = text.split(marker, 1)[1].lstrip("\n")
    fenced = re.match(r"```[a-z]*\n(.*?)```", rest, re.S)
    if fenced:
        return fenced.group(1)
    lines = []
    for line in rest.splitlines():
        if not line.startswith("    "):
            break
        lines.append(line[4:])
    assert lines, f"no code block after {marker}"
    return "\n".join(lines) + "\n"


def commands(block: str) -> list[str]:
    """One entry per command: backslash continuations joined."""
    return [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip()]


def source_tarball(dest: Path) -> Path:
    """The project's files (tracked and new, not ignored) as `cp -r .` would see a checkout."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    path = dest / "model-starter.tar"
    with tarfile.open(path, "w") as tar:
        for name in names:
            full = ROOT / name
            if name and full.exists() and not full.is_symlink():
                tar.add(full, arcname=name, recursive=False)
    return path


@dataclass
class Container:
    """A named podman container; removed (by name) when the context ends."""

    name: str

    def run(self, *args: str) -> None:
        podman("rm", "-f", "-i", self.name, check=False)
        podman("run", "-d", "--name", self.name, *args, timeout=120)

    def exec(self, command: str, check: bool = True, timeout: float = 600,
             workdir: str | None = None, stdin: str | None = None,
             ) -> subprocess.CompletedProcess[str]:
        where = ["-w", workdir] if workdir else []
        if stdin is not None:
            where.append("-i")
        return podman("exec", *where, self.name, "bash", "-c", command, check=check,
                      timeout=timeout, input=stdin)

    def sh(self, command: str, timeout: float = 600) -> str:
        return self.exec(command, timeout=timeout).stdout.strip()

    def wait_for(self, command: str, timeout: float, what: str) -> str:
        """Poll `command` inside the container until it exits 0; its output."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.exec(command, check=False, timeout=60)
            if out.returncode == 0:
                return out.stdout.strip()
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}: "
                                     f"{out.stdout[-500:]} {out.stderr[-500:]}")
            time.sleep(0.2)

    def logs(self) -> str:
        out = podman("logs", self.name, check=False)
        return out.stdout + out.stderr

    def remove(self) -> None:
        podman("rm", "-f", "-i", "-t", "0", self.name, check=False)


@contextlib.contextmanager
def container(name: str) -> Iterator[Container]:
    c = Container(name)
    try:
        yield c
    finally:
        c.remove()


def pip_cache_mount() -> list[str]:
    """The host's pip cache, so installs inside a container do not download everything again."""
    cache = Path.home() / ".cache" / "pip"
    return ["-v", f"{cache}:/root/.cache/pip"] if cache.is_dir() else []
