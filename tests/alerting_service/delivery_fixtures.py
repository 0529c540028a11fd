"""Real peers for the delivery tests: an SMTP server (aiosmtpd) and an HTTP receiver, both on loopback.

Both run in their own threads, so a receiver told to answer slowly is slow the way a remote server is, without
holding up the event loop of the code under test.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import secrets
import socket
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from alerting_service.config import EmailReceiver, WebhookReceiver
from alerting_service.models import DeliveryKind
from alerting_service.notify.base import AlertEvent, Notification

SMTP_USER = "alerts"
SMTP_PASSWORD = "s3cret-smtp-password"


async def eventually(condition: Callable[[], Any], within: float = 10.0, interval: float = 0.02) -> Any:
    """Poll until `condition()` is truthy and return its value; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(name="silent_port")
def silent_port_fixture() -> Iterator[int]:
    """A loopback port that accepts connections and never says a word (a hung server)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def new_whsec() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


# --- SMTP -------------------------------------------------------------------------------------------------


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    message: EmailMessage

    def part(self, content_type: str) -> str:
        body = self.message.get_body(preferencelist=(content_type.split("/")[1],))
        assert body is not None and body.get_content_type() == content_type
        return body.get_content()


@dataclass
class _SmtpHandler:
    mails: list[Mail] = field(default_factory=list)
    # recipient -> the RCPT reply the server gives instead of accepting it, e.g. "550 5.1.1 no such user"
    rcpt_replies: dict[str, str] = field(default_factory=dict)

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.mails.append(Mail(str(envelope.mail_from), list(envelope.rcpt_tos), message))  # type: ignore[arg-type]
        return "250 Message accepted"


def _authenticate(server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
    valid = isinstance(data, LoginPassword) and (data.login, data.password) == (
        SMTP_USER.encode(),
        SMTP_PASSWORD.encode(),
    )
    return AuthResult(success=valid, handled=False)


class SmtpServer:
    """aiosmtpd on a fixed loopback port, so it can be stopped and started again at the same address."""

    def __init__(self) -> None:
        self.port = free_port()
        self.handler = _SmtpHandler()
        self._controller: Controller | None = None

    @property
    def mails(self) -> list[Mail]:
        return self.handler.mails

    def start(self) -> None:
        self._controller = Controller(
            self.handler,
            hostname="127.0.0.1",
            port=self.port,
            authenticator=_authenticate,
            auth_require_tls=False,  # plain AUTH on loopback only; TLS is the production setting
        )
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def receiver(self, name: str = "oncall-email", **email_options: Any) -> EmailReceiver:
        options = {
            "to": ["oncall@bank.example"],
            "from": "airflow-alerts@bank.example",
            "smarthost": {"host": "127.0.0.1", "port": self.port},
            "tls": "none",
            "timeout_seconds": 5,
        }
        return EmailReceiver.model_validate({"name": name, "email": options | email_options})


@pytest.fixture(name="smtp_server")
def smtp_server_fixture() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    yield server
    server.stop()


# --- HTTP -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class Receipt:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    at: float  # time.monotonic() when the request arrived


class HttpReceiver:
    """Records every POST; answers each path from its script of replies, then 200 once the script runs out."""

    def __init__(self) -> None:
        self.receipts: list[Receipt] = []
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *replies: Reply) -> None:
        with self._lock:
            self._scripts[path].extend(replies)

    def received(self, path: str) -> list[Receipt]:
        with self._lock:
            return [receipt for receipt in self.receipts if receipt.path == path]

    def receiver(self, path: str, name: str = "incident-webhook", **webhook_options: Any) -> WebhookReceiver:
        options = {
            "url": self.url(path),
            "format": "standard",
            "secrets": [new_whsec()],
            "timeout_seconds": 5,
            "allow_private_network": True,
        }
        return WebhookReceiver.model_validate({"name": name, "webhook": options | webhook_options})

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next_reply(self, path: str) -> Reply:
        with self._lock:
            script = self._scripts[path]
            return script.popleft() if script else Reply()

    def _record(self, receipt: Receipt) -> None:
        with self._lock:
            self.receipts.append(receipt)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                arrived = time.monotonic()
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {name.lower(): value for name, value in self.headers.items()}
                receiver._record(Receipt(self.path, headers, body, arrived))
                reply = receiver._next_reply(self.path)
                time.sleep(reply.delay)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the receipts are the record."""

        return Handler


@pytest.fixture(name="http_receiver")
def http_receiver_fixture() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver()
    receiver.start()
    yield receiver
    receiver.stop()


# --- notifications ----------------------------------------------------------------------------------------


def failure_event(**fields: Any) -> AlertEvent:
    defaults: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "type": "task_failure",
        "severity": "critical",
        "dag_id": "batch_pipeline_dag",
        "task_id": "run_batch_processing",
        "run_id": "scheduled__2026-01-14T02:00:00+00:00",
        "map_index": -1,
        "try_number": 2,
        "max_tries": 4,
        "logical_date": datetime(2026, 1, 14, 2, 0, tzinfo=UTC),
        "occurred_at": datetime(2026, 1, 14, 2, 7, 12, tzinfo=UTC),
        "received_at": datetime(2026, 1, 14, 2, 7, 13, tzinfo=UTC),
        "exception": "ConnectionError: ml-api:8000 refused",
        "log_url": "http://localhost:8080/dags/batch_pipeline_dag/runs/r1/tasks/run_batch_processing?try_number=2",
        "labels": {"team": "data-engineering"},
    }
    return AlertEvent(**(defaults | fields))


def notification_for(
    receiver: EmailReceiver | WebhookReceiver,
    event: AlertEvent | None = None,
    kind: DeliveryKind = DeliveryKind.FIRING,
) -> Notification:
    return Notification(
        delivery_id=str(uuid.uuid4()),
        webhook_id=f"msg_{uuid.uuid4().hex}",
        kind=kind,
        event=event or failure_event(),
        receiver=receiver,
    )
