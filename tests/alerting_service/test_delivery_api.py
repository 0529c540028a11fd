"""Dead letters and disabled receivers, recovered through the admin API, with the in-process dispatcher."""

from typing import Any

from alerting_service.models import DeliveryStatus
from tests.alerting_service.conftest import ADMIN, Api, SettingsFactory, running_api
from tests.alerting_service.delivery_fixtures import (
    Database,
    HttpReceiver,
    Reply,
    eventually,
    service_routing,
)


async def dead_letters(api: Api, count: int = 1) -> list[dict[str, Any]] | None:
    """The dead deliveries once there are `count` of them, else None (for `eventually`)."""
    answer = await api.client.get("/v1/deliveries", params={"status": "dead"}, headers=ADMIN)
    assert answer.status_code == 200, answer.text
    dead = answer.json()["data"]
    return dead if len(dead) == count else None


async def test_a_delivery_dead_past_the_horizon_is_replayed_and_delivered(
    make_settings: SettingsFactory, database: Database, http_receiver: HttpReceiver
) -> None:
    http_receiver.answer_by_default("/hook", Reply(503))
    routing = service_routing(http_receiver.receiver("/hook"), horizon="300ms")
    async with running_api(make_settings(routing=routing, run_dispatcher=True), database) as api:
        assert (await api.post_event(task_id="extract")).status_code == 202
        [dead] = await eventually(lambda: dead_letters(api))
        assert dead["reason"] == "horizon_exceeded"

        http_receiver.answer_by_default("/hook", Reply(200))
        replayed = await api.client.post(f"/v1/deliveries/{dead['id']}/replay", headers=ADMIN)
        assert replayed.status_code == 200, replayed.text
        await database.until_status(dead["id"], DeliveryStatus.SENT)


async def test_a_receiver_disabled_by_410_is_re_enabled_and_its_dead_letters_replayed(
    make_settings: SettingsFactory, database: Database, http_receiver: HttpReceiver
) -> None:
    http_receiver.script("/hook", Reply(410))
    webhook = http_receiver.receiver("/hook")
    async with running_api(
        make_settings(routing=service_routing(webhook), run_dispatcher=True), database
    ) as api:
        assert (await api.post_event(task_id="extract")).status_code == 202
        await eventually(lambda: dead_letters(api, 1))
        assert (await api.post_event(task_id="load")).status_code == 202
        dead = await eventually(lambda: dead_letters(api, 2))
        assert [d["reason"] for d in dead] == ["destination_disabled", "destination_disabled"]
        assert len(http_receiver.received("/hook")) == 1  # the second was never sent to the disabled receiver

        enabled = await api.client.post(f"/v1/receivers/{webhook.name}/enable", headers=ADMIN)
        assert enabled.status_code == 200, enabled.text
        assert enabled.json()["was_disabled"] is True
        replayed = await api.client.post(f"/v1/receivers/{webhook.name}/replay", headers=ADMIN)
        assert replayed.json()["replayed"] == 2, replayed.text
        for delivery in dead:
            await database.until_status(delivery["id"], DeliveryStatus.SENT)
    assert len(http_receiver.received("/hook")) == 3
