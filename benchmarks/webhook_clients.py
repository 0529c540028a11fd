"""Why the webhook notifier uses aiohttp: the CPU one webhook-sized POST costs through httpx and aiohttp.

    uv run --frozen python benchmarks/webhook_clients.py [--posts 4000] [--concurrency 8]

Both clients POST the same 400-byte JSON body to the benchmark's webhook receiver (benchmarks/alerting/
receiver.py, its own process, loopback), `--concurrency` at a time through one long-lived client (keep-alive
pool), as the dispatcher does. Printed per client: wall time, POSTs per second, and this process's CPU time
per POST (`time.process_time()`, all threads), which is what decides how many webhooks one service process
can send while it also ingests. A warm-up of 200 POSTs per client is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import alerting_service_bench as bench

BODY = b'{"type":"task_failure","data":{"event":{"id":"' + b"0" * 36 + b'"' + b',"x":"' + b"y" * 320 + b'"}}}'
HEADERS = {"content-type": "application/json"}

Post = Callable[[str], Awaitable[int]]


async def timed(label: str, post: Post, url: str, posts: int, concurrency: int) -> None:
    async def worker(count: int) -> None:
        for _ in range(count):
            assert await post(url) == 200

    await asyncio.gather(*(worker(200 // concurrency) for _ in range(concurrency)))  # warm-up
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(posts // concurrency) for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    done = posts // concurrency * concurrency
    print(
        f"[{label}] {done} POSTs, {concurrency} at a time: {wall:.2f} s ({done / wall:,.0f}/s), "
        f"{cpu / done * 1e6:,.0f} us of CPU per POST"
    )


async def compare(url: str, posts: int, concurrency: int) -> None:
    async with httpx.AsyncClient() as client:

        async def httpx_post(target: str) -> int:
            return (await client.post(target, content=BODY, headers=HEADERS)).status_code

        await timed(f"httpx {httpx.__version__}", httpx_post, url, posts, concurrency)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def aiohttp_post(target: str) -> int:
            async with session.post(target, data=BODY, headers=HEADERS) as response:
                await response.read()
                return response.status

        await timed(f"aiohttp {aiohttp.__version__}", aiohttp_post, url, posts, concurrency)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    procs, tmp = bench.Processes(), Path(tempfile.mkdtemp(prefix="webhook-clients-"))
    try:
        port = bench.free_port()
        argv = [sys.executable, str(bench.SUPPORT / "receiver.py"), "--port", str(port)]
        procs.start("receiver", argv, tmp / "receiver.log")
        bench.wait_ready(procs, "receiver", [f"http://{bench.HOST}:{port}/__count"])
        asyncio.run(compare(f"http://{bench.HOST}:{port}/hook", args.posts, args.concurrency))
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
