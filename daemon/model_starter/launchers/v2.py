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
from typing import TYPE_CHECKING

import aiohttp

from model_starter.config import InferenceServer, V2Spec
from model_starter.launchers.base import StartError

if TYPE_CHECKING:
    from model_starter.supervisor import ModelSupervisor

__all__ = ["V2Launcher", "v2_error"]

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


class V2Launcher:
    kind = "v2"
    owns_process = False

    def __init__(
        self,
        spec: V2Spec,
        server: InferenceServer,
        session: aiohttp.ClientSession,
        server_supervisor: ModelSupervisor | None = None,
    ) -> None:
        self.spec = spec
        self.server = server
        self.session = session
        self.server_supervisor = server_supervisor
        self.name = spec.v2_name or spec.name
        host = f"[{server.host}]" if ":" in server.host else server.host
        self.base = f"http://{host}:{server.port}"
        self._exited: asyncio.Future[int] | None = None

    @property
    def pid(self) -> int | None:
        sup = self.server_supervisor
        return sup.launcher.pid if sup is not None else None

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
        async with self.session.request(
            method, self.base + path, headers=JSON_HEADERS,
            data=b"{}" if method == "POST" else None,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            return resp.status, await resp.read()

    async def _server_up(self) -> None:
        sup = self.server_supervisor
        if sup is not None:
            await sup.ensure_ready()  # starts the server if it is down (single flight)
            self._exited = sup.launcher.exited
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
            "inference_server_down",
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
            raise StartError("load_failed", f"loading '{self.name}' failed: "
                             f"{type(exc).__name__}: {exc}", retry_after=10) from None
        if not 200 <= status < 300:
            raise StartError(
                "load_failed",
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
        sup = self.server_supervisor
        if sup is not None:
            if sup.state != "ready":
                return False
            self._exited = sup.launcher.exited
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

    def tail(self, lines: int = 20) -> list[str]:
        sup = self.server_supervisor
        return sup.launcher.tail(lines) if sup is not None else []

    def maintain(self) -> None:
        return None
