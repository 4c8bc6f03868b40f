"""Keep a model's KV cache across stops (llama.cpp server's slot save/restore).

Before a stop (not a crash) the slots holding at least `min_tokens` prompt tokens are
saved; after the next start, before held requests are released, the newest files are
restored into every slot (llama.cpp may pick any idle slot for the next request).

Files live in ``state_dir/kv/<model>/<key>/``. The key hashes the model's command (argv)
and its weights file's path, size and modification time (ns) — no content hash: reading
gigabytes on every start would cost more than the prefill it saves. The engine writes
into ``state_dir/kv/<model>/active/``, a symlink the daemon points at the current key's
folder before it asks for a save or restore (the engine's path is fixed for its life;
the key is not known when its environment is made). Folders of other keys are stale (the
command or the weights changed): they are removed, never restored.

Engines: llama.cpp's server (`/slots` API; `slot_save_path` set, `endpoint_slots` on).
The bundled runner sets both from $MODEL_STARTER_KV_DIR. Others: through `hooks:`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp

from model_starter.config import ModelSpec, ProcessSpec
from model_starter.lifecycle_spec import KvCache, kv_active_dir
from model_starter.llamacpp import resolve_model

__all__ = ["KvPersistence", "KvReport", "KvStore", "cache_key", "weights_file"]

log = logging.getLogger("model_starter.kvcache")

MODEL_FLAGS = ("--model", "-m")
SUFFIX = ".bin"


def weights_file(spec: ProcessSpec, kv: KvCache) -> Path | None:
    """The weights the engine loads: `kv_cache.weights`, else the command's --model / -m."""
    name = kv.weights
    argv = list(spec.command)
    for i, arg in enumerate(argv):
        if name is not None:
            break
        if arg in MODEL_FLAGS and i + 1 < len(argv):
            name = argv[i + 1]
        elif arg.startswith("--model="):
            name = arg.partition("=")[2]
    if name is None:
        return None
    if not Path(name).is_absolute() and spec.cwd is not None and (Path(spec.cwd) / name).exists():
        name = str(Path(spec.cwd) / name)
    return resolve_model(name)  # a path, or the bundled runner's built-in model name


def cache_key(spec: ProcessSpec, weights: Path | None) -> str:
    """Hash of the argv and the weights file's (real path, size, mtime_ns)."""
    ident: Any = None
    if weights is not None:
        st = weights.stat()
        ident = [str(weights.resolve()), st.st_size, st.st_mtime_ns]
    text = json.dumps({"argv": list(spec.command), "weights": ident})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class KvStore:
    """One model's folder of saved slots: ``<root>/<key>/<ms>-slot<id>.bin`` and ``active``."""

    def __init__(self, active_dir: Path) -> None:
        self.active = active_dir
        self.root = active_dir.parent

    def activate(self, key: str) -> list[str]:
        """Point `active` at `key`'s folder; remove every other key's (stale) folder."""
        folder = self.root / key
        folder.mkdir(parents=True, exist_ok=True, mode=0o750)
        tmp = self.root / f".active-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(key)
        if self.active.is_dir() and not self.active.is_symlink():  # made by an engine
            shutil.rmtree(self.active, ignore_errors=True)
        os.replace(tmp, self.active)
        stale = [p for p in self.root.iterdir()
                 if p.is_dir() and not p.is_symlink() and p.name != key]
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        return sorted(p.name for p in stale)

    def files(self, key: str) -> list[Path]:
        """Saved files of `key`, newest first."""
        folder = self.root / key
        if not folder.is_dir():
            return []
        return sorted(folder.glob(f"*{SUFFIX}"), key=lambda p: p.name, reverse=True)

    @staticmethod
    def new_name(slot: int) -> str:
        return f"{time.time_ns() // 1_000_000:015d}-slot{slot}{SUFFIX}"

    def prune(self, key: str, keep: int, budget_bytes: int) -> list[str]:
        """Keep the newest `keep` files, then drop the oldest until within `budget_bytes`."""
        files = self.files(key)
        removed = files[keep:]
        kept = files[:keep]
        total = sum(_size(p) for p in kept)
        while kept and total > budget_bytes:
            oldest = kept.pop()
            total -= _size(oldest)
            removed.append(oldest)
        for path in removed:
            path.unlink(missing_ok=True)
        return [p.name for p in removed]

    def size(self, key: str) -> int:
        return sum(_size(p) for p in self.files(key))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


@dataclass(frozen=True)
class KvReport:
    action: Literal["save", "restore"]
    ok: bool
    detail: str
    key: str | None = None
    files: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()  # stale key folders, or files over the budget
    seconds: float = 0.0
    time: float = field(default_factory=time.time)

    def as_json(self) -> dict[str, object]:
        return {"action": self.action, "ok": self.ok, "detail": self.detail, "key": self.key,
                "files": list(self.files), "removed": list(self.removed),
                "seconds": round(self.seconds, 3), "time": self.time}


class EngineError(Exception):
    """The engine refused or failed a slot request."""


class LlamaCppSlots:
    """llama.cpp server's slot API: GET /slots, POST /slots/{id}?action=save|restore."""

    def __init__(self, spec: ModelSpec, session: aiohttp.ClientSession) -> None:
        self.base = f"http://{spec.host}:{spec.port}"
        self.session = session

    async def slots(self) -> list[tuple[int, int]]:
        """(slot id, prompt tokens it holds) for every slot."""
        data = await self._call("GET", "/slots", None)
        if not isinstance(data, list):
            raise EngineError(f"GET /slots answered {data!r:.200}")
        return [(int(s["id"]), int(s.get("n_prompt_tokens") or 0)) for s in data]

    async def save(self, slot: int, filename: str) -> int:
        data = await self._call("POST", f"/slots/{slot}?action=save", {"filename": filename})
        return int(data.get("n_saved", 0))

    async def restore(self, slot: int, filename: str) -> int:
        data = await self._call("POST", f"/slots/{slot}?action=restore", {"filename": filename})
        return int(data.get("n_restored", 0))

    async def _call(self, method: str, path: str, body: dict[str, str] | None) -> Any:
        async with self.session.request(method, self.base + path, json=body) as resp:
            text = await resp.text(errors="replace")
            if resp.status != 200:
                raise EngineError(f"{method} {path}: HTTP {resp.status}: {text.strip()[:300]}")
            try:
                return json.loads(text)
            except ValueError:
                raise EngineError(f"{method} {path}: not JSON: {text[:200]!r}") from None


class KvPersistence:
    """Save before a stop, restore after a start, for one model; never raises."""

    def __init__(self, spec: ProcessSpec, kv: KvCache, state_dir: str,
                 session: aiohttp.ClientSession) -> None:
        self.spec = spec
        self.kv = kv
        self.store = KvStore(Path(kv_active_dir(state_dir, spec.name).rstrip("/")))
        self.engine = LlamaCppSlots(spec, session)
        self.key: str | None = None  # of the running process: computed at its start
        self.last_save: KvReport | None = None
        self.last_restore: KvReport | None = None

    def _current_key(self) -> str:
        return cache_key(self.spec, weights_file(self.spec, self.kv))

    async def restore(self) -> KvReport:
        t0 = time.monotonic()
        key: str | None = None
        removed: list[str] = []
        restored: list[str] = []
        try:
            async with asyncio.timeout(self.kv.restore_timeout):
                key = self.key = self._current_key()
                removed = self.store.activate(key)
                files = self.store.files(key)
                if not files:
                    detail = "nothing saved for this command and weights"
                    if removed:
                        detail += f"; removed stale {', '.join(removed)}"
                    return self._done("restore", True, detail, key, (), removed, t0)
                for i, (slot, _) in enumerate(await self.engine.slots()):
                    path = files[i] if i < len(files) else files[0]
                    n = await self.engine.restore(slot, path.name)
                    restored.append(f"{path.name}->slot{slot}:{n}")
            detail = f"restored {len(restored)} slot(s)"
            return self._done("restore", True, detail, key, restored, removed, t0)
        except TimeoutError:
            detail = f"not done within restore_timeout {self.kv.restore_timeout:g}s"
        except (OSError, aiohttp.ClientError, EngineError, ValueError, KeyError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
        return self._done("restore", False, detail, key, restored, removed, t0)

    async def save(self) -> KvReport:
        t0 = time.monotonic()
        key = self.key
        saved: list[str] = []
        current: str | None = None
        try:
            async with asyncio.timeout(self.kv.save_timeout):
                if key is None:  # adopted from an earlier daemon: no start of ours keyed it
                    key = self.key = self._current_key()
                self.store.activate(key)
                slots = await self.engine.slots()
                for slot, tokens in slots:
                    if tokens < self.kv.min_tokens:
                        continue
                    current = self.store.new_name(slot)
                    n = await self.engine.save(slot, current)
                    if n == 0:
                        (self.store.root / key / current).unlink(missing_ok=True)
                    else:
                        saved.append(current)
                    current = None
            removed = self.store.prune(key, len(slots), int(self.kv.budget_mb * 1024 * 1024))
            detail = (f"saved {len(saved)} slot(s), {self.store.size(key)} bytes kept"
                      if saved else f"no slot held {self.kv.min_tokens}+ tokens")
            return self._done("save", True, detail, key, saved, removed, t0)
        except TimeoutError:
            detail = f"not done within save_timeout {self.kv.save_timeout:g}s"
        except (OSError, aiohttp.ClientError, EngineError, ValueError, KeyError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
        if current is not None and key is not None:  # half written: never restore it
            with contextlib.suppress(OSError):
                (self.store.root / key / current).unlink()
        return self._done("save", False, detail, key, saved, [], t0)

    def _done(self, action: Literal["save", "restore"], ok: bool, detail: str, key: str | None,
              files: list[str] | tuple[str, ...], removed: list[str], t0: float) -> KvReport:
        report = KvReport(action, ok, detail, key, tuple(files), tuple(removed),
                          time.monotonic() - t0)
        if action == "save":
            self.last_save = report
        else:
            self.last_restore = report
        (log.info if ok else log.warning)("model=%s kv %s: %s (%.3fs)", self.spec.name, action,
                                          detail, report.seconds)
        return report

    def status(self) -> dict[str, object]:
        return {"key": self.key,
                "last_save": None if self.last_save is None else self.last_save.as_json(),
                "last_restore": None if self.last_restore is None else self.last_restore.as_json()}
