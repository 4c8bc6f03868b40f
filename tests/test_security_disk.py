"""Issue 11, the disk and process side: nothing a model process or a local user can write on
disk makes the daemon signal, write or keep more than it should."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from model_starter.config import ConfigError, ProcessSpec, parse_config
from model_starter.launchers import ProcessLauncher, StartError
from model_starter.logfile import LogFile
from model_starter.reload import Reloader
from model_starter.statefile import Record, StateFile, process_start_time
from model_starter.supervisor import ModelSupervisor
from model_starter.usage import HeldTotal
from tests.stack import wait_for
from tests.test_supervisor import FakeClock, FakeHealth, FakeLauncher, settle, spec

ROOT = Path(__file__).resolve().parent.parent


def process_spec(command: list[str], name: str = "m") -> ProcessSpec:
    text = f"models:\n  {name}:\n    command: {json.dumps(command)}\n    port: 9\n"
    model = parse_config(text, "t.yaml", environ={}).models[name]
    assert isinstance(model, ProcessSpec)
    return model


# -- item 1: state files -------------------------------------------------------------------


def test_forged_state_files_signal_nothing(tmp_path: Path) -> None:
    """Guards: `{"pid": true}` (killpg(1) = kill(-1)), `{"pid": 0}`, a missing start time,
    `"command": null`, a record naming someone else's process: each is dropped, costs only
    its model and signals nobody; a genuine record is still adopted and stopped. Runs in a
    PID namespace of its own, in a session of its own (a process group spans namespaces:
    `killpg(0)` would reach the test runner), so a regression kills only what the test
    started."""
    ns = ["unshare", "--pid", "--fork", "--mount-proc"]
    if os.geteuid() != 0:
        ns[1:1] = ["--user", "--map-root-user"]
    if subprocess.run([*ns, "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot create a PID namespace here")
    out = subprocess.run([*ns, sys.executable, "-m", "tests.nsdriver", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, start_new_session=True)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    adopted = report["adopted"]
    assert adopted.pop("good") is True
    assert set(adopted.values()) == {False}, adopted
    assert report["alive"] == {"leader": True, "member": True, "ours": False}
    assert report["left"] == []  # every bad record dropped, the good one forgotten at exit


async def test_adopted_process_that_became_another_is_let_go_not_signalled(
    tmp_path: Path,
) -> None:
    """Guards: the identity check runs before every signal, not only at adoption: a process
    that exec'd into another program after it was adopted is neither signalled nor waited
    for forever."""
    command = ["sh", "-c", "read line; exec sleep 603"]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, start_new_session=True)
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    try:
        wait_for(lambda: cmdline.read_bytes().startswith(b"sh\0"), 10, "sh to run")  # exec'd
        start = process_start_time(proc.pid)
        assert start is not None
        state = tmp_path / "state"
        StateFile(state, "m").write(Record(proc.pid, start, tuple(command), 9))
        launcher = ProcessLauncher(process_spec(command), LogFile(tmp_path / "m.log", 4096),
                                   state)
        assert await launcher.adopt() is True
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        wait_for(lambda: cmdline.read_bytes().startswith(b"sleep"), 10, "the exec")
        await asyncio.wait_for(launcher.stop(), 30)
        assert proc.poll() is None  # not ours any more: left alone
        assert launcher.pid is None
    finally:
        proc.kill()
        proc.wait()


def test_state_dir_others_can_write_refuses_to_start(tmp_path: Path) -> None:
    """Guards: a state dir writable by other users (forged pids) is refused with a message."""
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"listen: 127.0.0.1:1\nstate_dir: {state}\n"
                   "models:\n  m:\n    command: [x]\n    port: 9\n")
    out = subprocess.run([sys.executable, "-m", "model_starter", "serve", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "writable by other users" in out.stderr and str(state) in out.stderr


async def test_state_files_are_private_and_never_written_through_a_symlink(
    tmp_path: Path,
) -> None:
    """Guards: the state dir is 0700, state files 0600, and a planted `NAME.tmp` symlink (the
    old fixed temp name) does not make the daemon write into its target."""
    state, target = tmp_path / "state", tmp_path / "victim"
    state.mkdir(mode=0o700)
    target.write_text("precious")
    (state / "m.tmp").symlink_to(target)
    launcher = ProcessLauncher(process_spec(["sleep", "60"]),
                               LogFile(tmp_path / "logs" / "m.log", 4096), state)
    await launcher.start()
    try:
        assert target.read_text() == "precious"
        record = json.loads((state / "m.json").read_text())
        assert record["pid"] == launcher.pid
        assert stat.S_IMODE((state / "m.json").stat().st_mode) == 0o600
        fresh = tmp_path / "fresh"
        launcher2 = ProcessLauncher(process_spec(["sleep", "60"], "n"),
                                    LogFile(tmp_path / "logs" / "n.log", 4096), fresh)
        await launcher2.start()
        await launcher2.stop()
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    finally:
        await launcher.stop()


# -- item 6: no symlinks followed, no directories others can write into ------------------------


def test_log_rotation_never_writes_through_a_planted_symlink(tmp_path: Path) -> None:
    """Guards: a planted `NAME.log.1` symlink made rotation truncate and fill its target."""
    logs, target = tmp_path / "logs", tmp_path / "victim"
    logs.mkdir()
    target.write_text("precious")
    (logs / "m.log").write_bytes(b"x" * 10000)
    (logs / "m.log.1").symlink_to(target)
    LogFile(logs / "m.log", 4096).enforce_bound()
    assert target.read_text() == "precious"
    assert (logs / "m.log").stat().st_size <= 4096
    assert (logs / "m.log.1").read_bytes() == b"x" * 4096 and not (logs / "m.log.1").is_symlink()


def test_log_dir_others_can_write_is_refused(tmp_path: Path) -> None:
    """Guards: a world-writable log dir (anyone could plant links there) is not used."""
    logs = tmp_path / "logs"
    logs.mkdir()
    logs.chmod(0o777)
    log = LogFile(logs / "m.log", 4096)
    assert log.open_for_child() is None
    assert log.error is not None and "writable by other users" in log.error


def reloader_for(tmp_path: Path, write_to: Path, reload_command: list[str] | None) -> Reloader:
    extra = f"  reload_command: {json.dumps(reload_command)}\n" if reload_command else ""
    config = parse_config(f"nginx:\n  write_to: {write_to}\n{extra}"
                          "models:\n  m:\n    command: [x]\n    port: 9\n",
                          str(tmp_path / "c.yaml"), environ={})
    return Reloader(SimpleNamespace(config=config), str(tmp_path / "c.yaml"))  # type: ignore[arg-type]


async def test_nginx_include_never_written_through_a_planted_temp(tmp_path: Path) -> None:
    """Guards: a planted `.NAME.tmp` symlink beside `nginx.write_to` made the daemon write the
    nginx config into its target; a directory others can write into is refused."""
    conf, target = tmp_path / "conf", tmp_path / "victim"
    conf.mkdir()
    target.write_text("precious")
    dest = conf / "model-starter.conf"
    (conf / ".model-starter.conf.tmp").symlink_to(target)
    assert await reloader_for(tmp_path, dest, None)._update_nginx(str(dest)) == "written"
    assert target.read_text() == "precious"
    assert "server" in dest.read_text() or "location" in dest.read_text()
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    result = await reloader_for(tmp_path, shared / "x.conf", None)._update_nginx(
        str(shared / "x.conf"))
    assert result.startswith("write failed") and "writable by other users" in result


# -- item 7: logs bounded as they are written ------------------------------------------------


async def test_log_is_bounded_as_it_is_written(tmp_path: Path) -> None:
    """Guards: logs were bounded only by a 5 s housekeeping pass (and the inference server's
    never): a chatty process writing 2 MB past a 16 KB bound. No housekeeping runs here."""
    bound = 16 * 1024
    script = ("import sys\nfor i in range(20000):\n"
              "    sys.stdout.write(f'line {i:06d} ' + 'y' * 90 + '\\n'); sys.stdout.flush()\n"
              "print('the end', flush=True)\n")
    logs = tmp_path / "logs"
    launcher = ProcessLauncher(process_spec([sys.executable, "-c", script]),
                               LogFile(logs / "m.log", bound), tmp_path / "state")
    await launcher.start()
    exited = launcher.exited
    assert exited is not None
    await asyncio.wait_for(exited, 60)
    await settle()
    assert (logs / "m.log").stat().st_size <= bound
    assert (logs / "m.log.1").stat().st_size <= bound
    assert launcher.tail(1) == ["the end"]


# -- item 9: commands get the minimal environment --------------------------------------------


async def test_reload_command_gets_the_minimal_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Guards: `reload_command` ran with the daemon's whole environment (its token)."""
    monkeypatch.setenv("MODEL_STARTER_TOKEN", "sk-secret")
    dump = tmp_path / "env.json"
    command = [sys.executable, "-c",
               f"import json, os; open({str(dump)!r}, 'w').write(json.dumps(dict(os.environ)))"]
    conf = tmp_path / "conf"
    conf.mkdir()
    dest = conf / "inc.conf"
    result = await reloader_for(tmp_path, dest, command)._update_nginx(str(dest))
    assert result == "written and reloaded"
    env = json.loads(dump.read_text())
    assert "MODEL_STARTER_TOKEN" not in env
    assert "sk-secret" not in json.dumps(env)


def test_readme_installs_the_config_for_the_service_group() -> None:
    """Guards: the README installed config.yaml (which may hold admin_token) 0644."""
    readme = (ROOT / "README.md").read_text()
    assert "install -D -m 0640 -g model-starter config.yaml" in readme
    assert "-m 0644 config.yaml" not in readme


# -- item 12: bounds and config errors -------------------------------------------------------


async def test_total_held_requests_are_bounded() -> None:
    """Guards: `max_waiting` bounded each model, nothing bounded them all together."""
    clock = FakeClock()
    total = HeldTotal(2)
    sups = []
    for name in ("a", "b"):
        launcher = FakeLauncher(clock, [1.0])
        launcher.start_gate = asyncio.Event()
        sups.append((ModelSupervisor(spec(name), launcher, FakeHealth(launcher), clock=clock,
                                     held_total=total), launcher))
    (a, la), (b, lb) = sups
    held = [asyncio.create_task(a.ensure_ready()), asyncio.create_task(a.ensure_ready())]
    await settle()
    with pytest.raises(StartError) as info:
        await b.ensure_ready()
    assert str(info.value.reason) == "queue_full" and "max_held 2" in info.value.detail
    la.start_gate.set()
    lb.start_gate.set()
    await asyncio.gather(*held)
    assert total.count == 0
    assert await b.ensure_ready() is False  # room again
    config = parse_config("models:\n  m:\n    command: [x]\n    port: 9\n", environ={})
    assert config.max_held == 4096


def test_log_dir_default_follows_state_dir(tmp_path: Path) -> None:
    """Guards: the README says `<state_dir>/logs`; the code used the default state dir."""
    config = parse_config(f"state_dir: {tmp_path}/st\nmodels:\n  m:\n    command: [x]\n"
                          "    port: 9\n", str(tmp_path / "c.yaml"), environ={})
    assert config.log_dir == f"{tmp_path}/st/logs"


def test_process_model_on_the_inference_servers_port_is_a_config_error() -> None:
    """Guards: a process model on the inference server's address took its V2 models' traffic."""
    text = ("inference_server: {host: 127.0.0.1, port: 5002}\nmodels:\n"
            "  v:\n    launcher: v2\n"
            "  p:\n    command: [x]\n    host: localhost\n    port: 5002\n")
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml", environ={})
    assert any("models.p" in p and "inference server" in p for p in info.value.problems)
