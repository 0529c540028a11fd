"""The delivery log through the API: dead letters, replay (one, or a receiver's), re-enabling a receiver."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncGenerator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Connection, Engine, create_engine, insert, make_url, select, update

from alerting_service.models import Delivery, DeliveryStatus
from alerting_service.store import deliveries as delivery_store
from alerting_service.store.writer import sync_url
from tests.alerting_service.conftest import ADMIN, INGEST, Api, SettingsFactory, running_api, samples
from tests.alerting_service.delivery_fixtures import Database, ServiceProcess, new_whsec

LEASE = timedelta(seconds=30)
ROUTING = {
    "receivers": [{"name": "hook", "webhook": {"url": "http://127.0.0.1:9/h", "secrets": [new_whsec()]}}]
}


@pytest.fixture
async def api(make_settings: SettingsFactory, database: Database) -> AsyncGenerator[Api]:
    async with running_api(make_settings(routing=ROUTING), database) as running:
        yield running


async def dead_letter(api: Api, key: str, reason: str) -> None:
    """An event whose deliveries to both receivers were given up for `reason`."""
    event_id = (await api.post_event(idempotency_key=key)).json()["id"]

    def give_up(connection: Connection) -> None:
        connection.execute(
            update(Delivery)
            .where(Delivery.event_id == event_id)
            .values(status=DeliveryStatus.DEAD, reason=reason)
        )

    await api.database.write(give_up)


async def listed(api: Api, **filters: str) -> list[tuple[str, str, str]]:
    """(receiver, status, reason) of each delivery the filters list, sorted."""
    answer = await api.client.get("/v1/deliveries", params=filters, headers=ADMIN)
    assert answer.status_code == 200, answer.text
    return sorted((d["receiver"], d["status"], d["reason"]) for d in answer.json()["data"])


async def dead_delivery(api: Api) -> str:
    """A failure whose one delivery was tried twice and dead-lettered, as the dispatcher would leave it."""
    await api.post_event(idempotency_key="dead")
    await api.database.write(_try_twice_then_dead_letter, now=datetime.now(UTC))
    [dead] = (await api.client.get("/v1/deliveries", params={"status": "dead"}, headers=ADMIN)).json()["data"]
    return dead["id"]


def _try_twice_then_dead_letter(connection: Connection, *, now: datetime) -> None:
    [claimed] = delivery_store.claim_batch(connection, now=now, room={"hook": 1}, lease=LEASE)
    delivery_store.mark_retry(
        connection,
        claimed.id,
        lease_until=claimed.lease_until,
        next_attempt_at=now,
        reason="server_error",
        error="HTTP 502",
    )
    [claimed] = delivery_store.claim_batch(connection, now=now, room={"hook": 1}, lease=LEASE)
    delivery_store.mark_dead(
        connection, claimed.id, lease_until=claimed.lease_until, reason="client_error", error="HTTP 400"
    )


async def test_dead_letters_are_listed_with_their_reason_and_error(api: Api) -> None:
    delivery_id = await dead_delivery(api)
    await api.post_event(idempotency_key="alive")

    answer = await api.client.get("/v1/deliveries", params={"status": "dead"}, headers=ADMIN)

    assert answer.json()["count"] == 1
    [dead] = answer.json()["data"]
    assert (dead["id"], dead["reason"], dead["last_error"], dead["attempts"]) == (
        delivery_id,
        "client_error",
        "HTTP 400",
        2,
    )


async def test_a_replayed_delivery_is_pending_again_and_keeps_its_attempts(api: Api) -> None:
    delivery_id = await dead_delivery(api)

    answer = await api.client.post(f"/v1/deliveries/{delivery_id}/replay", headers=ADMIN)

    assert answer.status_code == 200
    assert (answer.json()["status"], answer.json()["attempts"]) == ("pending", 2)
    [due] = await api.database.write(
        delivery_store.claim_batch, now=datetime.now(UTC), room={"hook": 5}, lease=LEASE
    )
    assert due.id == delivery_id


async def test_a_replay_restarts_the_retry_horizon(api: Api) -> None:
    delivery_id = await dead_delivery(api)
    created = (await api.database.delivery(delivery_id)).horizon_starts_at

    await api.client.post(f"/v1/deliveries/{delivery_id}/replay", headers=ADMIN)

    assert (await api.database.delivery(delivery_id)).horizon_starts_at > created


async def test_a_replayed_two_day_old_dead_letter_is_not_a_two_day_old_pending_delivery(api: Api) -> None:
    delivery_id = await dead_delivery(api)
    two_days_ago = datetime.now(UTC) - timedelta(days=2)
    await api.database.write(
        lambda connection: connection.execute(
            update(Delivery).values(created_at=two_days_ago, horizon_starts_at=two_days_ago)
        )
    )

    await api.client.post(f"/v1/deliveries/{delivery_id}/replay", headers=ADMIN)

    exposed = samples((await api.client.get("/metrics")).text)
    assert 0 < exposed["alerting_oldest_pending_delivery_age_seconds", ()] < 60


async def test_replaying_a_delivery_that_is_not_dead_is_a_409(api: Api) -> None:
    event = await api.post_event(idempotency_key="pending")
    [pending] = (await api.event(event.json()["id"]))["deliveries"]

    answer = await api.client.post(f"/v1/deliveries/{pending['id']}/replay", headers=ADMIN)

    assert answer.status_code == 409
    assert "pending" in answer.json()["detail"]


async def test_replaying_an_unknown_delivery_is_a_404(api: Api) -> None:
    assert (await api.client.post("/v1/deliveries/nope/replay", headers=ADMIN)).status_code == 404


async def test_a_disabled_receiver_is_enabled_again(api: Api) -> None:
    await api.database.write(
        delivery_store.disable_receiver, "hook", reason="HTTP 410", now=datetime.now(UTC)
    )

    answer = await api.client.post("/v1/receivers/hook/enable", headers=ADMIN)

    assert answer.json() == {"name": "hook", "was_disabled": True}
    assert await api.database.write(delivery_store.disabled_receivers) == {}


async def test_enabling_an_unknown_receiver_is_a_404(api: Api) -> None:
    assert (await api.client.post("/v1/receivers/pager/enable", headers=ADMIN)).status_code == 404


async def test_dead_letters_are_listed_by_receiver_and_reason(two_receivers: Api) -> None:
    await dead_letter(two_receivers, "a", "horizon_exceeded")
    await dead_letter(two_receivers, "b", "client_error")

    assert await listed(two_receivers, status="dead", receiver="pager", reason="client_error") == [
        ("pager", "dead", "client_error")
    ]


async def test_an_unknown_reason_filter_is_a_422_naming_it(two_receivers: Api) -> None:
    answer = await two_receivers.client.get("/v1/deliveries", params={"reason": "bored"}, headers=ADMIN)

    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["query", "reason"]


async def test_replaying_a_receivers_dead_letters_sends_them_all_again_and_no_others(
    two_receivers: Api,
) -> None:
    await dead_letter(two_receivers, "a", "horizon_exceeded")
    await dead_letter(two_receivers, "b", "client_error")

    answer = await two_receivers.client.post("/v1/receivers/pager/replay", headers=ADMIN)

    assert answer.json() == {"name": "pager", "replayed": 2}
    assert await listed(two_receivers, receiver="pager") == [
        ("pager", "pending", "client_error"),
        ("pager", "pending", "horizon_exceeded"),
    ]
    assert [status for _, status, _ in await listed(two_receivers, receiver="hook")] == ["dead", "dead"]


async def test_replaying_a_receivers_dead_letters_for_one_reason_leaves_the_others_dead(
    two_receivers: Api,
) -> None:
    await dead_letter(two_receivers, "a", "horizon_exceeded")
    await dead_letter(two_receivers, "b", "client_error")

    answer = await two_receivers.client.post(
        "/v1/receivers/hook/replay", params={"reason": "horizon_exceeded"}, headers=ADMIN
    )

    assert answer.json()["replayed"] == 1
    assert await listed(two_receivers, receiver="hook") == [
        ("hook", "dead", "client_error"),
        ("hook", "pending", "horizon_exceeded"),
    ]


async def test_replaying_the_dead_letters_of_a_disabled_receiver_is_a_409_that_says_to_enable_it(
    two_receivers: Api,
) -> None:
    await dead_letter(two_receivers, "a", "destination_disabled")
    await two_receivers.database.write(
        delivery_store.disable_receiver, "hook", reason="HTTP 410", now=datetime.now(UTC)
    )

    answer = await two_receivers.client.post("/v1/receivers/hook/replay", headers=ADMIN)

    assert answer.status_code == 409
    assert "POST /v1/receivers/hook/enable" in answer.json()["detail"]
    assert await listed(two_receivers, receiver="hook") == [("hook", "dead", "destination_disabled")]


async def test_replaying_the_dead_letters_of_an_unknown_receiver_is_a_404(two_receivers: Api) -> None:
    assert (await two_receivers.client.post("/v1/receivers/oncall/replay", headers=ADMIN)).status_code == 404


async def test_replaying_one_delivery_to_a_disabled_receiver_is_a_409_that_says_to_enable_it(
    api: Api,
) -> None:
    delivery_id = await dead_delivery(api)
    await api.database.write(
        delivery_store.disable_receiver, "hook", reason="HTTP 410", now=datetime.now(UTC)
    )

    answer = await api.client.post(f"/v1/deliveries/{delivery_id}/replay", headers=ADMIN)

    assert answer.status_code == 409
    assert "POST /v1/receivers/hook/enable" in answer.json()["detail"]
    assert (await api.database.delivery(delivery_id)).status == DeliveryStatus.DEAD


async def test_replaying_one_delivery_to_a_receiver_no_longer_configured_is_a_409(
    make_settings: SettingsFactory, database: Database
) -> None:
    async with running_api(make_settings(routing=ROUTING), database) as before:
        delivery_id = await dead_delivery(before)
    other = {"receivers": [{"name": "pager", "webhook": ROUTING["receivers"][0]["webhook"]}]}

    async with running_api(make_settings(routing=other), database) as after:
        answer = await after.client.post(f"/v1/deliveries/{delivery_id}/replay", headers=ADMIN)

    assert answer.status_code == 409
    assert "'hook' is no longer in the configuration" in answer.json()["detail"]


# --- replaying a firing notice of an alert resolved meanwhile -----------------------------------------------


async def resolved_after_its_firing_notice_died(
    api: Api, *, resolved_notice: DeliveryStatus
) -> tuple[str, str]:
    """A failure whose notice to `hook` died, closed by a success whose resolved notice was then released
    and left `resolved_notice` (sent, or still pending); (the firing delivery id, the success event id)."""
    failure = (await api.post_event(idempotency_key="f", task_id="load")).json()["id"]
    success = (await api.post_event(idempotency_key="s", type="task_success", task_id="load")).json()["id"]
    [firing] = (await api.event(failure))["deliveries"]

    def firing_dies_then_resolved_released(connection: Connection) -> None:
        connection.execute(
            update(Delivery).where(Delivery.id == firing["id"]).values(status=DeliveryStatus.DEAD)
        )
        delivery_store.release_waiting(connection, settled=[firing["id"]], now=datetime.now(UTC))
        connection.execute(
            update(Delivery).where(Delivery.event_id == success).values(status=resolved_notice)
        )

    await api.database.write(firing_dies_then_resolved_released)
    return firing["id"], success


async def test_a_replayed_firing_notice_of_a_resolved_alert_is_followed_by_a_new_resolved_notice(
    api: Api,
) -> None:
    firing, success = await resolved_after_its_firing_notice_died(api, resolved_notice=DeliveryStatus.SENT)

    await api.client.post(f"/v1/deliveries/{firing}/replay", headers=ADMIN)

    notices = (await api.event(success))["deliveries"]
    assert sorted((d["receiver"], d["kind"], d["status"]) for d in notices) == [
        ("hook", "resolved", "sent"),
        ("hook", "resolved", "waiting"),
    ]
    webhook_ids = {(await api.database.delivery(d["id"])).webhook_id for d in notices}
    assert len(webhook_ids) == 2  # a receiver deduplicating on webhook-id must not drop the new one


async def test_a_resolved_notice_not_sent_yet_waits_again_behind_the_replayed_firing_notice(api: Api) -> None:
    firing, success = await resolved_after_its_firing_notice_died(api, resolved_notice=DeliveryStatus.PENDING)

    await api.client.post("/v1/receivers/hook/replay", headers=ADMIN)

    notices = (await api.event(success))["deliveries"]
    assert [(d["kind"], d["status"]) for d in notices] == [("resolved", "waiting")]
    assert (await api.database.delivery(firing)).status == DeliveryStatus.PENDING


async def test_a_dead_resolved_notice_waits_again_behind_the_replayed_firing_notice_with_a_new_horizon(
    api: Api,
) -> None:
    # Not a second notice beside it (a bulk replay reviving the dead one later would send both), and not
    # its old horizon (the queue-age gauge would read it as days old).
    firing, success = await resolved_after_its_firing_notice_died(api, resolved_notice=DeliveryStatus.DEAD)
    [notice] = (await api.event(success))["deliveries"]
    before = datetime.now(UTC)

    await api.client.post(f"/v1/deliveries/{firing}/replay", headers=ADMIN)

    waiting = await api.database.delivery(notice["id"])
    assert [d["id"] for d in (await api.event(success))["deliveries"]] == [notice["id"]]
    assert waiting.status == DeliveryStatus.WAITING
    assert waiting.horizon_starts_at >= before


async def test_of_several_dead_resolved_notices_only_the_newest_waits_again(api: Api) -> None:
    # Two dead ones of one alert and receiver (left by an earlier version's replays) must not both be sent.
    firing, success = await resolved_after_its_firing_notice_died(api, resolved_notice=DeliveryStatus.DEAD)
    [older] = (await api.event(success))["deliveries"]
    newer = await api.database.write(_a_dead_copy_made_later, older["id"])

    await api.client.post(f"/v1/deliveries/{firing}/replay", headers=ADMIN)

    statuses = {d["id"]: d["status"] for d in (await api.event(success))["deliveries"]}
    assert statuses == {older["id"]: "dead", newer: "waiting"}


def _a_dead_copy_made_later(connection: Connection, delivery_id: str) -> str:
    [row] = connection.execute(select(Delivery.__table__).where(Delivery.id == delivery_id)).mappings()
    copy = dict(row) | {
        "id": str(uuid.uuid4()),
        "webhook_id": delivery_store.new_webhook_id(),
        "created_at": row["created_at"] + timedelta(seconds=1),
    }
    connection.execute(insert(Delivery.__table__), [copy])
    return copy["id"]


async def test_a_resolved_notice_in_flight_is_followed_by_a_new_one_behind_the_replayed_firing_notice(
    api: Api,
) -> None:
    # As when a dispatcher claims the pending notice while the replay reads it.
    firing, success = await resolved_after_its_firing_notice_died(
        api, resolved_notice=DeliveryStatus.IN_FLIGHT
    )

    await api.client.post(f"/v1/deliveries/{firing}/replay", headers=ADMIN)

    notices = (await api.event(success))["deliveries"]
    assert sorted(d["status"] for d in notices) == ["in_flight", "waiting"]


# PostgreSQL only: on SQLite the writers of all processes take turns on one file lock.
@pytest.mark.postgres
@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
async def test_firing_notices_of_one_resolved_alert_replayed_at_once_are_followed_by_one_resolved_notice(
    api: Api, database: Database
) -> None:
    # A task's retry and its failure open one alert; both notices died, the success's resolved notice was
    # sent. Replayed at once by two processes' writers, the second must not find "no resolved notice waiting"
    # while the first has not committed the one it adds.
    opened = [
        (await api.post_event(idempotency_key=kind, type=kind, task_id="load")).json()["id"]
        for kind in ("task_retry", "task_failure")
    ]
    success = (await api.post_event(idempotency_key="s", type="task_success", task_id="load")).json()["id"]
    firing = [(await api.event(event))["deliveries"][0]["id"] for event in opened]
    await api.database.write(_dead_letter, firing)
    await api.database.write(_sent, [success])
    engine = create_engine(sync_url(make_url(api.database.settings.database_url)))
    now = datetime.now(UTC)

    with engine.begin() as first:
        delivery_store.replay(first, firing[0], now=now)
        second = threading.Thread(target=_replay_in_a_transaction, args=(engine, firing[1], now))
        second.start()
        second.join(timeout=2)  # it waits for the first to commit, or is done already
    second.join()
    engine.dispose()

    notices = (await api.event(success))["deliveries"]
    assert sorted(d["status"] for d in notices) == ["sent", "waiting"]


def _replay_in_a_transaction(engine: Engine, delivery_id: str, now: datetime) -> None:
    with engine.begin() as connection:
        delivery_store.replay(connection, delivery_id, now=now)


def _sent(connection: Connection, event_ids: list[str]) -> None:
    connection.execute(
        update(Delivery).where(Delivery.event_id.in_(event_ids)).values(status=DeliveryStatus.SENT)
    )


async def test_a_firing_notice_replayed_as_its_alert_is_resolved_stays_ahead_of_the_resolved_notice(
    make_settings: SettingsFactory, database: Database, start_service: Callable[..., ServiceProcess]
) -> None:
    # The success and the replay arrive at once (the service as a real process, each request on a connection
    # of its own): whichever is written second must see the first, or the resolved notice is due at once,
    # beside the replayed firing notice, and the receiver may see the alert fire last.
    service = start_service(make_settings(routing=ROUTING))
    await service.until_ready()
    tasks = [f"load_{n}" for n in range(40)]
    async with httpx.AsyncClient(
        base_url=service.url, headers=ADMIN, limits=httpx.Limits(max_keepalive_connections=0)
    ) as client:

        async def post(kind: str, task: str, delay: float = 0) -> str:
            await asyncio.sleep(delay)
            body = {"idempotency_key": f"{kind}/{task}", "type": kind, "dag_id": "dag", "task_id": task}
            answer = await client.post("/v1/events", json=body, headers=INGEST)
            return answer.json()["id"]

        async def deliveries(event_id: str) -> list[dict[str, Any]]:
            return (await client.get(f"/v1/events/{event_id}")).json()["deliveries"]

        failures = await asyncio.gather(*(post("task_failure", task) for task in tasks))
        firing = [(await deliveries(failure))[0]["id"] for failure in failures]
        await database.write(_dead_letter, firing)

        replays, successes = await asyncio.gather(
            asyncio.gather(*(client.post(f"/v1/deliveries/{delivery}/replay") for delivery in firing)),
            asyncio.gather(*(post("task_success", task, n % 5 / 1000) for n, task in enumerate(tasks))),
        )

        assert {replay.status_code for replay in replays} == {200}
        resolved = [[d["status"] for d in await deliveries(success)] for success in successes]
    assert resolved == [["waiting"]] * len(tasks)


async def test_a_bulk_replay_over_several_transactions_sends_each_resolved_notice_once_after_its_firing(
    api: Api,
) -> None:
    # 600 dead letters: more than one transaction's 500, so some alerts' firing and resolved notices are
    # revived by different transactions. The resolved notice was then sent twice, one of them ahead of the
    # firing notice, which left the alert open at the receiver.
    tasks = [f"load_{n}" for n in range(delivery_store.REPLAY_BATCH // 2 + 50)]
    for task in tasks:
        await api.post_event(idempotency_key=f"f/{task}", type="task_failure", task_id=task)
    for task in tasks:
        await api.post_event(idempotency_key=f"s/{task}", type="task_success", task_id=task)
    await api.database.write(_everything_dead)

    answer = await api.client.post("/v1/receivers/hook/replay", headers=ADMIN)

    assert answer.json()["replayed"] == 2 * len(tasks)  # every dead letter, however the batches fell
    listed = (await api.client.get("/v1/deliveries", params={"limit": 1000}, headers=ADMIN)).json()["data"]
    firing = [delivery for delivery in listed if delivery["kind"] == "firing"]
    resolved = [delivery for delivery in listed if delivery["kind"] == "resolved"]
    assert {delivery["status"] for delivery in firing} == {"pending"}
    assert len(resolved) == len(tasks)
    assert {delivery["status"] for delivery in resolved} == {"waiting"}


def _everything_dead(connection: Connection) -> None:
    connection.execute(update(Delivery).values(status=DeliveryStatus.DEAD, reason="client_error"))


def _dead_letter(connection: Connection, delivery_ids: list[str]) -> None:
    connection.execute(
        update(Delivery).where(Delivery.id.in_(delivery_ids)).values(status=DeliveryStatus.DEAD)
    )


async def test_receivers_are_listed_with_their_destination_state_and_unsent_deliveries(
    two_receivers: Api,
) -> None:
    await dead_letter(two_receivers, "given-up", "client_error")
    await two_receivers.post_event(idempotency_key="still-pending")
    await two_receivers.database.write(
        delivery_store.disable_receiver, "pager", reason="HTTP 410", now=datetime.now(UTC)
    )

    answer = await two_receivers.client.get("/v1/receivers", headers=ADMIN)

    assert answer.status_code == 200, answer.text
    hook, pager = answer.json()["data"]
    assert (hook["name"], hook["integration"], hook["destination"]) == (
        "hook",
        "webhook",
        "http://127.0.0.1:9/<redacted>",
    )
    assert (hook["disabled_at"], hook["disabled_reason"]) == (None, None)
    assert (pager["name"], pager["disabled_reason"]) == ("pager", "HTTP 410")
    assert pager["disabled_at"] is not None
    assert hook["unsent"] == pager["unsent"] == {"dead": 1, "pending": 1}


async def test_receivers_are_listed_for_the_admin_scope_only(two_receivers: Api) -> None:
    assert (await two_receivers.client.get("/v1/receivers", headers=INGEST)).status_code == 403
