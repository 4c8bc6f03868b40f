"""The deployment paths, run for real (marker `deploy`):

* the README's systemd install, line for line, on a fresh Debian whose PID 1 is systemd (a
  podman container with its own network namespace): start after READY=1, models under the
  hardening, reload adding a model reachable through nginx, a model crash, a daemon SIGKILL,
  `doctor` and a 1000-client cold herd through that host's nginx, stop, and
  `systemd-analyze security`;
* the README's container lines: the Dockerfile built with podman and run (seed route, admin
  API, SmolLM2 through the container's nginx, healthcheck, clean stop);
* nginx's limits: `model-starter doctor` on `nginx -T`, and 1000 concurrent cold clients
  through Debian's stock nginx.conf raised by scripts/nginx-limits.sh, as the README sets it up.

Podman, mmdebstrap and the base images are installed by
scripts/install-deploy.sh (idempotent; the images are kept between runs).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from model_starter import doctor
from model_starter.protocol import CLIENT_HEADER
from tests.deploy import (
    BASE_IMAGE,
    SYSTEMD_IMAGE,
    ULIMITS,
    Container,
    commands,
    container,
    host_package_config,
    pip_cache_mount,
    podman,
    readme_block,
    require_deploy_tools,
    source_tarball,
)
from tests.herd import herd
from tests.stack import ROOT, Stack, fake_model, free_port, request, starts, wait_for

CHAT = json.dumps({"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 5})
UNIT = "model-orchestrator"
CONFIG = "/etc/model-starter/config.yaml"
INCLUDE = "/etc/nginx/model-starter/model-starter.conf"


# --- systemd ------------------------------------------------------------------------------------


def model_pids(host: Container) -> list[int]:
    out = host.exec("pgrep -u model-starter -f model_starter.llamacpp", check=False).stdout
    return [int(p) for p in out.split()]


def curl_status(host: Container, url: str, data: str | None = None) -> int:
    body = f"-H 'Content-Type: application/json' -d {shlex.quote(data)}" if data else ""
    return int(host.sh(f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 300 {body} {url}"))


def unit_state(host: Container) -> dict[str, str]:
    out = host.sh(f"systemctl show -p ActiveState,SubState,MainPID,NRestarts,Type,StatusText {UNIT}")
    return dict(line.split("=", 1) for line in out.splitlines())


@pytest.fixture(scope="module")
def systemd_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """A fresh Debian with systemd as PID 1, after the README's install lines, run verbatim."""
    require_deploy_tools()
    tmp = tmp_path_factory.mktemp("systemd-host")
    with container("model-starter-test-systemd") as host:
        # CAP_SYS_ADMIN lets the container's systemd build the unit's mount namespace
        # (ProtectSystem=strict, ReadWritePaths=, PrivateTmp=): without it systemd skips them.
        host.run(*ULIMITS, "--systemd=always", "--cap-add", "SYS_ADMIN",
                 *host_package_config(), *pip_cache_mount(), SYSTEMD_IMAGE, "/sbin/init")
        host.wait_for("systemctl is-system-running | grep -qx running", 60, "systemd to boot")
        podman("cp", str(source_tarball(tmp)), f"{host.name}:/root/model-starter.tar")
        host.sh("mkdir -p /root/checkout && tar -xf /root/model-starter.tar -C /root/checkout")
        script = "set -euxo pipefail\n" + readme_block("systemd-install")
        out = host.exec(script, workdir="/root/checkout", check=False, timeout=900)
        assert out.returncode == 0, f"README install failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        yield host


@pytest.mark.deploy
def test_systemd_start_is_active_once_ready(systemd_host: Container) -> None:
    """`systemctl start` (Type=notify) returns only after READY=1: the daemon answers at once."""
    host = systemd_host
    host.sh(f"systemctl stop {UNIT}")
    host.sh(f"systemctl start {UNIT}")
    # No polling: start returned, so the daemon listens already.
    assert curl_status(host, "http://127.0.0.1:8080/_ms/status") == 200
    state = unit_state(host)
    assert (state["Type"], state["ActiveState"], state["SubState"]) == ("notify", "active", "running")
    assert state["StatusText"].startswith("serving")
    journal = host.sh(f"journalctl -u {UNIT} -o cat --no-pager")
    assert journal.rindex("serving 2 model(s)") < journal.rindex("Started model-orchestrator")


@pytest.mark.deploy
def test_systemd_models_run_under_the_hardening(systemd_host: Container) -> None:
    """SmolLM2 starts on demand through nginx inside the unit's sandbox: read-only system, the
    nginx include folder writable, no capabilities, NoNewPrivileges, a seccomp filter."""
    host = systemd_host
    assert curl_status(host, "http://127.0.0.1:8000/smollm2/v1/chat/completions", CHAT) == 200
    main = unit_state(host)["MainPID"]
    mounts = host.sh(f"cat /proc/{main}/mountinfo").splitlines()

    def options(point: str) -> str:
        row = next(r.split() for r in mounts if r.split()[4] == point)
        return row[5]

    assert options("/").startswith("ro")
    assert options("/etc/nginx/model-starter").startswith("rw")
    assert options("/var/lib/model-starter").startswith("rw")
    status = host.sh(f"grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/{main}/status")
    assert "CapEff:\t0000000000000000" in status
    assert "NoNewPrivs:\t1" in status
    assert "Seccomp:\t2" in status
    assert host.sh("stat -c %U:%G /var/lib/model-starter") == "model-starter:model-starter"


@pytest.mark.deploy
def test_systemd_reload_makes_a_new_model_reachable(systemd_host: Container) -> None:
    """With nginx.write_to, `systemctl reload` adds a model; the path unit reloads nginx."""
    host = systemd_host
    config = yaml.safe_load(host.sh(f"cat {CONFIG}"))
    config["nginx"]["write_to"] = INCLUDE
    extra = dict(config["models"]["smollm2-embed"])
    extra.pop("aliases", None)  # a copied alias would name two models: the reload refuses it
    extra["command"] = [{"smollm2-embed": "extra-embed", "9002": "9003"}.get(a, a)
                        for a in extra["command"]]
    extra["port"] = 9003
    config["models"]["extra-embed"] = extra
    host.exec(f"cat > {CONFIG} <<'EOF'\n{yaml.safe_dump(config, sort_keys=False)}EOF")
    assert curl_status(host, "http://127.0.0.1:8000/extra-embed/v1/models") == 404
    host.sh(f"systemctl reload {UNIT}")
    assert "extra-embed" in host.sh(f"cat {INCLUDE}")
    host.wait_for("curl -s -o /dev/null -w '%{http_code}' --max-time 300 "
                  "http://127.0.0.1:8000/extra-embed/v1/embeddings -d '{\"input\": \"hi\"}' "
                  "| grep -qx 200", 120, "the new model through nginx")
    journal = host.sh("journalctl -u model-orchestrator-nginx -o cat --no-pager")
    assert "Finished" in journal or "Deactivated successfully" in journal


@pytest.mark.deploy
def test_systemd_model_crash_is_restarted_by_the_next_request(systemd_host: Container) -> None:
    host = systemd_host
    url = "http://127.0.0.1:8000/smollm2/v1/chat/completions"
    assert curl_status(host, url, CHAT) == 200
    pid = host.sh("pgrep -u model-starter -f 'alias smollm2 '")
    host.sh(f"kill -KILL {pid}")
    host.wait_for(f"journalctl -u {UNIT} -o cat --no-pager | grep -q 'model=smollm2.*-> stopped'",
                  30, "the daemon to notice the crash")
    assert curl_status(host, url, CHAT) == 200
    assert host.sh("pgrep -u model-starter -f 'alias smollm2 '") != pid


@pytest.mark.deploy
def test_systemd_daemon_sigkill_is_restarted(systemd_host: Container) -> None:
    """A SIGKILLed daemon: systemd kills its models with it (KillMode=mixed) and restarts it
    (Restart=on-failure); the next request starts the model again."""
    host = systemd_host
    url = "http://127.0.0.1:8000/smollm2/v1/chat/completions"
    assert curl_status(host, url, CHAT) == 200
    before = unit_state(host)
    models = model_pids(host)
    assert models
    host.sh(f"systemctl kill --kill-whom=main --signal=SIGKILL {UNIT}")
    host.wait_for(f"systemctl show -p NRestarts --value {UNIT} | grep -qx {int(before['NRestarts']) + 1}"
                  f" && systemctl is-active -q {UNIT}", 60, "systemd to restart the daemon")
    assert unit_state(host)["MainPID"] != before["MainPID"]
    alive = set(models) & set(model_pids(host))
    assert not alive, f"models outlived their daemon: {alive}"
    # The restarted daemon adopted nothing and dropped the dead models' state files.
    host.wait_for("! ls /var/lib/model-starter/*.json", 30, "the stale state files to go")
    assert curl_status(host, url, CHAT) == 200


HERD_CLIENT = """
import json, sys
sys.path.insert(0, "/root/checkout")
from tests.herd import herd
r = herd(8000, [f"/herd/x/{i}" for i in range(1000)])
print(json.dumps({"statuses": r.statuses, "errors": r.errors}))
"""


@pytest.mark.deploy
def test_systemd_cold_herd_through_the_readme_nginx(systemd_host: Container) -> None:
    """Debian's nginx run by systemd, configured by the README's lines (nginx-limits.sh):
    `model-starter doctor` finds no limit short of 1000 clients, and 1000 concurrent cold
    clients get one start and 1000 answers 200."""
    host = systemd_host
    config = yaml.safe_load(host.sh(f"cat {CONFIG}"))
    config["nginx"]["write_to"] = INCLUDE
    config["models"]["herd"] = {
        "command": ["python3", "/opt/model-starter/tests/fakemodel.py", "--port", "9010",
                    "--unhealthy-for", "1"],
        "port": 9010, "startup_timeout": 60}
    host.exec(f"cat > {CONFIG} <<'EOF'\n{yaml.safe_dump(config, sort_keys=False)}EOF")
    host.sh(f"systemctl reload {UNIT}")
    host.wait_for("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8000/herd/ "
                  "| grep -qx 200", 60, "the herd model through nginx")
    host.sh(f"/opt/model-starter/.venv/bin/model-starter stop herd --config {CONFIG}")
    host.wait_for("! pgrep -u model-starter -f fakemodel.py", 30, "the herd model to stop")
    doc = host.exec(f"/opt/model-starter/.venv/bin/model-starter doctor --config {CONFIG}",
                    check=False)
    print(doc.stdout)
    assert doc.returncode == 0, doc.stdout + doc.stderr
    assert "worker_connections 4096" in doc.stdout
    assert "daemon: open-file limit" in doc.stdout  # found although it runs as another user
    out = host.exec("/opt/model-starter/.venv/bin/python -", check=False, timeout=600,
                    stdin=HERD_CLIENT)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["statuses"] == {"200": 1000}, result
    status = json.loads(host.sh("curl -s http://127.0.0.1:8080/_ms/status"))
    starts = {m["name"]: m["starts"] for m in status["models"]}
    assert starts["herd"] == 2  # the probe above, then one for the whole herd


@pytest.mark.deploy
def test_systemd_stop_stops_every_model(systemd_host: Container) -> None:
    host = systemd_host
    for model in ("smollm2", "smollm2-embed"):
        host.sh(f"curl -s -o /dev/null --max-time 300 http://127.0.0.1:8000/{model}/health")
    assert model_pids(host)
    host.sh(f"systemctl stop {UNIT}")
    assert unit_state(host)["ActiveState"] == "inactive"
    assert model_pids(host) == []
    journal = host.sh(f"journalctl -u {UNIT} -o cat --no-pager -n 30")
    assert "stopping (shutdown)" in journal
    assert "left-over process" not in journal


@pytest.mark.deploy
def test_systemd_analyze_security(systemd_host: Container) -> None:
    out = systemd_host.sh(f"systemd-analyze security --no-pager {UNIT}")
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", out)
    assert match, out[-500:]
    exposure = float(match.group(1))
    print(f"systemd-analyze security {UNIT}: {exposure}")
    assert exposure <= 2.0
    systemd_host.sh("systemd-analyze verify /etc/systemd/system/model-orchestrator*.service "
                    "/etc/systemd/system/model-orchestrator-nginx.path")


# --- container ----------------------------------------------------------------------------------


def podman_argv(command: str, names: dict[str, str]) -> list[str]:
    """A README `docker ...` line as this machine runs it: podman, the test's image, container
    name and ports, the local base image, the host's package config, rlimits below the host's."""
    argv = shlex.split(command)
    assert argv[0] == "docker", command
    argv = [names.get(a, a) for a in argv[1:]]
    if argv[0] == "build":
        return ["build", "--format", "docker", "--network=host", *host_package_config(),
                "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", *argv[1:]]
    if argv[0] == "run":  # this machine's rlimits instead of the README's
        rest = [a for i, a in enumerate(argv) if "--ulimit" not in (a, argv[i - 1])]
        return ["run", *ULIMITS, *rest[1:]]
    return argv


@pytest.fixture
def image_names() -> Iterator[dict[str, str]]:
    names = {"model-starter": "model-starter-test", ".": str(ROOT),
             "127.0.0.1:8000:8000": f"127.0.0.1:{free_port()}:8000",
             "127.0.0.1:8080:8080": f"127.0.0.1:{free_port()}:8080"}
    yield names
    podman("rm", "-f", "-i", "-t", "0", "model-starter-test", check=False)
    podman("rmi", "-f", "-i", "localhost/model-starter-test", check=False)


@pytest.mark.deploy
def test_container_image(image_names: dict[str, str]) -> None:
    require_deploy_tools()
    block = commands(readme_block("container"))
    build, run, chat, admin, stop = block
    names = image_names
    front = int(names["127.0.0.1:8000:8000"].split(":")[1])
    back = int(names["127.0.0.1:8080:8080"].split(":")[1])
    t0 = time.monotonic()
    podman(*podman_argv(build, names), timeout=1200)
    built = time.monotonic() - t0
    inspect = json.loads(podman("image", "inspect", "localhost/model-starter-test").stdout)[0]
    size_mb = inspect["Size"] / 1e6
    print(f"image: built in {built:.0f} s, {size_mb:.0f} MB")
    cfg = inspect["Config"]
    assert cfg["User"] == "model-starter"
    assert inspect["Healthcheck"]["Test"][0] == "CMD-SHELL", "HEALTHCHECK lost"
    podman(*podman_argv(run, names))
    ctr = Container("model-starter-test")
    wait_for(lambda: _answers(back), 60, "the daemon in the container")
    # The seed route, straight to the daemon: 204/504 for a configured model, JSON 404 if not
    # (a direct call must say it is meant: the client header, issue 11's rule).
    assert request(back, "GET", "/no-such-model/x", headers=DIRECT).status == 404
    token = re.search(r"Bearer (\S+)'", admin)
    assert token
    assert request(back, "GET", "/_ms/status").status in (401, 403)
    auth = {"Authorization": f"Bearer {token.group(1)}"}
    status = request(back, "GET", "/_ms/status", headers=auth)
    assert status.status == 200
    assert {m["name"]: m["state"] for m in status.json()["models"]}["smollm2"] == "stopped"
    # SmolLM2 on demand through the container's nginx (the README's curl line).
    assert "/smollm2/v1/chat/completions" in chat
    reply = request(front, "POST", "/smollm2/v1/chat/completions", body=CHAT.encode(),
                    headers={"Content-Type": "application/json"}, timeout=300)
    assert reply.status == 200, reply.body[:500]
    assert reply.json()["choices"][0]["message"]["content"]
    # The seed route for a running model, no mode signalled: 204 "already running".
    assert request(back, "GET", "/smollm2/anything", headers=DIRECT).status == 204
    health = podman("healthcheck", "run", "model-starter-test", check=False)
    assert health.returncode == 0, health.stderr
    processes = ctr.sh("for p in /proc/[0-9]*; do echo $(cat $p/cmdline | tr '\\0' ' '); done")
    assert "model_starter.llamacpp" in processes
    podman(*podman_argv(stop, names), timeout=60)
    state = json.loads(podman("inspect", "model-starter-test").stdout)[0]["State"]
    assert state["ExitCode"] == 0, ctr.logs()[-2000:]
    logs = ctr.logs()
    assert "model=smollm2 state stopping -> stopped" in logs
    assert "nginx or the daemon exited" not in logs


DIRECT = {CLIENT_HEADER: "deploy-test"}  # a direct call to the daemon, meant as one


def _answers(port: int) -> bool:
    try:
        return request(port, "GET", "/no-such-model/x", headers=DIRECT, timeout=2).status == 404
    except OSError:
        return False


# --- nginx's limits -----------------------------------------------------------------------------

STOCK = """user www-data;
worker_processes auto;
pid /run/nginx.pid;
include /etc/nginx/modules-enabled/*.conf;

events {
	worker_connections 768;
	# multi_accept on;
}
http {
	include /etc/nginx/conf.d/*.conf;
}
"""


def test_doctor_reads_stock_debian_limits() -> None:
    """Debian's stock settings on 2 cores allow ~768 concurrent proxied requests: warn, and
    say which settings to raise."""
    settings = doctor.parse_nginx_dump(f"# configuration file /etc/nginx/nginx.conf:\n{STOCK}",
                                       cpus=2)
    assert (settings.worker_processes, settings.worker_connections) == (2, 768)
    assert settings.worker_rlimit_nofile is None
    assert settings.pid_file == "/run/nginx.pid"
    findings = doctor.diagnose(settings, worker_files=1024, daemon_files=1024, target=1000)
    text = doctor.render(findings)
    assert settings.concurrent_requests(1024) == 768
    assert "about 768 concurrent" in text
    assert "worker_connections 4096" in text and "worker_rlimit_nofile" in text
    assert "LimitNOFILE" in text
    assert sum(f.level == "warn" for f in findings) == 4


def test_doctor_open_file_limit_caps_worker_connections() -> None:
    raised = STOCK.replace("768", "4096")
    settings = doctor.parse_nginx_dump(raised, cpus=2)
    # 4096 connections per worker, but each worker may open only 1024 files.
    assert settings.concurrent_requests(1024) == 2 * (1024 - doctor.WORKER_SPARE_FILES) // 2
    limited = doctor.parse_nginx_dump(raised.replace("pid ", "worker_rlimit_nofile 16384;\npid "),
                                      cpus=2)
    assert limited.concurrent_requests(1024) == 4096
    assert all(f.level != "warn" for f in doctor.diagnose(limited, 1024, 65536, target=1000))


def test_nginx_limits_script_only_raises(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(STOCK.replace("worker_processes auto;", "worker_processes auto; # cores"))
    for _ in range(2):  # idempotent
        subprocess.run(["bash", str(ROOT / "scripts" / "nginx-limits.sh"), str(conf)], check=True,
                       capture_output=True)
        settings = doctor.parse_nginx_dump(conf.read_text(), cpus=2)
        assert (settings.worker_connections, settings.worker_rlimit_nofile) == (4096, 16384)
    conf.write_text(STOCK.replace("768", "20000").replace("pid ", "worker_rlimit_nofile 50000;\npid "))
    subprocess.run(["bash", str(ROOT / "scripts" / "nginx-limits.sh"), str(conf)], check=True,
                   capture_output=True)
    settings = doctor.parse_nginx_dump(conf.read_text(), cpus=2)
    assert (settings.worker_connections, settings.worker_rlimit_nofile) == (20000, 50000)


@dataclass
class ReadmeNginxStack(Stack):
    """nginx set up as the README's quick start does: Debian's own /etc/nginx/nginx.conf,
    raised by scripts/nginx-limits.sh, with the generated drop-in where it includes
    conf.d/*.conf. Only file locations change (pid, logs, temp files, the include) and the
    user (root may not hand its private test folder to www-data); sites-enabled (port 80) is
    left out."""

    def write_nginx(self) -> Path:
        ngdir = self.generate_include("conf.d")
        text = Path("/etc/nginx/nginx.conf").read_text()
        user = "user root;" if os.geteuid() == 0 else ""
        for pattern, repl in (
            (r"^\s*user\s+[^;]+;", user),
            (r"^\s*pid\s+[^;]+;", f"daemon off;\npid {ngdir}/nginx.pid;"),
            (r"^\s*error_log\s+[^;]+;", f"error_log {ngdir}/error.log warn;"),
            (r"^\s*access_log\s+[^;]+;", "access_log off;"),
            (r"^\s*include\s+/etc/nginx/conf\.d/\*\.conf;",
             f"include {ngdir}/model-starter.conf;\n\tclient_body_temp_path {ngdir}/body;"
             f"\n\tproxy_temp_path {ngdir}/proxy;"),
            (r"^\s*include\s+/etc/nginx/sites-enabled/\*;", ""),
        ):
            text, n = re.subn(pattern, repl, text, count=1, flags=re.M)
            assert n == 1 or "error_log" in pattern, f"stock nginx.conf has no {pattern}"
        conf = ngdir / "nginx.conf"
        conf.write_text(text)
        # Debian's modules-enabled/*.conf load modules relative to the prefix (`-p ngdir`).
        with contextlib.suppress(FileExistsError):
            (ngdir / "modules").symlink_to("/usr/lib/nginx/modules")
        subprocess.run(["bash", str(ROOT / "scripts" / "nginx-limits.sh"), str(conf)], check=True,
                       capture_output=True)
        return conf


@pytest.mark.deploy
def test_cold_herd_of_1000_through_the_readme_nginx(tmp_path: Path, record: Path) -> None:
    """1000 concurrent clients to a stopped model: one start, 1000 answers 200 through nginx as the
    README configures it; `model-starter doctor` agrees that the running nginx allows it."""
    port = free_port()
    model = fake_model(port, "--unhealthy-for", "1", record=record)
    with ReadmeNginxStack(tmp_path, {"m": model}) as s:
        ngconf = str(s.nginx_dir / "nginx.conf")
        doc = s.cli("doctor", "--target", "1000", "--nginx-conf", ngconf, check=False)
        assert doc.returncode == 0, doc.stdout + doc.stderr
        assert "WARN" not in doc.stdout
        assert "workers' open-file limit" not in doc.stdout  # worker_rlimit_nofile is set
        assert "daemon: open-file limit" in doc.stdout
        result = herd(s.nginx_port, [f"/m/herd/{i}" for i in range(1000)])
        assert result.statuses == {200: 1000}, (result.statuses, result.errors,
                                                s.daemon_log()[-2000:])
        assert len(starts(record, port)) == 1
