"""Memory of the running service under many concurrent large uploads (a measurement, not a test).

    BENTOML_HOME=... python tools/service_memory.py --clients 80 --mib 10 [--max-request-bytes N]

Starts the real server (`running_server`), finds every process of its tree (arbiter and workers), and reports the sum
of their resident set sizes before the uploads and at its peak while `clients` threads each upload one
`mib`-MiB PNG (real noise pixels, padded after IEND to the exact size) at once; then the answers' statuses.
"""

from __future__ import annotations

import argparse
import io
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from jaxnets.serving.local import descendants, running_server


def server_pids(port: int) -> list[int]:
    """The `bentoml serve` listening on `port` and every process below it (its workers run in sessions of
    their own, so its process group would miss them)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in args and str(port).encode() in args and any(b"bentoml" in a for a in args):
            leader = int(cmdline.parent.name)
            return [leader, *(p.pid for p in descendants(leader))]
    raise RuntimeError(f"no bentoml serve on port {port}")


def rss_mib(pids: list[int]) -> float:
    """Sum of VmRSS over `pids`, in MiB (shared pages counted once per process)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def upload_png(size: int) -> bytes:
    """A real PNG of noise (decodes to ~size/3 RGB pixels), padded after IEND to exactly `size` bytes."""
    side = int((size / 3.1) ** 0.5)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(
        buf, format="PNG", compress_level=1)
    data = buf.getvalue()
    assert len(data) <= size, len(data)
    return data + b"\0" * (size - len(data))


def measure(clients: int, size: int, env: dict[str, str], log: Path) -> dict:
    """Start the server with `env`, upload `clients` × `size` bytes at once, return the figures."""
    data = upload_png(size)
    with running_server(log, env=env) as url:
        port = int(url.rsplit(":", 1)[1])
        pids = server_pids(port)
        requests.post(f"{url}/predict", files={"image": ("warm.png", upload_png(200_000))}, timeout=60)
        time.sleep(1)
        before = rss_mib(pids)
        peak, done = before, threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_mib(server_pids(port)))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        start = time.monotonic()

        def one(i: int) -> int:
            try:
                return requests.post(f"{url}/predict", files={"image": (f"{i}.png", data)}, timeout=300).status_code
            except requests.RequestException as e:
                return type(e).__name__

        with ThreadPoolExecutor(clients) as pool:
            statuses = Counter(pool.map(one, range(clients)))
        elapsed = time.monotonic() - start
        time.sleep(1)
        done.set()
        sampler.join()
        after = rss_mib(server_pids(port))
    return {"processes": len(pids), "before_mib": before, "peak_mib": peak, "after_mib": after,
            "statuses": dict(statuses), "seconds": elapsed}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=80)
    p.add_argument("--mib", type=float, default=10)
    p.add_argument("--max-request-bytes", type=int, default=None, help="JAXNETS_MAX_REQUEST_BYTES (default: 10 MiB)")
    p.add_argument("--log", default="service_memory_server.log")
    args = p.parse_args()
    env = {"JAXNETS_MAX_REQUEST_BYTES": str(args.max_request_bytes)} if args.max_request_bytes else {}
    figures = measure(args.clients, int(args.mib * 1024 * 1024), env, Path(args.log))
    print(f"{args.clients} × {args.mib:g} MiB, JAXNETS_MAX_REQUEST_BYTES={args.max_request_bytes or 'default'}: "
          f"{figures['processes']} processes, RSS {figures['before_mib']:.0f} MiB before, "
          f"peak {figures['peak_mib']:.0f} MiB, {figures['after_mib']:.0f} MiB after; "
          f"answers {figures['statuses']} in {figures['seconds']:.1f} s")


if __name__ == "__main__":
    main()
