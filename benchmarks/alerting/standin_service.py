"""A tiny FastAPI stand-in for the alert service, used only to test the benchmark harness.

It speaks the same contract the harness uses (``POST /v1/events`` with a Bearer ingest key -> ``202
{"id", "duplicate"}``, ``GET /healthz``), reads the same ``ALERTING_*`` variables, and posts one webhook per
event to the first webhook receiver of ``ALERTING_CONFIG_FILE``. It persists nothing: its figures say
nothing about the real service.
Run: ``python benchmarks/alerting/standin_service.py serve --host 127.0.0.1 --port 8080``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import os
import uuid

import httpx
import uvicorn
import yaml
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse


def create_app() -> FastAPI:
    keys = [
        item.split(":", 2)[2] for item in os.environ["ALERTING_API_KEYS"].split(",") if item.count(":") >= 2
    ]
    with open(os.environ["ALERTING_CONFIG_FILE"]) as fh:
        config = yaml.safe_load(fh)
    url = next(r["webhook"]["url"] for r in config["receivers"] if "webhook" in r)
    queue: asyncio.Queue[dict] = asyncio.Queue()
    seen: dict[str, str] = {}

    async def deliver(client: httpx.AsyncClient) -> None:
        while True:
            event = await queue.get()
            with contextlib.suppress(httpx.HTTPError):
                await client.post(url, json={"type": "alert.firing", "data": event})

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        async with httpx.AsyncClient(timeout=15) as client:
            workers = [asyncio.create_task(deliver(client)) for _ in range(8)]
            try:
                yield
            finally:
                for worker in workers:
                    worker.cancel()

    app = FastAPI(lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.post("/v1/events", status_code=202)
    async def ingest(request: Request, authorization: str = Header("")) -> JSONResponse:
        token = authorization.removeprefix("Bearer ")
        if not any(hmac.compare_digest(token, key) for key in keys):
            raise HTTPException(401)
        body = await request.json()
        key = body["idempotency_key"]
        duplicate = key in seen
        event_id = seen.setdefault(key, str(uuid.uuid4()))
        if not duplicate:
            queue.put_nowait({"id": event_id, **body})
        return JSONResponse({"id": event_id, "duplicate": duplicate}, status_code=202)

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
