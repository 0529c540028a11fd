"""The end-to-end alerting stack, all real and on loopback, shared by the whole session:

- the alert service: `alerting-service serve` as its own process, temp SQLite DB, an ingest and an admin key;
- its destinations: an aiosmtpd SMTP server and a webhook receiver (Standard Webhooks, a whsec_ secret);
- Airflow: its own AIRFLOW_HOME whose dags folder is tests/alerting/dags, DAGs run by `airflow dags test`,
  connections `alert_service_default` and `smtp_default` given as AIRFLOW_CONN_* variables.

The fallback email of the notifier goes to the same SMTP server, to FALLBACK_TO, so a test tells an email sent
by the service (to ONCALL) from one sent by Airflow directly.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.alerting_service.delivery_fixtures import (
    SMTP_PASSWORD,
    SMTP_USER,
    HttpReceiver,
    Mail,
    Receipt,
    ServiceProcess,
    SmtpServer,
    new_whsec,
)

DAGS_FOLDER = Path(__file__).parent / "dags"
INGEST_KEY = "ingest-key-for-the-alert-e2e-tests-0123456789"
ADMIN_KEY = "admin-key-for-the-alert-e2e-tests-0123456789"
ONCALL = "oncall@bank.example"
FALLBACK_TO = "airflow-fallback@bank.example"
WEBHOOK_PATH = "/hooks/airflow"
# The notifier's bounds in the test DAGs: short, so an outage run stays quick.
NOTIFIER_TIMEOUT = 1.0
NOTIFIER_FALLBACK_TIMEOUT = 1.0


def eventually(condition: Callable[[], Any], within: float = 20.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + within
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        time.sleep(interval)
    return value


@dataclass
class AlertStack:
    service: ServiceProcess
    smtp: SmtpServer
    webhook: HttpReceiver
    webhook_secret: str

    def events(self, **filters: str) -> list[dict[str, Any]]:
        """The service's event log (admin API), oldest first."""
        answer = httpx.get(
            f"{self.service.url}/v1/events",
            params={"limit": 1000, **filters},
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
        )
        answer.raise_for_status()
        return list(reversed(answer.json()["data"]))

    def event(self, event_id: str) -> dict[str, Any]:
        answer = httpx.get(
            f"{self.service.url}/v1/events/{event_id}", headers={"authorization": f"Bearer {ADMIN_KEY}"}
        )
        answer.raise_for_status()
        return answer.json()

    def mails_to(self, recipient: str, containing: str) -> list[Mail]:
        return [
            mail for mail in self.smtp.mails if recipient in mail.recipients and containing in _text_of(mail)
        ]

    def webhooks_about(self, event_id: str) -> list[Receipt]:
        return [
            receipt
            for receipt in self.webhook.received(WEBHOOK_PATH)
            if json.loads(receipt.body)["data"]["event"]["id"] == event_id
        ]


def _text_of(mail: Mail) -> str:
    """Subject and every text part, decoded (bodies travel base64 or quoted-printable)."""
    parts = [part.get_content() for part in mail.message.walk() if part.get_content_maintype() == "text"]
    return "\n".join([mail.message["Subject"], *parts])


def service_config(smtp: SmtpServer, webhook: HttpReceiver, secret: str) -> dict[str, Any]:
    """Failures and missed deadlines to email and webhook, retries and run failures to the webhook."""
    return {
        "receivers": [
            {
                "name": "oncall-email",
                "email": {
                    "to": [ONCALL],
                    "from": "alerts@bank.example",
                    "smarthost": {"host": "127.0.0.1", "port": smtp.port},
                    "tls": "none",
                    "timeout_seconds": 5,
                },
            },
            {
                "name": "incident-webhook",
                "webhook": {
                    "url": webhook.url(WEBHOOK_PATH),
                    "format": "standard",
                    "secrets": [secret],
                    "timeout_seconds": 5,
                    "allow_private_network": True,
                },
            },
        ],
        "route": {
            "receivers": [],
            "routes": [
                {
                    "match": {"type": ["task_failure", "deadline_missed"]},
                    "receivers": ["oncall-email", "incident-webhook"],
                },
                {"match": {"type": ["task_retry", "dag_run_failure"]}, "receivers": ["incident-webhook"]},
            ],
        },
        "retry": {"initial_backoff": "100ms", "max_backoff": "1s", "horizon": "1h"},
    }


async def start_service(directory: Path, config: dict[str, Any], **environment: str) -> ServiceProcess:
    """`alerting-service serve` with this YAML, a SQLite DB in `directory` and the test keys, ready."""
    config_file = directory / "alerting.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    service = ServiceProcess(
        "serve",
        {
            "ALERTING_DATA_DIR": str(directory),
            "ALERTING_CONFIG_FILE": str(config_file),
            "ALERTING_API_KEYS": f"airflow:ingest:{INGEST_KEY},admin:admin:{ADMIN_KEY}",
            **environment,
        },
        directory / "service.log",
    )
    service.start()
    try:
        await service.until_ready()
    except BaseException:
        service.stop()
        raise
    return service


@pytest.fixture(scope="session")
async def alert_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AlertStack]:
    smtp, webhook, secret = SmtpServer(), HttpReceiver(), new_whsec()
    smtp.start()
    webhook.start()
    try:
        service = await start_service(
            tmp_path_factory.mktemp("alert-service"), service_config(smtp, webhook, secret)
        )
        try:
            yield AlertStack(service, smtp, webhook, secret)
        finally:
            service.stop()
    finally:
        webhook.stop()
        smtp.stop()


# --- Airflow ----------------------------------------------------------------------------------------------


@dataclass
class DagTest:
    """One `airflow dags test` run: its exit code, its output, and the callback timings it wrote."""

    dag_id: str
    returncode: int
    output: str
    stamps: list[dict[str, Any]]
    airflow_db: Path

    def task_states(self) -> dict[str, str]:
        with sqlite3.connect(self.airflow_db) as db:
            rows = db.execute(
                "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = "
                "(SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1)",
                (self.dag_id, self.dag_id),
            ).fetchall()
        return dict(rows)

    def run_id(self) -> str:
        with sqlite3.connect(self.airflow_db) as db:
            (run_id,) = db.execute(
                "SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (self.dag_id,)
            ).fetchone()
        return run_id

    def callback_durations(self) -> list[float]:
        """Seconds between the stamps that bracket each notifier call, per task in order."""
        durations = []
        for task_id in dict.fromkeys(stamp["task_id"] for stamp in self.stamps):
            times = [stamp["at"] for stamp in self.stamps if stamp["task_id"] == task_id]
            durations += [end - start for start, end in zip(times[::2], times[1::2], strict=True)]
        return durations


class AirflowRunner:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.environment = {
            **{
                name: value for name, value in os.environ.items() if not name.startswith(("AIRFLOW", "ALERT"))
            },
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__API__BASE_URL": "http://airflow.bank.example:8080",
            # Retries in about a second instead of minutes (the multiplier's floor is 1 s).
            "BATCH_PIPELINE_RETRY_DELAY_SECONDS": "0.1",
            "ALERT_TEST_NOTIFIER_TIMEOUT": str(NOTIFIER_TIMEOUT),
            "ALERT_TEST_NOTIFIER_FALLBACK_TIMEOUT": str(NOTIFIER_FALLBACK_TIMEOUT),
        }

    def migrate(self) -> None:
        self._airflow("db", "migrate", check=True)

    def connections(self, *, service_url: str, smtp_port: int) -> dict[str, str]:
        host, port = service_url.removeprefix("http://").rsplit(":", 1)
        service = {
            "conn_type": "http",
            "host": host,
            "port": int(port),
            "schema": "http",
            "password": INGEST_KEY,
        }
        smtp_extra = {"from_email": "airflow@bank.example", "to": FALLBACK_TO, "disable_tls": True}
        smtp_extra |= {"disable_ssl": True, "timeout": 2, "retry_limit": 0}
        smtp = {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": smtp_port,
            "login": SMTP_USER,
            "password": SMTP_PASSWORD,
            "extra": smtp_extra,
        }
        return {
            "AIRFLOW_CONN_ALERT_SERVICE_DEFAULT": json.dumps(service),
            "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(smtp),
        }

    def dags_test(self, dag_id: str, environment: dict[str, str]) -> DagTest:
        with tempfile.NamedTemporaryFile("r", prefix="stamps-", dir=self.home) as stamps:
            completed = self._airflow(
                "dags", "test", dag_id, extra={**environment, "ALERT_TEST_STAMPS": stamps.name}
            )
            lines = stamps.read().splitlines()
        return DagTest(
            dag_id,
            completed.returncode,
            completed.stdout,
            [json.loads(line) for line in lines],
            self.home / "airflow.db",
        )

    def _airflow(self, *arguments: str, extra: dict[str, str] | None = None, check: bool = False) -> Any:
        return subprocess.run(
            [sys.executable, "-m", "airflow", *arguments],
            env=self.environment | (extra or {}),
            capture_output=True,
            text=True,
            check=check,
            timeout=240,
        )


@pytest.fixture(scope="session")
def airflow_runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowRunner]:
    runner = AirflowRunner(tmp_path_factory.mktemp("airflow-home-alerting"))
    runner.migrate()
    yield runner


@pytest.fixture(scope="session")
def scenarios(alert_stack: AlertStack, airflow_runner: AirflowRunner) -> DagTest:
    """One run of `alert_scenarios` with the service up, read by several test modules."""
    connections = airflow_runner.connections(
        service_url=alert_stack.service.url, smtp_port=alert_stack.smtp.port
    )
    return airflow_runner.dags_test("alert_scenarios", connections)
