"""The `model-starter` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from model_starter.cli_logs import add_logs_arguments, logs_command
from model_starter.config import Config, ConfigError, capacity_warnings, load_config
from model_starter.protocol import CLIENT_HEADER, admin_path

__all__ = ["main"]

DEFAULT_CONFIG = os.environ.get("MODEL_STARTER_CONFIG", "config.yaml")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="model-starter", description="Start inference models on demand behind nginx."
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        sp.add_argument("--config", "-c", default=DEFAULT_CONFIG, help="YAML model list")
        return sp

    serve = cmd("serve", "run the daemon in the foreground")
    serve.add_argument("--listen", help="HOST:PORT, overrides `listen` from the config")
    serve.add_argument("--node", default=os.environ.get("MODEL_STARTER_NODE") or None,
                       help="supervise this node's models only (`nodes:`; "
                            "default $MODEL_STARTER_NODE)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    serve.add_argument("--log-format", default="text", choices=["text", "json"],
                       help="text lines (default) or JSON lines")
    cmd("check", "validate the config; exit 2 listing every problem")
    ng = cmd("nginx", "print the nginx include")
    ng.add_argument("--style", choices=["conf.d", "locations"], default="conf.d",
                    help="conf.d: an http-level drop-in with its own server block; "
                         "locations: locations for your own server block + an upstreams file")
    ng.add_argument("--output-dir", help="write the file(s) here instead of printing")
    cmd("status", "show the models of the running daemon").add_argument(
        "--json", action="store_true", help="print the raw JSON")
    for name in ("start", "stop"):
        cmd(name, f"{name} a model in the running daemon").add_argument("model")
    cmd("reload", "make the running daemon re-read its config (like SIGHUP)")
    doc = cmd("doctor", "what concurrency the running nginx and daemon allow; how to raise it")
    doc.add_argument("--target", type=int, default=1000, help="concurrent clients to allow")
    doc.add_argument("--nginx-conf", help="nginx.conf to read (default: nginx's own)")
    add_logs_arguments(cmd("logs", "print a model's log from the running daemon (-f follows it)"))
    return p


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = _load(args.config)
    if args.cmd in ("check", "nginx"):
        from model_starter.nginx_openai import njs_note

        note = njs_note(config)
        if note:
            print(note, file=sys.stderr)
    if args.cmd == "check":
        print(f"{args.config}: OK, {len(config.models)} model(s): {', '.join(config.models)}")
        for warning in capacity_warnings(config):
            print(f"warning: {warning}")
        return 0
    if args.cmd == "nginx":
        return _nginx(config, args.style, args.output_dir)
    if args.cmd == "doctor":
        return _doctor(config, args.target, args.nginx_conf)
    if args.cmd == "serve":
        from model_starter.fleet import narrow
        from model_starter.serve import serve

        try:
            config = narrow(config, args.node)
        except ConfigError as exc:
            print(*exc.problems, sep="\n", file=sys.stderr)
            return 2
        return serve(config, args.config, listen=args.listen, log_level=args.log_level,
                     log_format=args.log_format)
    return _client(config, args)


def _nginx(config: Config, style: str, output_dir: str | None) -> int:
    from model_starter.nginx import render_files

    for name, content in render_files(config, style):
        if output_dir is None:
            sys.stdout.write(content)
        else:
            path = Path(output_dir) / name
            path.write_text(content, encoding="utf-8")
            print(f"wrote {path}", file=sys.stderr)
    return 0


def _doctor(config: Config, target: int, nginx_conf: str | None) -> int:
    from model_starter import doctor

    try:
        settings = doctor.parse_nginx_dump(doctor.run_nginx_dump(conf=nginx_conf))
    except (OSError, RuntimeError) as exc:
        print(f"cannot read nginx's configuration: {exc}", file=sys.stderr)
        return 1
    pid = doctor.daemon_pid(config.listen_port)
    daemon_files = None if pid is None else (doctor.nofile_limit(pid) or (None, None))[0]
    findings = doctor.diagnose(settings, doctor.worker_nofile(settings.pid_file), daemon_files,
                               target)
    sys.stdout.write(doctor.render(findings))
    return 1 if any(f.level == "warn" for f in findings) else 0


def _client(config: Config, args: argparse.Namespace) -> int:
    base = f"http://{_connect_host(config.listen_host)}:{config.listen_port}"
    token = config.admin_token
    if args.cmd == "logs":
        return logs_command(base, token, args, config.listen)
    if config.nodes:
        from model_starter.fleet_cli import fleet_call

        code, body = fleet_call(config, args.cmd, getattr(args, "model", None))
    elif args.cmd == "status":
        code, body = _call("GET", base + admin_path("status"), token)
    elif args.cmd == "reload":
        code, body = _call("POST", base + admin_path("reload"), token)
    else:
        code, body = _call("POST", base + admin_path(args.cmd, args.model), token)
    if code is None:
        print(f"model-starter is not running at {config.listen} ({body})", file=sys.stderr)
        return 1
    if args.cmd == "status" and not args.json and (code == 200 or "nodes" in body):
        _print_table(body.get("models", []))
        for node in body.get("nodes", []):
            if not node["reachable"]:
                print(f"node {node['node']} ({node['daemon']}) unreachable: {node['error']}")
    else:
        print(json.dumps(body, indent=2))
    return 0 if code == 200 else 1


def _connect_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _call(method: str, url: str, token: str | None) -> tuple[int | None, Any]:
    headers = {CLIENT_HEADER: "cli", **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(url, method=method, headers=headers)  # noqa: S310 - our daemon
    try:
        with urllib.request.urlopen(req, timeout=3600) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {"error": f"HTTP {exc.code}"}
    except (urllib.error.URLError, OSError) as exc:
        return None, str(getattr(exc, "reason", exc))


def _print_table(models: list[dict[str, Any]]) -> None:
    fleet = any("node" in m for m in models)
    cols = (*(("node",) if fleet else ()), "name", "state", "pid", "port", "held", "starts",
            "last_error")
    rows = [
        [
            *((str(m.get("node")),) if fleet else ()),
            str(m.get("name")), str(m.get("state")), str(m.get("pid") or "-"),
            str(m.get("port")), str(m.get("held")), str(m.get("starts")),
            (m.get("last_error") or {}).get("detail", "-") if m.get("last_error") else "-",
        ]
        for m in models
    ]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c)
              for i, c in enumerate(cols)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


logging.getLogger("model_starter").addHandler(logging.NullHandler())
