"""The service as real processes: nothing acknowledged is lost to a crash, and workers never double-send.

Slow by nature (processes start, a crashed worker's lease must expire), so kept to the two behaviours that
only real processes can show.
"""

import threading
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.alerting_service.delivery_fixtures import (  # ruff: ignore[unused-import]
    ADMIN_KEY,
    INGEST_KEY,
    HttpReceiver,
    Reply,
    ServiceProcess,
    database_url,
    delivered_event_ids,
    eventually,
    http_receiver_fixture,
    post_failure_events,
    write_service_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]


@pytest.fixture(
    name="service_environment", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
async def service_environment_fixture(
    request: pytest.FixtureRequest, tmp_path: Path, http_receiver: HttpReceiver
) -> AsyncIterator[dict[str, str]]:
    # A short webhook timeout keeps the lease (and so the wait for a crashed process's claims) to seconds.
    webhook = http_receiver.receiver("/hook", timeout_seconds=0.5)
    async with database_url(request.param, tmp_path) as url:
        yield {
            "ALERTING_DATABASE_URL": url,
            "ALERTING_DATA_DIR": str(tmp_path),
            "ALERTING_CONFIG_FILE": str(write_service_config(tmp_path / "alerting.yaml", webhook)),
            "ALERTING_API_KEYS": f"airflow:ingest:{INGEST_KEY},operator:admin:{ADMIN_KEY}",
        }


async def test_every_acknowledged_event_is_delivered_after_the_service_is_killed(
    service_environment: dict[str, str], http_receiver: HttpReceiver, tmp_path: Path
) -> None:
    hang = threading.Event()  # the destination hangs, so sends are in flight when the service dies
    http_receiver.answer_by_default("/hook", Reply(hold=hang))
    service = ServiceProcess("serve", service_environment, tmp_path / "serve.log")
    try:
        service.start()
        await service.until_ready()
        acknowledged = await post_failure_events(service.url, 20)
        await eventually(lambda: http_receiver.received("/hook"))
        service.kill()

        http_receiver.answer_by_default("/hook", Reply(200))
        hang.set()
        service.start()
        await service.until_ready()
        await eventually(
            lambda: set(acknowledged) <= set(delivered_event_ids(http_receiver.received("/hook"))), within=30
        )
    finally:
        hang.set()
        service.stop()


@pytest.mark.postgres
async def test_several_workers_on_postgresql_deliver_each_notification_exactly_once(
    http_receiver: HttpReceiver, tmp_path: Path
) -> None:
    webhook = http_receiver.receiver("/hook")
    async with database_url("postgresql", tmp_path) as url:
        environment = {
            "ALERTING_DATABASE_URL": url,
            "ALERTING_DATA_DIR": str(tmp_path),
            "ALERTING_CONFIG_FILE": str(write_service_config(tmp_path / "alerting.yaml", webhook)),
            "ALERTING_API_KEYS": f"airflow:ingest:{INGEST_KEY}",
            "ALERTING_RUN_DISPATCHER": "false",
        }
        service = ServiceProcess("serve", environment, tmp_path / "serve.log")
        workers = [ServiceProcess("worker", environment, tmp_path / f"worker-{n}.log") for n in range(3)]
        try:
            service.start()
            await service.until_ready()
            for worker in workers:
                worker.start()
            acknowledged = await post_failure_events(service.url, 60)
            await eventually(
                lambda: set(acknowledged) <= set(delivered_event_ids(http_receiver.received("/hook"))),
                within=30,
            )
        finally:
            worker_exit_codes = [worker.stop() for worker in workers]
            service.stop()

        assert worker_exit_codes == [0, 0, 0]
        by_webhook_id = Counter(receipt.headers["webhook-id"] for receipt in http_receiver.received("/hook"))
        assert len(by_webhook_id) == 60
        assert set(by_webhook_id.values()) == {1}
