"""Helpers shared by the batch job tests: CSV builders and real HTTP servers on loopback.

Named apart from `batch_job` on purpose: test directories go on `sys.path`; the package must stay importable.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import uvicorn
from botocore.client import BaseClient
from fastapi import FastAPI

from batch_job.example_ml_api import MODEL_VERSION, fraud_score
from batch_job.ml_contract import PredictRequest
from batch_job.validate import REQUIRED_COLUMNS
from tests.support.peers import free_port

RUN_DATE = dt.date(2026, 1, 14)
LOOPBACK = "127.0.0.1"
SERVER_START_TIMEOUT_SECONDS = 10.0
S3_ACCESS_KEY_ID = "test-access-key-id"
S3_SECRET_ACCESS_KEY = "test-secret-access-key"


@dataclass(frozen=True)
class Landing:
    """A local landing directory, as the job reads it through `file://`."""

    directory: Path

    @property
    def uri(self) -> str:
        return self.directory.as_uri()

    def write(self, name: str, text: str | bytes, run_date: dt.date = RUN_DATE) -> Path:
        path = self.directory / run_date.isoformat() / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return path


@dataclass(frozen=True)
class S3Bucket:
    client: BaseClient
    name: str

    @property
    def uri(self) -> str:
        return f"s3://{self.name}"

    def put(self, key: str, body: str | bytes) -> None:
        self.client.put_object(
            Bucket=self.name, Key=key, Body=body.encode() if isinstance(body, str) else body
        )


def row(index: int = 1, **overrides: str) -> dict[str, str]:
    """A valid CSV row for RUN_DATE; `index` makes the id unique, `overrides` break what a test needs."""
    values = {
        "transaction_id": f"T-{index:05d}",
        "account_id": "ACC000001",
        "merchant_id": "MER00001",
        "amount": "12.50",
        "currency": "EUR",
        "timestamp": "2026-01-14T09:30:00Z",
        "country": "DE",
    }
    return values | overrides


def csv_text(rows: Sequence[Mapping[str, str]], columns: Sequence[str] = REQUIRED_COLUMNS) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def refused_url() -> str:
    """A loopback URL nothing listens on."""
    return f"http://{LOOPBACK}:{free_port()}"


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {SERVER_START_TIMEOUT_SECONDS} s")
        time.sleep(0.02)


@contextmanager
def serve_app(app: FastAPI) -> Generator[str]:
    """Serve an ASGI app with uvicorn in a thread on a free loopback port; yields its base URL."""
    sock = socket.socket()
    sock.bind((LOOPBACK, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, "uvicorn start")
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()


# What the scripted server answers to one request.
@dataclass(frozen=True)
class Status:
    code: int
    body: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Delay:
    """Answer correctly, but only after `seconds` (longer than the client's timeout: a timeout)."""

    seconds: float


@dataclass(frozen=True)
class Trickle:
    """Answer correctly, but send the body one byte every `seconds` (each shorter than the client's timeout,
    all of them together longer), as an overloaded server or proxy may."""

    seconds: float


@dataclass(frozen=True)
class Body:
    """Answer 200 with this raw body."""

    text: str


@dataclass(frozen=True)
class EchoAuthorization:
    """Answer 401 with the request's Authorization header in the body, as a careless server might."""


@dataclass(frozen=True)
class Predict:
    """Answer like the example ML API; `drop_last` leaves out the last prediction, `reverse` reverses them."""

    drop_last: bool = False
    reverse: bool = False


Answer = Status | Delay | Trickle | Body | EchoAuthorization | Predict


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: Mapping[str, str]
    body: bytes

    @property
    def transaction_ids(self) -> list[str]:
        return [transaction["transaction_id"] for transaction in json.loads(self.body)["transactions"]]


class ScriptedMLApi:
    """A real HTTP server on loopback that plays the ML API and misbehaves on cue.

    Each request takes the next scripted answer; once the script is used up it answers like the example ML
    API. Every request is recorded.
    """

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._script: deque[Answer] = deque()
        self._lock = threading.Lock()
        self._server = _QuietServer((LOOPBACK, 0), self._handler_class())
        # A short poll interval: shutdown() waits for the serving loop to notice it.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    def script(self, *answers: Answer) -> None:
        self._script.extend(answers)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next_answer(self, request: RecordedRequest) -> Answer:
        with self._lock:
            self.requests.append(request)
            return self._script.popleft() if self._script else Predict()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = RecordedRequest(path=self.path, headers=dict(self.headers.items()), body=body)
                answer = api._next_answer(request)
                if isinstance(answer, Delay):
                    time.sleep(answer.seconds)
                    answer = Predict()
                match answer:
                    case Status(code, text, headers):
                        self._send(code, text, headers)
                    case Body(text):
                        self._send(200, text)
                    case EchoAuthorization():
                        self._send(401, f"bad key {self.headers.get('Authorization')}")
                    case Predict(drop_last, reverse):
                        self._send(200, _predictions(body, drop_last=drop_last, reverse=reverse))
                    case Trickle(seconds):
                        self._send(200, _predictions(body, drop_last=False, reverse=False), pause=seconds)

            def _send(
                self, code: int, text: str, headers: Mapping[str, str] | None = None, pause: float = 0.0
            ) -> None:
                payload = text.encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                if not pause:
                    self.wfile.write(payload)
                for byte in payload if pause else b"":
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(pause)

            def log_message(self, format: str, *args: object) -> None:
                pass  # the tests assert on recorded requests, not on access logs

        return Handler


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that timed out and hung up is what the delay answers are for


def _predictions(body: bytes, *, drop_last: bool, reverse: bool) -> str:
    request = PredictRequest.model_validate_json(body)
    predictions = [
        {"transaction_id": t.transaction_id, "fraud_score": fraud_score(t), "is_fraud": False}
        for t in request.transactions
    ]
    if drop_last:
        predictions = predictions[:-1]
    if reverse:
        predictions.reverse()
    return json.dumps({"model_version": MODEL_VERSION, "predictions": predictions})
