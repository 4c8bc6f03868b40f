"""Config validation: every problem, with file:line, all at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from model_starter.config import (
    LAUNCHERS,
    CommandSpec,
    ConfigError,
    LauncherKind,
    ProcessSpec,
    V2Spec,
    parse_config,
)
from model_starter.config.reference import markdown
from model_starter.config.schema import SPEC_TYPES

ROOT = Path(__file__).resolve().parent.parent

GOOD = """\
listen: 127.0.0.1:8080
models:
  llama-8b:
    command: ["llama-server", "--port", 9001]
    port: 9001
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml", environ={})
    return info.value.problems


def test_minimal_config_gets_defaults() -> None:
    """A minimal config is valid and gets the documented defaults."""
    cfg = parse_config(GOOD, "c.yaml", environ={})
    spec = cfg.models["llama-8b"]
    assert spec.command == ("llama-server", "--port", "9001")
    assert (spec.host, spec.health, spec.startup_timeout, spec.idle_timeout) == (
        "127.0.0.1", "/health", 600.0, 900.0)
    assert (cfg.listen_host, cfg.listen_port) == ("127.0.0.1", 8080)
    assert cfg.nginx.listen == "127.0.0.1:8000"
    assert (cfg.inference_host, cfg.inference_port) == ("localhost", 5002)


def test_inference_server_from_environment() -> None:
    """INFERENCE_SERVER_HOST/PORT fill inference_server when the file does not set it."""
    env = {"INFERENCE_SERVER_HOST": "gpu-box", "INFERENCE_SERVER_PORT": "7000"}
    cfg = parse_config(GOOD, "c.yaml", environ=env)
    assert (cfg.inference_host, cfg.inference_port) == ("gpu-box", 7000)
    cfg = parse_config(GOOD + "inference_server: {host: a, port: 1}\n", "c.yaml", environ=env)
    assert (cfg.inference_host, cfg.inference_port) == ("a", 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD + "bogus: 1\n", ["c.yaml:6: bogus: unknown key"]),
        (GOOD + "    colour: red\n", ["c.yaml:6: models.llama-8b.colour: unknown key"]),
        (GOOD.replace("port: 9001", "port: 70000"), ["c.yaml:5: models.llama-8b.port: expected a port"]),
        (GOOD.replace("port: 9001", "port: nine"), ["c.yaml:5: models.llama-8b.port: expected a port"]),
        (GOOD.replace("port: 9001", "port: true"), ["c.yaml:5: models.llama-8b.port"]),
        (GOOD.replace("llama-8b:", "-bad name:"), ["c.yaml:3: models.-bad name: model names must"]),
        (GOOD.replace("llama-8b:", "_ms:"), ["c.yaml:3: models._ms: model names must"]),
        (GOOD.replace("llama-8b:", "x" * 65 + ":"), ["c.yaml:3: models.xxx"]),
        (GOOD.replace('    command: ["llama-server", "--port", 9001]\n', ""),
         ["c.yaml:4: models.llama-8b: missing required key 'command'"]),
        (GOOD.replace('["llama-server", "--port", 9001]', '"llama-server --port 9001"'),
         ["c.yaml:4: models.llama-8b.command: expected a non-empty list"]),
        (GOOD.replace('["llama-server", "--port", 9001]', "[]"),
         ["c.yaml:4: models.llama-8b.command: expected a non-empty list"]),
        (GOOD + "    startup_timeout: -1\n", ["c.yaml:6: models.llama-8b.startup_timeout"]),
        (GOOD + "    health: health\n", ["c.yaml:6: models.llama-8b.health: expected an HTTP path"]),
        (GOOD + "    stop_signal: SIGNOPE\n", ["c.yaml:6: models.llama-8b.stop_signal"]),
        (GOOD + "    env: {A: [1]}\n", ["c.yaml:6: models.llama-8b.env.A: expected a string"]),
        (GOOD.replace("127.0.0.1:8080", "8080"), ["c.yaml:1: listen: expected HOST:PORT"]),
        (GOOD + "  other:\n    command: [x]\n    port: 9001\n",
         ["c.yaml:6: models.other: 127.0.0.1:9001 is already used by model 'llama-8b'"]),
        (GOOD + "  other:\n    command: [x]\n    port: 9001\n    host: localhost\n",
         ["c.yaml:6: models.other: localhost:9001 is already used by model 'llama-8b'"]),
        ("models: {}\n", ["c.yaml:1: models: at least one model is required"]),
        ("listen: 1:2\n", ["c.yaml:1: : missing required key 'models'"]),
        ("", ["c.yaml:1: the file is empty"]),
        ("models: [\n", ["c.yaml:2: invalid YAML"]),
        ("- a\n", ["c.yaml:1: : expected a mapping"]),
        (GOOD + "nginx: {listen: 1, colour: 2}\n", ["c.yaml:6: nginx.colour: unknown key"]),
        (GOOD + "models: {}\n", ["c.yaml:6: models: duplicate key"]),
    ],
)
def test_each_problem_is_reported_with_file_and_line(text: str, expected: list[str]) -> None:
    """Each kind of mistake is reported as file:line: where: what."""
    got = problems(text)
    for want in expected:
        assert any(p.startswith(want) for p in got), (want, got)


def test_all_problems_are_reported_at_once() -> None:
    """Several mistakes in one file are all reported, each on its own line."""
    text = """\
listen: nowhere
colour: red
models:
  a:
    command: ls
    port: 0
  b!:
    command: [x]
    port: 1
"""
    got = problems(text)
    assert [p.split(":")[1] for p in got] == ["1", "2", "5", "6", "7"], got


def test_bad_environment_port_is_reported() -> None:
    """A malformed INFERENCE_SERVER_PORT is a config problem, not a crash."""
    with pytest.raises(ConfigError) as info:
        parse_config(GOOD, "c.yaml", environ={"INFERENCE_SERVER_PORT": "x"})
    assert "INFERENCE_SERVER_PORT" in info.value.problems[0]


def test_check_command_exits_2_listing_problems(tmp_path: Path) -> None:
    """`model-starter check` prints every problem and exits 2; a good file exits 0."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD + "bogus: 1\n    \n")
    out = subprocess.run([sys.executable, "-m", "model_starter", "check", "-c", str(bad)],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert f"{bad}:6: bogus: unknown key" in out.stderr
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    out = subprocess.run([sys.executable, "-m", "model_starter", "check", "-c", str(good)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_bundled_config_is_valid() -> None:
    """The config.yaml the README runs is valid."""
    out = subprocess.run([sys.executable, "-m", "model_starter", "check", "-c",
                          str(ROOT / "config.yaml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


LAUNCHER_MODELS = """\
models:
  p: {command: [x], port: 9001, stop_command: [k]}
  c: {launcher: command, start: [s], stop: [t], port: 9002}
  v: {launcher: v2, v2_name: iris}
"""


def test_each_launcher_has_its_spec_type() -> None:
    """A model's spec is the type of its launcher; `launcher` reads the same on each."""
    assert tuple(SPEC_TYPES) == LAUNCHERS == get_args(LauncherKind)
    models = parse_config(LAUNCHER_MODELS, "c.yaml", environ={}).models
    p, c, v = models["p"], models["c"], models["v"]
    assert isinstance(p, ProcessSpec) and (p.launcher, p.command, p.stop_command) == (
        "process", ("x",), ("k",))
    assert isinstance(c, CommandSpec) and (c.launcher, c.start, c.stop, c.status) == (
        "command", ("s",), ("t",), None)
    assert isinstance(v, V2Spec) and (v.launcher, v.v2_name, v.port, v.health) == (
        "v2", "iris", 5002, "/v2/models/iris/ready")


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("{launcher: command, port: 1, stop: [t]}",
         "c.yaml:3: models.m: missing required key 'start' (launcher: command)"),
        ("{launcher: command, start: [s], stop: [t]}",
         "c.yaml:3: models.m: missing required key 'port' (launcher: command)"),
        ("{launcher: v2, command: [x]}", "c.yaml:3: models.m.command: only for launcher: process"),
        ("{command: [x], port: 1, v2_name: y}", "c.yaml:3: models.m.v2_name: only for launcher: v2"),
        ("{command: [x], port: 1, status: [y]}",
         "c.yaml:3: models.m.status: only for launcher: command"),
        ("{launcher: docker}", "c.yaml:3: models.m.launcher: expected one of process, command, v2"),
        ("{command: [x], port: 1, mode: retry}",
         "c.yaml:3: models.m.mode: expected one of error_page, auth_request"),
    ],
)
def test_launcher_rules(model: str, expected: str) -> None:
    """Required and launcher-only keys follow the launcher's spec type."""
    got = problems(f"listen: 127.0.0.1:8080\nmodels:\n  m: {model}\n")
    assert any(p.startswith(expected) for p in got), (expected, got)


def test_readme_tables_are_the_generated_reference() -> None:
    """The README's configuration tables are the schema's (regenerate them with
    `python -m model_starter.config --markdown`)."""
    out = subprocess.run([sys.executable, "-m", "model_starter.config", "--markdown"],
                         capture_output=True, text=True, check=True)
    assert out.stdout == markdown()
    assert markdown() in (ROOT / "README.md").read_text(encoding="utf-8")


PINNED = """\
models:
  pin: {command: [x], port: 9001, pinned: true%s}
  other: {command: [y], port: 9002}
"""


def test_pinned_model_that_is_down_holds_nothing(tmp_path: Path) -> None:
    """One model at a time and a pinned model: the other model is valid; `check` exits 0
    and warns that it runs only while the pinned one is down."""
    path = tmp_path / "pinned.yaml"
    path.write_text(PINNED % "")
    out = subprocess.run([sys.executable, "-m", "model_starter", "check", "-c", str(path)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (f"warning: {path}: models.other: runs only while pinned model 'pin' is down "
            "(while it runs, requests get 503; short of models)") in out.stdout


def test_pinned_models_that_always_run_must_fit_together() -> None:
    """Pinned + preload + idle_timeout 0 models that do not fit together can never work; a
    model larger than the capacity neither."""
    always = ", preload: true, idle_timeout: 0"
    text = PINNED % always + f"  pin2: {{command: [z], port: 9003, pinned: true{always}}}\n"
    assert problems(text) == [
        "c.yaml:2: models: pinned models pin, pin2 (preload, idle_timeout 0) can never run "
        "together: they need 2 of models (capacity 1)"]
    parse_config(PINNED % always, "c.yaml", environ={})  # one of them alone is fine
    big = "resources: {gpu: 10}\nmodels:\n  m: {command: [x], port: 9001, requires: {gpu: 11}}\n"
    assert problems(big) == ["c.yaml:3: models.m.requires.gpu: 11 can never fit: the capacity is 10"]
