"""Open-loop HTTP load generator: sends on a fixed timeline, whatever the server answers.

Request ``i`` is due at ``t0 + i / rate``. A scheduler starts it at that time (or at once if the scheduler is
late), on an idle keep-alive connection or a new one, so a slow answer never delays the next send (no
coordinated omission: latency is counted from the *due* time). Raw asyncio sockets with hand-written HTTP/1.1
keep the client cheap on a 2-core machine. All times are ``time.monotonic()`` (system-wide CLOCK_MONOTONIC,
comparable with the receiver's).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

# uvicorn closes a keep-alive connection idle for 5 s (its default): reuse only ones used more recently.
REUSE_SECONDS = 2.0


@dataclass
class Outcome:
    key: str
    due: float
    sent: float = 0.0
    answered: float = 0.0  # monotonic time the full response was read
    status: int = 0
    event_id: str | None = None
    duplicate: bool = False
    error: str | None = None


@dataclass
class OpenLoopResult:
    outcomes: list[Outcome]
    rate: float
    seconds: float
    connections_opened: int
    max_in_flight: int
    late_starts: int = 0  # sends the scheduler started more than 5 ms after their due time
    retried: int = 0  # sends repeated once because a reused keep-alive connection was closed unanswered
    extra: dict = field(default_factory=dict)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += await reader.readexactly(size + 2)
            del body[-2:]
        return status, bytes(body)
    return status, (await reader.readexactly(length) if length else b"")


async def run(
    host: str,
    port: int,
    path: str,
    headers: dict[str, str],
    make_body: Callable[[int], tuple[str, bytes]],
    rate: float,
    seconds: float,
    max_connections: int = 512,
    timeout: float = 10.0,  # ruff: ignore[async-function-with-timeout] (per request, not for the whole run)
) -> OpenLoopResult:
    """Send ``rate * seconds`` POSTs on a fixed timeline; ``make_body(i)`` returns ``(key, body)``."""
    total = round(rate * seconds)
    fixed = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    prefix = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{fixed}Content-Type: application/json\r\n"
    bodies = [make_body(i) for i in range(total)]  # built before the clock starts
    idle: deque[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = deque()
    slots = asyncio.Semaphore(max_connections)
    stats = {"opened": 0, "in_flight": 0, "max_in_flight": 0, "late": 0, "retried": 0}
    t0 = time.monotonic() + 0.5
    outcomes = [Outcome(key=bodies[i][0], due=t0 + i / rate) for i in range(total)]

    async def connection() -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        """An idle keep-alive connection used recently enough, else a new one; and whether it is reused."""
        while idle:
            reader, writer, last_used = idle.pop()
            if time.monotonic() - last_used < REUSE_SECONDS and not reader.at_eof():
                return reader, writer, True
            writer.close()
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        stats["opened"] += 1
        return reader, writer, False

    async def one(i: int) -> None:
        outcome = outcomes[i]
        _key, body = bodies[i]
        request = (prefix + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        async with slots:
            stats["in_flight"] += 1
            stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])
            writer = None
            try:
                for attempt in (1, 2):
                    reader, writer, reused = await connection()
                    outcome.sent = time.monotonic()
                    writer.write(request)
                    try:
                        status, payload = await asyncio.wait_for(_read_response(reader), timeout)
                        break
                    except (asyncio.IncompleteReadError, ConnectionResetError) as exc:
                        # A reused connection the server closed before answering anything: send again on a
                        # new one (safe: nothing was read; the idempotency key makes a repeat a duplicate).
                        partial = getattr(exc, "partial", b"")
                        writer.close()
                        writer = None
                        if not (reused and not partial and attempt == 1):
                            raise
                        stats["retried"] += 1
                outcome.answered = time.monotonic()
                outcome.status = status
                if payload[:1] == b"{":
                    with contextlib.suppress(ValueError):
                        answer = json.loads(payload)
                        outcome.event_id = answer.get("id")
                        outcome.duplicate = answer.get("duplicate") is True
                idle.append((reader, writer, outcome.answered))
                writer = None
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                outcome.error = type(exc).__name__
                outcome.answered = time.monotonic()
            finally:
                stats["in_flight"] -= 1
                if writer is not None:
                    writer.close()

    tasks = []
    for i in range(total):
        delay = outcomes[i].due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.005:
            stats["late"] += 1
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    while idle:
        idle.pop()[1].close()
    return OpenLoopResult(
        outcomes=outcomes,
        rate=rate,
        seconds=seconds,
        connections_opened=stats["opened"],
        max_in_flight=stats["max_in_flight"],
        late_starts=stats["late"],
        retried=stats["retried"],
    )
