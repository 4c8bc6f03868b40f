"""A model inside a multi-model server, driven by the KServe V2 model-repository API.

Works with Seldon MLServer and NVIDIA Triton. Facts it relies on (MLServer 1.7.1):
every call carries ``Content-Type: application/json`` (else 422); loading an already
loaded model is a full reload, so ready is checked first; while loading, ready answers
400 (Triton: "not ready" can be 400 before 24.01) and an unloaded model answers 404,
exactly like an unknown one; ``/v2/health/ready`` is 400 while any model loads, so the
server's liveness is ``/v2/health/live``; error bodies are ``{"error": ...}``, but a 500
may be plain text.
"""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp

from model_starter.config import InferenceServer, V2Spec
from model_starter.inference import InferenceServerProcess
from model_starter.launchers.base import FailureReason, LauncherKind, StartError
from model_starter.protocol import V2_NOT_LOADED_STATUSES

__all__ = ["ServerCalls", "V2Launcher", "v2_error"]

log = logging.getLogger("model_starter.launcher")

JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


def v2_error(status: int, body: bytes) -> str:
    """The server's error message: `{"error": ...}` when JSON, else the start of the text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return f"HTTP {status}: {text[:500] or '(empty body)'}"
    if isinstance(data, dict) and "error" in data:
        return f"HTTP {status}: {data['error']}"
    return f"HTTP {status}: {text[:500]}"


class ServerCalls:
    """The daemon's own calls to the inference server now under way (loads, probes, the
    repository index for the status): the activity monitor must not take their
    connections for the models' requests."""

    def __init__(self) -> None:
        self.under_way = 0


class V2Launcher:
    kind: LauncherKind = "v2"
    owns_process = False

    def __init__(
        self,
        spec: V2Spec,
        server: InferenceServer,
        session: aiohttp.ClientSession,
        process: InferenceServerProcess | None = None,
        calls: ServerCalls | None = None,
    ) -> None:
        self.spec = spec
        self.server = server
        self.session = session
        self.process = process  # the server, when the daemon runs it
        self.calls = calls if calls is not None else ServerCalls()
        self.name = spec.v2_name or spec.name
        host = f"[{server.host}]" if ":" in server.host else server.host
        self.base = f"http://{host}:{server.port}"
        self._exited: asyncio.Future[int] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.launcher.pid if self.process is not None else None

    @property
    def exited(self) -> asyncio.Future[int] | None:
        """The inference server's exit, when the daemon runs it: its models go with it."""
        return self._exited

    @property
    def log_error(self) -> str | None:
        return None  # no log file of ours

    @property
    def activity_port(self) -> int | None:
        return None  # the port is shared by every model of the server

    async def _call(self, method: str, path: str, timeout: float) -> tuple[int, bytes]:
        self.calls.under_way += 1
        try:
            async with self.session.request(
                method, self.base + path, headers=JSON_HEADERS,
                data=b"{}" if method == "POST" else None,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                return resp.status, await resp.read()
        finally:
            self.calls.under_way -= 1

    async def _server_up(self) -> None:
        if self.process is not None:
            await self.process.ensure_up()  # starts the server if it is down (single flight)
            self._exited = self.process.exited
            return
        try:
            status, body = await self._call("GET", self.server.health, 5)
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        else:
            if 200 <= status < 300:
                return
            reason = v2_error(status, body)
        raise StartError(
            FailureReason.INFERENCE_SERVER_DOWN,
            f"the inference server at {self.server.host}:{self.server.port} is not reachable "
            f"({reason}); model '{self.spec.name}' cannot be loaded",
            retry_after=10,
        )

    async def _is_ready(self) -> bool:
        try:
            status, _ = await self._call("GET", f"/v2/models/{self.name}/ready", 5)
        except (aiohttp.ClientError, TimeoutError):
            return False
        return status == 200

    async def start(self) -> None:
        await self._server_up()
        if await self._is_ready():
            return  # loaded already: a load would be a full reload
        try:
            status, body = await self._call(
                "POST", f"/v2/repository/models/{self.name}/load", self.spec.startup_timeout
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StartError(FailureReason.LOAD_FAILED, f"loading '{self.name}' failed: "
                             f"{type(exc).__name__}: {exc}", retry_after=10) from None
        if not 200 <= status < 300:
            raise StartError(
                FailureReason.LOAD_FAILED,
                f"the inference server refused to load '{self.name}': {v2_error(status, body)}",
                log_tail=self.tail(), retry_after=10,
            )

    async def stop(self) -> None:
        try:
            status, body = await self._call(
                "POST", f"/v2/repository/models/{self.name}/unload", self.spec.stop_timeout + 5
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("model=%s unload failed: %s", self.spec.name, exc)
            return
        if not 200 <= status < 300 and status != 404:
            log.warning("model=%s unload: %s", self.spec.name, v2_error(status, body))

    async def adopt(self) -> bool:
        if self.process is not None:
            if not self.process.running:
                return False
            self._exited = self.process.exited
        return await self._is_ready()

    async def index_states(self) -> dict[str, str]:
        """Model name -> state from the repository index (POST with body {}). MLServer says
        READY/UNKNOWN (loading)/UNAVAILABLE; Triton also LOADING/UNLOADING, and lists a
        never-loaded model without a state ("" here). Empty when the server is down."""
        try:
            status, body = await self._call("POST", "/v2/repository/index", 5)
            data = json.loads(body) if status == 200 else []
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return {}
        if not isinstance(data, list):
            return {}
        return {str(m.get("name")): str(m.get("state", "")) for m in data if isinstance(m, dict)}

    async def server_state(self) -> str | None:
        return (await self.index_states()).get(self.name)

    def replay_safe(self, first_status: int | None) -> bool:
        return first_status in V2_NOT_LOADED_STATUSES

    def tail(self, lines: int = 20) -> list[str]:
        return self.process.launcher.tail(lines) if self.process is not None else []

    def maintain(self) -> None:
        return None
