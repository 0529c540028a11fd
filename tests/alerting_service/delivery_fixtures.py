"""Real peers for the delivery tests: an SMTP server (aiosmtpd) and an HTTP receiver, both on loopback; the
database helpers (a uniquely named PostgreSQL database, dropped afterwards); the service as a real process.

Both run in their own threads, so a receiver told to answer slowly is slow the way a remote server is, without
holding up the event loop of the code under test.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import email
import email.policy
import inspect
import ipaddress
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from alerting_service.config import EmailReceiver, Settings, WebhookReceiver
from alerting_service.db import create_schema
from alerting_service.models import Delivery, DeliveryKind, DeliveryStatus, Event
from alerting_service.notify.base import AlertEvent, Notification
from alerting_service.store import deliveries
from alerting_service.store.writer import Writer
from tests.support.peers import free_port

T = TypeVar("T")

Receiver = EmailReceiver | WebhookReceiver

SMTP_USER = "alerts"
SMTP_PASSWORD = "s3cret-smtp-password"


async def eventually(condition: Callable[[], Any], within: float = 10.0, interval: float = 0.02) -> Any:
    """Poll until `condition()` (a value or an awaitable) is truthy and return it; fail after `within` s."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)


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
    encrypted: bool

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
        encrypted = server.transport.get_extra_info("ssl_object") is not None
        self.mails.append(Mail(str(envelope.mail_from), list(envelope.rcpt_tos), message, encrypted))  # type: ignore[arg-type]
        return "250 Message accepted"


def _authenticate(server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
    valid = isinstance(data, LoginPassword) and (data.login, data.password) == (
        SMTP_USER.encode(),
        SMTP_PASSWORD.encode(),
    )
    return AuthResult(success=valid, handled=False)


class SmtpServer:
    """aiosmtpd on a fixed loopback port, so it can be stopped and started again at the same address.

    `tls`: "none" (plain AUTH allowed on loopback), "starttls" (required before MAIL and AUTH) or "implicit".
    """

    def __init__(self, tls: str = "none", certificate: ssl.SSLContext | None = None) -> None:
        self.port = free_port()
        self.tls = tls
        self.handler = _SmtpHandler()
        self._certificate = certificate
        self._controller: Controller | None = None

    @property
    def mails(self) -> list[Mail]:
        return self.handler.mails

    def start(self) -> None:
        # aiosmtpd only counts STARTTLS as TLS when deciding whether to offer AUTH.
        options: dict[str, Any] = {"auth_require_tls": self.tls == "starttls"}
        if self.tls == "starttls":
            options |= {"tls_context": self._certificate, "require_starttls": True}
        elif self.tls == "implicit":
            options |= {"ssl_context": self._certificate}
        self._controller = Controller(
            self.handler, hostname="127.0.0.1", port=self.port, authenticator=_authenticate, **options
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
            "tls": self.tls,
            "timeout_seconds": 5,
        }
        return EmailReceiver.model_validate({"name": name, "email": options | email_options})


@dataclass(frozen=True)
class Certificates:
    ca_file: Path  # what a client must trust (set SSL_CERT_FILE to it)
    server: ssl.SSLContext  # a server context whose certificate (for 127.0.0.1) that CA signed


@pytest.fixture(name="certificates", scope="session")
def certificates_fixture(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    directory = tmp_path_factory.mktemp("tls")
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "delivery tests CA")])
    now = datetime.now(UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return Certificates(ca_file, context)


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
    # The reply waits until the test sets this: a destination that hangs exactly as long as the test wants.
    hold: threading.Event | None = None
    body: bytes = b""


@dataclass(frozen=True)
class Receipt:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    at: float  # time.monotonic() when the request arrived
    client_port: int = 0  # the sender's TCP port: the same port on two receipts means a reused connection


class _QuietHTTPServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A sender that hung up before the reply (a cut-off or dropped send) is part of the tests."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class HttpReceiver:
    """Records every POST; answers each path from its script of replies, then with its default reply."""

    def __init__(self) -> None:
        self.receipts: list[Receipt] = []
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._defaults: dict[str, Reply] = {}
        self._lock = threading.Lock()
        self._server = _QuietHTTPServer(("127.0.0.1", 0), self._handler_class())
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

    def answer_by_default(self, path: str, reply: Reply) -> None:
        """The reply once the script for `path` has run out (200 unless set)."""
        with self._lock:
            self._defaults[path] = reply

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
            return script.popleft() if script else self._defaults.get(path, Reply())

    def _record(self, receipt: Receipt) -> None:
        with self._lock:
            self.receipts.append(receipt)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                arrived = time.monotonic()
                length = int(self.headers.get("content-length", 0))
                body = self.rfile.read(length)
                if len(body) < length:  # the sender died mid-request: nothing was received
                    self.close_connection = True
                    return
                headers = {name.lower(): value for name, value in self.headers.items()}
                receiver._record(Receipt(self.path, headers, body, arrived, self.client_address[1]))
                reply = receiver._next_reply(self.path)
                time.sleep(reply.delay)
                if reply.hold is not None:
                    reply.hold.wait(timeout=60)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

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


# --- the database -----------------------------------------------------------------------------------------

POSTGRES_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass
class Database:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]

    async def add_event(self, *receivers: Receiver, kind: DeliveryKind = DeliveryKind.FIRING) -> list[str]:
        """One stored failure event with a pending delivery to each receiver; the delivery ids."""
        now = datetime.now(UTC)
        event_id = str(uuid.uuid4())
        event = failure_event(id=event_id, received_at=now)
        rows = [
            deliveries.new_delivery_row(
                event_id=event_id,
                receiver=receiver.name,
                integration=receiver.integration,
                kind=kind,
                now=now,
            )
            for receiver in receivers
        ]
        async with self.sessions() as session, session.begin():
            session.add(
                Event(
                    idempotency_key=f"test/{event_id}",
                    body_hash="0" * 64,
                    **dataclasses.asdict(event)
                    | {"fingerprint": event.fingerprint or f"{event.dag_id}/{event.task_id}"},
                )
            )
            await session.flush()
            await (await session.connection()).run_sync(deliveries.insert_deliveries, rows)
        return [row["id"] for row in rows]

    @asynccontextmanager
    async def writer(self) -> AsyncGenerator[Writer]:
        """The service's database writer on this database, closed on exit."""
        writer = Writer(self.settings)
        try:
            yield writer
        finally:
            writer.close()

    async def write(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`function(connection, *args, **kwargs)` of the store, in one transaction, as the writer runs it."""
        async with self.engine.begin() as connection:
            return await connection.run_sync(function, *args, **kwargs)

    async def delivery(self, delivery_id: str) -> Delivery:
        async with self.sessions() as session:
            found = await deliveries.get(session, delivery_id)
        assert found is not None
        return found

    async def count_never_claimed(self, delivery_ids: list[str]) -> int:
        """How many of these deliveries no claim ever took (a claim sets `last_attempt_at`)."""
        never_claimed = Delivery.id.in_(delivery_ids), Delivery.last_attempt_at.is_(None)
        async with self.sessions() as session:
            return await session.scalar(select(func.count()).where(*never_claimed)) or 0

    async def status(self, delivery_id: str) -> str:
        return (await self.delivery(delivery_id)).status

    async def until_status(self, delivery_id: str, status: DeliveryStatus) -> None:
        async def reached() -> bool:
            return await self.status(delivery_id) == status

        await eventually(reached)


async def create_tables(engine: AsyncEngine) -> None:
    """The service's schema, through a test's own engine (the service creates it through its writer)."""
    async with engine.begin() as connection:
        await connection.run_sync(create_schema)


async def _create_postgres_database() -> str:
    name = f"alerting_delivery_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return name


async def _drop_postgres_database(name: str) -> None:
    connection = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@asynccontextmanager
async def database_url(backend: str, tmp_path: Path) -> AsyncGenerator[str]:
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'alerts.db'}"
        return
    name = await _create_postgres_database()
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        await _drop_postgres_database(name)


# --- the service as a real process ------------------------------------------------------------------------

INGEST_KEY = "ingest-key-for-the-delivery-tests-0123456789"
ADMIN_KEY = "admin-key-for-the-delivery-tests-0123456789"


def service_routing(*receivers: Receiver, horizon: str = "1h") -> dict[str, Any]:
    """The service's YAML (as a dict): these receivers get every task failure; millisecond retry backoffs."""
    return {
        "receivers": [_receiver_yaml(receiver) for receiver in receivers],
        "route": {
            "receivers": [],
            "routes": [{"match": {"type": "task_failure"}, "receivers": [r.name for r in receivers]}],
        },
        "retry": {"initial_backoff": "10ms", "max_backoff": "100ms", "horizon": horizon},
    }


def _receiver_yaml(receiver: Receiver) -> dict[str, Any]:
    """The receiver as YAML would give it, secrets included (the test owns them)."""
    dumped = receiver.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(receiver, WebhookReceiver):
        dumped["webhook"]["url"] = receiver.webhook.url.get_secret_value() if receiver.webhook.url else None
        dumped["webhook"]["secrets"] = [secret.get_secret_value() for secret in receiver.webhook.secrets]
    return dumped


class ServiceProcess:
    """`alerting-service <command>` in its own process, with the settings given as ALERTING_* variables."""

    def __init__(
        self, command: str, environment: dict[str, str], log_path: Path, arguments: Sequence[str] = ()
    ) -> None:
        self.command = command
        self.arguments = list(arguments)
        self.port = free_port()
        self._environment = {
            k: v for k, v in os.environ.items() if not k.startswith("ALERTING_")
        } | environment
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        arguments = [sys.executable, "-m", "alerting_service.cli", self.command, *self.arguments]
        if self.command == "serve":
            arguments += ["--port", str(self.port)]
        with self._log_path.open("ab") as log_file:
            self._process = subprocess.Popen(
                arguments, env=self._environment, stdout=log_file, stderr=log_file
            )

    async def until_ready(self) -> None:
        async with httpx.AsyncClient() as client:

            async def ready() -> bool:
                assert self._process is not None and self._process.poll() is None, self.log()
                try:
                    return (await client.get(f"{self.url}/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(ready, within=30)

    async def until_logged(self, text: str) -> None:
        def logged() -> bool:
            assert self._process is not None and self._process.poll() is None, self.log()
            return text in self.log()

        await eventually(logged, within=30)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or an OOM kill."""
        assert self._process is not None
        self._process.kill()
        self._process.wait()

    def stop(self) -> int:
        """SIGTERM, then wait for the graceful stop; the exit code."""
        assert self._process is not None
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
        return self._process.wait(timeout=30)

    def log(self) -> str:
        return self._log_path.read_text(encoding="utf-8", errors="replace")


async def post_failure_events(service_url: str, count: int) -> list[str]:
    """POST `count` distinct task failures; the event ids of the 202 answers."""
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {INGEST_KEY}"}) as client:
        answers = await asyncio.gather(
            *(
                client.post(
                    f"{service_url}/v1/events",
                    json={
                        "idempotency_key": f"delivery-test/{uuid.uuid4()}",
                        "type": "task_failure",
                        "dag_id": "batch_pipeline_dag",
                        "task_id": f"task_{n}",
                        "try_number": 1,
                        "max_tries": 1,
                    },
                )
                for n in range(count)
            )
        )
    assert [answer.status_code for answer in answers] == [202] * count
    return [answer.json()["id"] for answer in answers]


def delivered_event_ids(receipts: list[Receipt]) -> list[str]:
    return [json.loads(receipt.body)["data"]["event"]["id"] for receipt in receipts]
