"""A herd of concurrent clients: n requests released at once, each on its own connection."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True)
class HerdResult:
    statuses: Counter[int]
    errors: list[str]  # transport errors (resets, timeouts), at most 20 kept


def herd(port: int, paths: list[str], timeout: float = 300.0) -> HerdResult:
    """GET every path concurrently (no connection limit, no keep-alive), all released at once."""

    async def run() -> HerdResult:
        statuses: Counter[int] = Counter()
        errors: list[str] = []
        go = asyncio.Event()
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:

            async def one(path: str) -> None:
                await go.wait()
                try:
                    async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
                        await resp.read()
                        statuses[resp.status] += 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    statuses[0] += 1
                    if len(errors) < 20:
                        errors.append(f"{type(exc).__name__}: {exc}"[:200])

            tasks = [asyncio.create_task(one(p)) for p in paths]
            await asyncio.sleep(0)  # one loop turn: every task reaches the gate
            go.set()
            await asyncio.gather(*tasks)
        return HerdResult(statuses, errors)

    return asyncio.run(run())
