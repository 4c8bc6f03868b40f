"""Test harness for a real Seldon MLServer 1.7.1 (KServe V2 protocol, scikit-learn runtime).

MLServer lives in its own venv, ``.venv-mlserver`` (``bash scripts/install-mlserver.sh``),
so its dependencies never meet the project's.  This module only uses the standard
library; the models are trained by that venv's python in a subprocess.

Typical use::

    if not mlserver.available():
        pytest.skip(mlserver.SKIP_REASON)
    repo = mlserver.make_repository(tmp_path / "repo", ["iris", "iris2"],
                                    http_port=free_port(), grpc_port=free_port())
    proc = subprocess.Popen(mlserver.mlserver_command(repo), cwd=repo,
                            env=mlserver.mlserver_env(), ...)
    # or: with mlserver.running(repo, tmp_path / "mlserver.log") as srv: ...

The repository holds one folder per model name (``model.joblib`` + ``model-settings.json``,
version ``v1``) and a ``settings.json`` with host 127.0.0.1 and both ports, no metrics
server, no parallel workers and no model loaded at startup: models load only through
``POST /v2/repository/models/<name>/load``.

Facts observed on MLServer 1.7.1 with these settings (by hand, against the real server):

* Live (``GET /v2/health/live`` 200) ~0.7 s after spawn; SIGTERM exits 0 within ~0.6 s.
  It listens on exactly two sockets: 127.0.0.1:http_port and [::ffff:127.0.0.1]:grpc_port.
* ``GET /v2/health/live``: 200, empty body, no Content-Type.  ``GET /v2/health/ready``:
  200 empty when every registered model is ready (so also with none loaded), 400 empty
  while any model is loading.
* ``POST /v2/repository/models/<m>/load`` answers once the model is loaded: 200, empty
  body.  It never reads the body: no body, ``{}``, junk, any Content-Type all work.
  Unknown name: 404 ``{"error":"Model <m> not found"}``.  Loading a loaded model is a
  full reload (new instance loaded, then the old one unloaded; "Reloaded model" logged).
  ``.../unload``: 200 empty; 404 ``{"error":"Model <m> not found"}`` when not loaded.
* A scikit-learn load blocks MLServer's event loop (``parallel_workers: 0``): for the
  ~0.6 s of the first load (it imports scikit-learn; later loads take ~3 ms) the server
  answers nothing, and the queued requests are then answered as "loaded".  To see the
  loading state, give a model a ``load_delay`` (an ``asyncio.sleep`` before the load):
  then ``/v2/models/<m>/ready`` is 400 (empty body), ``/v2/health/ready`` 400, the index
  state ``UNKNOWN`` and ``/infer`` 400 ``{"error":"Model <m> is not ready yet."}``; an
  unload during the load answers 200 at once and the load then answers 404.
* ``GET /v2/models/<m>/ready``: 200 empty body when loaded; 404
  ``{"error":"Model <m> not found"}`` when not loaded or unknown.
* ``POST /v2/repository/index`` needs a JSON body (``{}``; no body gives 422) and lists
  every model as ``{"name","version":"v1","state","reason":""}``: ``UNAVAILABLE`` when
  not loaded, ``UNKNOWN`` while loading, ``READY`` when loaded.
* ``POST /v2/models/<m>/infer``: 404 ``{"error":"Model <m> not found"}`` when not loaded;
  200 with ``outputs[0]`` = ``{"name":"predict","shape":[1,1],"datatype":"INT64",...,
  "data":[0]}`` for ``infer_body()``.  The body must be JSON with Content-Type
  ``application/json`` or none (``text/plain`` or a form type give 422).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.stack import Response, request

ROOT = Path(__file__).resolve().parent.parent
MLSERVER_VENV: Path = ROOT / ".venv-mlserver"
MLSERVER_PYTHON: Path = MLSERVER_VENV / "bin" / "python"
MLSERVER_BIN: Path = MLSERVER_VENV / "bin" / "mlserver"
MLSERVER_VERSION = "1.7.1"
SKIP_REASON = "MLServer is not installed: run `bash scripts/install-mlserver.sh`"

IMPLEMENTATION = "mlserver_sklearn.SKLearnModel"
SLOW_IMPLEMENTATION = "slow_sklearn.SlowSKLearnModel"  # in the model's folder (load_delay)
MODEL_VERSION = "v1"

# One iris flower (sepal length, sepal width, petal length, petal width): a setosa.
IRIS_ROW: tuple[float, float, float, float] = (5.1, 3.5, 1.4, 0.2)
# What every model of make_repository predicts for IRIS_ROW: class 0 (setosa).
IRIS_PREDICTION = 0
# More rows and their classes (0 setosa, 1 versicolor, 2 virginica), for batch requests.
IRIS_ROWS: tuple[tuple[float, float, float, float], ...] = (
    (5.1, 3.5, 1.4, 0.2),
    (5.9, 3.0, 4.2, 1.5),
    (6.7, 3.0, 5.2, 2.3),
)
IRIS_PREDICTIONS: tuple[int, ...] = (0, 1, 2)

# Trained by MLSERVER_PYTHON: a deterministic LogisticRegression (lbfgs, no randomness)
# on the iris data that scikit-learn ships (no download), saved with joblib.  It checks
# its own predictions so a version drift is caught here, not as a confusing test failure.
_TRAIN = """
import sys
import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

rows, expected, out = eval(sys.argv[1]), eval(sys.argv[2]), sys.argv[3]
X, y = load_iris(return_X_y=True)
model = LogisticRegression(max_iter=1000).fit(X, y)
got = [int(v) for v in model.predict(rows)]
if got != expected:
    sys.exit(f"unexpected predictions {got}, wanted {expected}")
joblib.dump(model, out)
"""


# MLServer imports an implementation from the model's own folder.
_SLOW_RUNTIME = """\
import asyncio

from mlserver_sklearn import SKLearnModel


class SlowSKLearnModel(SKLearnModel):
    async def load(self) -> bool:
        await asyncio.sleep(float(self.settings.parameters.extra["load_delay"]))
        return await super().load()
"""


@functools.cache
def available() -> bool:
    """True when .venv-mlserver has MLServer 1.7.1 and its scikit-learn runtime."""
    if not (MLSERVER_PYTHON.exists() and MLSERVER_BIN.exists()):
        return False
    check = (
        "from importlib.metadata import version; "
        f"assert version('mlserver') == {MLSERVER_VERSION!r}; "
        f"assert version('mlserver-sklearn') == {MLSERVER_VERSION!r}; "
        "import sklearn, joblib"
    )
    try:
        done = subprocess.run(
            [str(MLSERVER_PYTHON), "-c", check], capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@functools.cache
def _trained_model() -> bytes:
    """The joblib bytes of the iris model; trained once per test session."""
    with tempfile.TemporaryDirectory(prefix="mlserver-train-") as tmp:
        out = Path(tmp) / "model.joblib"
        subprocess.run(
            [
                str(MLSERVER_PYTHON),
                "-c",
                _TRAIN,
                repr([list(r) for r in IRIS_ROWS]),
                repr(list(IRIS_PREDICTIONS)),
                str(out),
            ],
            check=True,
            capture_output=True,
            timeout=120,
            cwd=tmp,
            env=mlserver_env(),
        )
        return out.read_bytes()


def make_repository(
    root: Path,
    names: Sequence[str],
    *,
    http_port: int,
    grpc_port: int,
    host: str = "127.0.0.1",
    settings: dict[str, Any] | None = None,
    load_delay: Mapping[str, float] | None = None,
) -> Path:
    """Create an MLServer model repository at ``root`` (created if missing) and return it.

    One folder per name, each with the same trained iris model (``model.joblib``) and a
    ``model-settings.json`` (name, ``mlserver_sklearn.SKLearnModel``, version ``v1``).
    ``settings.json`` binds HTTP and gRPC to ``host`` (settings.json wins over MLSERVER_*
    environment variables), disables the metrics server and parallel workers, and loads
    no model at startup.  ``settings`` entries are merged over those defaults.

    ``load_delay`` maps some of the names to seconds: those models sleep that long
    (without blocking MLServer) before loading, so their loading state can be observed.
    """
    if not available():
        raise RuntimeError(SKIP_REASON)
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    state = root / ".mlserver"  # where MLServer would put .envs / .metrics instead of its cwd
    state.mkdir(exist_ok=True)
    model = _trained_model()
    for name in names:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.joblib").write_bytes(model)
        parameters: dict[str, Any] = {"uri": "./model.joblib", "version": MODEL_VERSION}
        model_settings = {"name": name, "implementation": IMPLEMENTATION, "parameters": parameters}
        if load_delay and name in load_delay:
            (folder / "slow_sklearn.py").write_text(_SLOW_RUNTIME)
            model_settings["implementation"] = SLOW_IMPLEMENTATION
            parameters["extra"] = {"load_delay": float(load_delay[name])}
        (folder / "model-settings.json").write_text(json.dumps(model_settings, indent=2) + "\n")
    server_settings: dict[str, Any] = {
        "host": host,
        "http_port": http_port,
        "grpc_port": grpc_port,
        "parallel_workers": 0,
        "load_models_at_startup": False,
        "metrics_endpoint": None,
        "kafka_enabled": False,
        "environments_dir": str(state / "envs"),
        "metrics_dir": str(state / "metrics"),
    }
    server_settings.update(settings or {})
    (root / "settings.json").write_text(json.dumps(server_settings, indent=2) + "\n")
    return root


def repository_settings(repo: Path) -> dict[str, Any]:
    """The repository's settings.json (e.g. ``repository_settings(repo)["http_port"]``)."""
    data: dict[str, Any] = json.loads((Path(repo) / "settings.json").read_text())
    return data


def mlserver_command(repo: Path) -> list[str]:
    """argv that serves ``repo`` (host and ports come from its settings.json).

    The process is MLServer itself (no wrapper), so its PID is the one to signal; it
    exits on SIGTERM/SIGINT.  Run it with ``cwd=repo`` and ``env=mlserver_env()``:
    MLServer reads a ``.env`` file in its working directory and MLSERVER_* variables.
    """
    return [str(MLSERVER_BIN), "start", str(Path(repo).resolve())]


def mlserver_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default os.environ) without MLSERVER_* variables, unbuffered output."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("MLSERVER_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def infer_body(rows: Sequence[Sequence[float]] = (IRIS_ROW,), datatype: str = "FP64") -> dict[str, Any]:
    """A V2 inference request: ``rows`` as one [len(rows), 4] tensor.

    The answer (200) has ``outputs[0]`` = ``{"name": "predict", "shape": [n, 1],
    "datatype": "INT64", "parameters": {"content_type": "np"}, "data": [...]}``: for the
    default body ``data == [IRIS_PREDICTION]`` (0), for ``IRIS_ROWS`` ``IRIS_PREDICTIONS``.
    Send it as JSON with ``Content-Type: application/json`` (without it MLServer says 422).
    """
    flat = [float(v) for row in rows for v in row]
    return {"inputs": [{"name": "input-0", "shape": [len(rows), 4], "datatype": datatype, "data": flat}]}


def predictions(response: dict[str, Any]) -> list[int]:
    """The ``predict`` output of a V2 inference response, as a list of classes."""
    for output in response["outputs"]:
        if output["name"] == "predict":
            return [int(v) for v in output["data"]]
    raise KeyError(f"no predict output in {response!r}")


Reply = Response


def call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
    host: str = "127.0.0.1",
) -> Reply:
    """One HTTP request; a dict/list body is sent as JSON with its Content-Type."""
    hdrs = dict(headers or {})
    data: bytes | None
    if body is None or isinstance(body, bytes):
        data = body
    else:
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    return request(port, method, path, data, hdrs, timeout, host)


def is_live(port: int, host: str = "127.0.0.1") -> bool:
    try:
        return call(port, "GET", "/v2/health/live", timeout=2, host=host).status == 200
    except OSError:
        return False


@dataclass
class Running:
    """A started MLServer: its process, repository, ports and log."""

    proc: subprocess.Popen[bytes]
    repo: Path
    http_port: int
    grpc_port: int
    log: Path

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> Reply:
        return call(self.http_port, method, path, body, **kw)

    def load(self, name: str) -> Reply:
        return self.call("POST", f"/v2/repository/models/{name}/load")

    def unload(self, name: str) -> Reply:
        return self.call("POST", f"/v2/repository/models/{name}/unload")

    def index(self) -> dict[str, str]:
        """{model name: state} from ``POST /v2/repository/index`` with body {}."""
        reply = self.call("POST", "/v2/repository/index", {})
        assert reply.status == 200, reply
        return {item["name"]: item["state"] for item in reply.json()}

    def infer(self, name: str, body: dict[str, Any] | None = None) -> Reply:
        return self.call("POST", f"/v2/models/{name}/infer", infer_body() if body is None else body)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start(repo: Path, log: Path) -> subprocess.Popen[bytes]:
    """Spawn ``mlserver_command(repo)`` with its output in ``log``; the caller stops it."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            mlserver_command(repo),
            cwd=repo,
            env=mlserver_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int | None:
    """SIGTERM by PID, SIGKILL after ``timeout``; returns the exit status."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


def wait_live(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 60.0) -> float:
    """Wait for /v2/health/live to answer 200; returns the seconds waited."""
    t0 = time.monotonic()
    while not is_live(port):
        if proc.poll() is not None:
            raise RuntimeError(f"MLServer exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"MLServer not live after {timeout}s:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)
    return time.monotonic() - t0


@contextlib.contextmanager
def running(repo: Path, log: Path, timeout: float = 60.0) -> Iterator[Running]:
    """Start MLServer on ``repo``, wait until live, yield it, stop it by PID."""
    settings = repository_settings(repo)
    proc = start(repo, log)
    try:
        wait_live(proc, int(settings["http_port"]), log, timeout)
        yield Running(proc, Path(repo), int(settings["http_port"]), int(settings["grpc_port"]), log)
    finally:
        stop(proc)


def listening_sockets(pid: int) -> list[str]:
    """Local addresses (``ss -ltnH`` form) of the TCP sockets that ``pid`` listens on."""
    ss = shutil.which("ss")
    if ss is None:
        raise RuntimeError("ss (iproute2) is not installed")
    out = subprocess.run([ss, "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3] for line in out.splitlines() if f"pid={pid}," in line]
