"""Fast webhook receiver for the alert-service benchmark (loopback only).

A bare ASGI app served by uvicorn (uvloop + httptools) in its own process, so it never competes with the
load generator's event loop. Every POST is answered ``200`` at once and recorded as ``(arrival, body)`` where
``arrival`` is ``time.monotonic()``: CLOCK_MONOTONIC is system-wide on Linux, so it compares directly with
the 202 times the generator records in another process.

Control endpoints (used by the harness only):

- ``GET /__count``  -> ``{"received": n}`` (cheap: polled while waiting for a backlog to drain)
- ``GET /__dump``   -> ``{"records": [[arrival, [string, ...]], ...]}``: for each webhook, every short string
  value found anywhere in its JSON body (event id, idempotency key, Alertmanager label values...), so the
  harness can match a webhook to the event it carries without knowing the exact body format.
- ``POST /__reset`` -> forget everything received so far.
"""

from __future__ import annotations

import argparse
import json
import time

RECORDS: list[tuple[float, bytes]] = []


def _strings(node, out: list[str]) -> None:
    if isinstance(node, str):
        if len(node) <= 300:
            out.append(node)
    elif isinstance(node, dict):
        for value in node.values():
            _strings(value, out)
    elif isinstance(node, list):
        for value in node:
            _strings(value, out)


def _dump() -> bytes:
    records = []
    for arrival, body in RECORDS:
        found: list[str] = []
        try:
            _strings(json.loads(body), found)
        except ValueError:
            found = []
        records.append([arrival, found])
    return json.dumps({"records": records}).encode()


async def _send(send, status: int, body: bytes = b"", content_type: bytes = b"application/json") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    path = scope["path"]
    method = scope["method"]
    if method == "POST" and not path.startswith("/__"):
        RECORDS.append((time.monotonic(), b"".join(chunks)))
        await _send(send, 200, b"{}")
    elif path == "/__count":
        await _send(send, 200, json.dumps({"received": len(RECORDS)}).encode())
    elif path == "/__dump":
        await _send(send, 200, _dump())
    elif path == "/__reset" and method == "POST":
        RECORDS.clear()
        await _send(send, 200, b"{}")
    else:
        await _send(send, 404, b"{}")


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
