"""The dead man's switch in the real service process: a day without a successful run is an alert too."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy
from prometheus_client.parser import text_string_to_metric_families

from alerting_service.db import create_schema
from alerting_service.models import ExpectationWatch
from tests.alerting.conftest import (
    ADMIN_KEY,
    INGEST_KEY,
    ONCALL,
    AlertStack,
    eventually,
    service_config,
    start_service,
)
from tests.alerting_service.delivery_fixtures import ServiceProcess

pytestmark = pytest.mark.slow

SILENT_DAG = "nightly_dag_that_never_ran"


@dataclass
class WatchingService:
    """A service expecting a success of SILENT_DAG by two minutes ago, watching it for two days; restartable
    on the same database."""

    directory: Path
    config: dict[str, Any]
    service: ServiceProcess

    @property
    def url(self) -> str:
        return self.service.url

    async def restart(self) -> None:
        self.service.stop()
        self.service = await start_service(self.directory, self.config)


def watched_since(directory: Path, dag_id: str, since: datetime) -> None:
    """The database in `directory` as a service that has watched `dag_id`'s expectation since `since` leaves
    it: the service judges only the windows it watched whole."""
    engine = sqlalchemy.create_engine(f"sqlite:///{directory / 'alerts.db'}")
    with engine.begin() as connection:
        create_schema(connection)
        connection.execute(sqlalchemy.insert(ExpectationWatch), {"dag_id": dag_id, "watched_since": since})
    engine.dispose()


@pytest.fixture(scope="module")
async def watching(
    alert_stack: AlertStack, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[WatchingService]:
    due = (datetime.now(UTC) - timedelta(minutes=2)).strftime("%H:%M")
    config = service_config(alert_stack.smtp, alert_stack.webhook, alert_stack.webhook_secret) | {
        "expectations": [{"dag_id": SILENT_DAG, "succeed_by": due, "timezone": "UTC", "window_hours": 1}]
    }
    directory = tmp_path_factory.mktemp("watching-service")
    watched_since(directory, SILENT_DAG, datetime.now(UTC) - timedelta(days=2))
    watching = WatchingService(directory, config, await start_service(directory, config))
    yield watching
    watching.service.stop()


def ingest_batches(url: str) -> float:
    """How many batches (duplicates included) the service's ingest has written since it started."""
    (count,) = [
        sample.value
        for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
        for sample in family.samples
        if sample.name == "alerting_ingest_batch_size_count"
    ]
    return count


def service_events(url: str, **filters: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/v1/events", params=filters, headers={"authorization": f"Bearer {ADMIN_KEY}"})
    answer.raise_for_status()
    return answer.json()["data"]


def test_a_day_without_a_successful_run_raises_one_deadline_missed(
    alert_stack: AlertStack, watching: WatchingService
) -> None:
    (missed,) = eventually(lambda: service_events(watching.url, dag_id=SILENT_DAG))

    assert missed["type"] == "deadline_missed"
    assert missed["idempotency_key"].startswith(f"expectation/{SILENT_DAG}/")
    assert missed["labels"] == {"source": "expectation"}
    eventually(lambda: alert_stack.mails_to(ONCALL, containing=missed["id"]))


async def test_a_restart_on_the_same_day_does_not_raise_it_again(watching: WatchingService) -> None:
    eventually(lambda: service_events(watching.url, dag_id=SILENT_DAG))

    await watching.restart()
    # The restarted watcher's first round (at start-up) submits the missed day again: the ingest then has
    # written one batch, its duplicate, and no other client talks to this service meanwhile.
    eventually(lambda: ingest_batches(watching.url) >= 1)

    assert len(service_events(watching.url, dag_id=SILENT_DAG, type="deadline_missed")) == 1


def test_the_next_successful_run_resolves_the_missed_day(watching: WatchingService) -> None:
    eventually(lambda: service_events(watching.url, dag_id=SILENT_DAG, type="deadline_missed"))

    answer = httpx.post(
        f"{watching.url}/v1/events",
        json={
            "idempotency_key": f"{SILENT_DAG}/manual__late/-/-1/1/dag_run_success",
            "type": "dag_run_success",
            "dag_id": SILENT_DAG,
            "run_id": "manual__late",
        },
        headers={"authorization": f"Bearer {INGEST_KEY}"},
    )

    assert answer.status_code == 202
    (resolved,) = service_events(watching.url, dag_id=SILENT_DAG, type="deadline_missed")
    assert resolved["resolved_by"] == answer.json()["id"]
