"""Requests/s and latency against a running service (`bench serve`): the client side of the service's
benchmark."""

from __future__ import annotations

import time
from typing import Any


def bench_serve(url: str, concurrency: int, requests_n: int, image: str, batch: int = 0,
                warmup: int = 200) -> dict[str, Any]:
    """Requests/s and latency percentiles against a running service (single-image requests, or batches).

    `concurrency` clients, each on its own keep-alive connection, send the next request as soon as the last one
    is answered (as wrk or hey do), from one asyncio loop: a client written with threads measures its own GIL
    waits into the latencies. `warmup` requests go first and are not counted, so that the figures are the
    server's steady state (its batching has learnt the model's timing, every code path has run once).
    Requests/s counts answered (200) requests and the percentiles are of their latencies; `errors` counts the
    others and `first_error` says why the first one failed."""
    import asyncio
    import gc

    import aiohttp  # a BentoML dependency

    with open(image, "rb") as f:
        payload = f.read()
    route = "/predict_batch" if batch else "/predict"

    def form() -> aiohttp.FormData:
        data = aiohttp.FormData()
        for _ in range(max(batch, 1)):
            data.add_field("images" if batch else "image", payload, filename="i.png",
                           content_type="application/octet-stream")
        return data

    async def load(count: int) -> tuple[list[tuple[float, str | None]], float]:
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout) as s:
            todo, results = iter(range(count)), []

            async def client() -> None:
                for _ in todo:
                    t0 = time.perf_counter()
                    try:
                        async with s.post(f"{url}{route}", data=form()) as r:
                            body = await r.read()
                            error = (None if r.status == 200
                                     else f"HTTP {r.status}: {body[:200].decode(errors='replace')}")
                    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
                        error = f"{type(e).__name__}: {e}"
                    results.append((time.perf_counter() - t0, error))

            t0 = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            return results, time.perf_counter() - t0

    if warmup:
        asyncio.run(load(warmup))
    gc.collect()
    gc.disable()  # the client's own collection pauses would be measured as the server's latency
    try:
        results, wall = asyncio.run(load(requests_n))
    finally:
        gc.enable()
    errors = [e for _, e in results if e]
    latencies = sorted(t for t, e in results if not e) or [float("nan")]  # answered requests only
    answered = requests_n - len(errors)
    return {"route": route, "concurrency": concurrency, "requests": requests_n, "batch": batch, "warmup": warmup,
            "requests_per_s": round(answered / wall, 1),
            "images_per_s": round(answered * max(batch, 1) / wall, 1),
            "p50_ms": round(1e3 * latencies[len(latencies) // 2], 1),
            "p99_ms": round(1e3 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1),
            "max_ms": round(1e3 * latencies[-1], 1),
            "errors": len(errors), **({"first_error": errors[0]} if errors else {})}
