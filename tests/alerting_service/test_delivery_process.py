"""The service as real processes: nothing acknowledged is lost to a crash, workers never double-send, and
`serve --processes N` delivers and counts as one service.

Slow by nature (processes start, a crashed process's leases must expire), so kept to the behaviours only
real processes can show.
"""

import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from alerting_service.config import load_settings
from tests.alerting_service.conftest import API_KEYS, SettingsFactory
from tests.alerting_service.delivery_fixtures import (
    HttpReceiver,
    Reply,
    ServiceProcess,
    database_url,
    delivered_event_ids,
    eventually,
    free_port,
    post_failure_events,
    service_routing,
)

pytestmark = pytest.mark.slow

StartService = Callable[..., ServiceProcess]


async def test_every_acknowledged_event_is_delivered_after_the_service_is_killed(
    make_settings: SettingsFactory, start_service: StartService, http_receiver: HttpReceiver
) -> None:
    # A short webhook timeout keeps the lease, and so the wait for the dead process's claims, to seconds.
    webhook = http_receiver.receiver("/hook", timeout_seconds=0.5)
    hang = threading.Event()  # the destination hangs, so sends are in flight when the service dies
    http_receiver.answer_by_default("/hook", Reply(hold=hang))
    service = start_service(make_settings(routing=service_routing(webhook), run_dispatcher=True))
    try:
        await service.until_ready()
        acknowledged = await post_failure_events(service.url, 20)
        await eventually(lambda: http_receiver.received("/hook"))
        service.kill()

        http_receiver.answer_by_default("/hook", Reply(200))
        service.start()
        await service.until_ready()
        await eventually(
            lambda: set(acknowledged) <= set(delivered_event_ids(http_receiver.received("/hook"))), within=30
        )
    finally:
        hang.set()


async def test_a_failed_delivery_is_logged_with_its_receiver_reason_and_error(
    make_settings: SettingsFactory, start_service: StartService, http_receiver: HttpReceiver
) -> None:
    webhook = http_receiver.receiver("/hook")
    http_receiver.answer_by_default("/hook", Reply(500))
    service = start_service(make_settings(routing=service_routing(webhook), run_dispatcher=True))
    await service.until_ready()
    await post_failure_events(service.url, 1)

    await service.until_logged("WARNING alerting_service.dispatch.worker delivery failed delivery_id=")

    [line] = [line for line in service.log().splitlines() if " delivery failed " in line]
    assert f"receiver={webhook.name} reason=server_error error=" in line
    assert "HTTP 500" in line


EVENTS = 300


@pytest.mark.postgres
async def test_several_workers_on_postgresql_deliver_each_notification_exactly_once(
    start_service: StartService, http_receiver: HttpReceiver, tmp_path: Path
) -> None:
    # One send slot: a worker has room for 9 claimed deliveries and claims again as soon as 2 are sent, so
    # the three workers claim a few at a time, over and over, from the same oldest due deliveries.
    webhook = http_receiver.receiver("/hook", max_concurrency=1)
    config_file = tmp_path / "alerting.yaml"
    config_file.write_text(yaml.safe_dump(service_routing(webhook)), encoding="utf-8")
    async with database_url("postgresql", tmp_path) as url:
        settings = load_settings(
            database_url=url,
            data_dir=tmp_path,
            config_file=config_file,
            api_keys=API_KEYS,
            run_dispatcher=False,
        )
        service = start_service(settings)
        await service.until_ready()
        # Committed before the workers start: all three begin on the same backlog at once.
        acknowledged = await post_failure_events(service.url, EVENTS)
        workers = [start_service(settings, "worker") for _ in range(3)]
        for worker in workers:  # all three compete for the deliveries, and each can stop gracefully
            await worker.until_logged("worker started")
        await eventually(
            lambda: set(acknowledged) <= set(delivered_event_ids(http_receiver.received("/hook"))), within=60
        )
        worker_exit_codes = [worker.stop() for worker in workers]
        service.stop()

    assert worker_exit_codes == [0, 0, 0]
    by_webhook_id = Counter(receipt.headers["webhook-id"] for receipt in http_receiver.received("/hook"))
    assert len(by_webhook_id) == EVENTS
    assert set(by_webhook_id.values()) == {1}


async def test_serve_with_two_processes_delivers_each_event_once_and_counts_every_event_in_metrics(
    make_settings: SettingsFactory, start_service: StartService, http_receiver: HttpReceiver
) -> None:
    settings = make_settings(routing=service_routing(http_receiver.receiver("/hook")), run_dispatcher=True)
    service = start_service(settings, "serve", "--processes", "2")
    await service.until_ready()
    # Sixty concurrent connections: both processes accept some of them.
    acknowledged = await post_failure_events(service.url, 60)
    await eventually(
        lambda: set(acknowledged) <= set(delivered_event_ids(http_receiver.received("/hook"))), within=30
    )
    # A new connection per scrape, answered by either process: each must count the events of both.
    counted = [await events_received(service.url) for _ in range(8)]
    exit_code = service.stop()

    by_webhook_id = Counter(receipt.headers["webhook-id"] for receipt in http_receiver.received("/hook"))
    assert (len(by_webhook_id), set(by_webhook_id.values())) == (60, {1})
    assert counted == [60.0] * 8
    assert exit_code == 0


async def test_a_worker_serves_its_own_sends_in_its_metrics(
    make_settings: SettingsFactory, start_service: StartService, http_receiver: HttpReceiver
) -> None:
    settings = make_settings(routing=service_routing(http_receiver.receiver("/hook")), run_dispatcher=False)
    service = start_service(settings)
    await service.until_ready()
    metrics_url = f"http://127.0.0.1:{free_port()}"
    worker = start_service(settings, "worker", "--metrics-port", metrics_url.rpartition(":")[2])
    await worker.until_logged("worker started")

    acknowledged = await post_failure_events(service.url, 3)
    await eventually(
        lambda: set(acknowledged) <= set(delivered_event_ids(http_receiver.received("/hook"))), within=30
    )

    async def its_three_sends_counted() -> bool:  # counted once each send has returned: soon after arrival
        return int(await sample(metrics_url, 'alerting_notifications_total{integration="webhook"}')) == 3

    await eventually(its_three_sends_counted)
    # The queue is the database's, shown by `serve`: a worker's zeros would contradict it.
    assert "alerting_delivery_queue_depth" not in await exposition(metrics_url)


async def events_received(service_url: str) -> float:
    return await sample(service_url, 'alerting_events_received_total{type="task_failure"}')


async def exposition(url: str) -> str:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"{url}/metrics")).text


async def sample(url: str, series: str) -> float:
    (line,) = [line for line in (await exposition(url)).splitlines() if line.startswith(f"{series} ")]
    return float(line.split()[-1])
