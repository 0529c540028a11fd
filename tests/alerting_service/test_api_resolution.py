"""Resolve on success: a later success closes the open failures and tells the receivers that were alerted."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from alerting_service.models import DeliveryStatus
from tests.alerting_service.conftest import ADMIN, Api, SettingsFactory, running_api
from tests.alerting_service.delivery_fixtures import (
    Database,
    HttpReceiver,
    Reply,
    eventually,
    new_whsec,
    service_routing,
)

RUN = "scheduled__2026-01-14T02:00:00+00:00"
# Failures to the email and the webhook, retries to the webhook only, successes nowhere (the default route).
ROUTING = {
    "receivers": [
        {
            "name": "mail",
            "email": {"to": ["a@bank.example"], "from": "b@bank.example", "smarthost": {"host": "h"}},
        },
        {"name": "hook", "webhook": {"url": "http://127.0.0.1:9/h", "secrets": [new_whsec()]}},
    ]
}


@pytest.fixture
async def api(make_settings: SettingsFactory, database: Database) -> AsyncGenerator[Api]:
    async with running_api(make_settings(routing=ROUTING), database) as running:
        yield running


async def post(api: Api, key: str, event_type: str, **fields: Any) -> str:
    body = {"idempotency_key": key, "type": event_type, "dag_id": "batch", "run_id": RUN} | fields
    answer = await api.client.post("/v1/events", json=body, headers=ADMIN)
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def targets(event: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted((delivery["receiver"], delivery["kind"]) for delivery in event["deliveries"])


async def test_a_task_success_resolves_the_failure_of_the_same_task_instance(api: Api) -> None:
    failure = await post(api, "f", "task_failure", task_id="load")

    success = await post(api, "s", "task_success", task_id="load")

    assert (await api.event(failure))["resolved_by"] == success


async def test_resolved_notices_go_only_to_the_receivers_that_got_the_alert(api: Api) -> None:
    await post(api, "r", "task_retry", task_id="load")  # to the webhook only

    success = await post(api, "s", "task_success", task_id="load")

    assert targets(await api.event(success)) == [("hook", "resolved")]


async def test_a_success_closing_a_retry_and_a_failure_notifies_each_receiver_once(api: Api) -> None:
    retry = await post(api, "r", "task_retry", task_id="load")
    failure = await post(api, "f", "task_failure", task_id="load")

    success = await post(api, "s", "task_success", task_id="load")

    assert targets(await api.event(success)) == [("hook", "resolved"), ("mail", "resolved")]
    assert [(await api.event(e))["resolved_by"] for e in (retry, failure)] == [success, success]


@pytest.mark.parametrize(
    "other", [{"task_id": "extract"}, {"map_index": 3}, {"run_id": "manual__2026-01-15"}, {"dag_id": "other"}]
)
async def test_a_success_of_another_task_instance_resolves_nothing(api: Api, other: dict[str, Any]) -> None:
    failure = await post(api, "f", "task_failure", task_id="load")

    success = await post(api, "s", "task_success", **({"task_id": "load"} | other))

    assert (await api.event(failure))["resolved_by"] is None
    assert targets(await api.event(success)) == []


async def test_a_resolved_failure_is_not_resolved_again(api: Api) -> None:
    await post(api, "f", "task_failure", task_id="load")
    await post(api, "s1", "task_success", task_id="load", try_number=2)

    second = await post(api, "s2", "task_success", task_id="load", try_number=3)

    assert targets(await api.event(second)) == []


async def test_a_dag_run_success_resolves_the_run_failure_and_its_missed_deadline(api: Api) -> None:
    run_failure = await post(api, "rf", "dag_run_failure")
    deadline = await post(api, "dl", "deadline_missed")
    task_failure = await post(api, "tf", "task_failure", task_id="load")

    success = await post(api, "ok", "dag_run_success")

    assert [(await api.event(e))["resolved_by"] for e in (run_failure, deadline)] == [success, success]
    assert (await api.event(task_failure))[
        "resolved_by"
    ] is None  # closed by its task's success, not the run's


async def test_a_dag_run_success_resolves_an_alert_about_the_dag_itself(api: Api) -> None:
    # A missed deadline without a run (a dead man's switch) is fingerprinted dag:<dag_id>.
    overdue = await post(api, "overdue", "deadline_missed", run_id=None)

    success = await post(api, "ok", "dag_run_success")

    assert (await api.event(overdue))["fingerprint"] == "dag:batch"
    assert (await api.event(overdue))["resolved_by"] == success
    assert targets(await api.event(success)) == [("hook", "resolved"), ("mail", "resolved")]


async def test_a_muted_failure_is_resolved_without_a_resolved_notice(api: Api) -> None:
    silence = {"matchers": [{"name": "task_id", "value": "load"}], "ends_at": "2999-01-01T00:00:00Z"}
    assert (await api.client.post("/v1/silences", json=silence, headers=ADMIN)).status_code == 201
    failure = await post(api, "f", "task_failure", task_id="load")

    success = await post(api, "s", "task_success", task_id="load")

    assert (await api.event(failure))["resolved_by"] == success
    assert targets(await api.event(success)) == []


async def test_a_muted_success_closes_a_notified_failure_without_a_resolved_notice(api: Api) -> None:
    failure = await post(api, "f", "task_failure", task_id="load")  # not muted: notified to both receivers
    silence = {"matchers": [{"name": "type", "value": "task_success"}], "ends_at": "2999-01-01T00:00:00Z"}
    assert (await api.client.post("/v1/silences", json=silence, headers=ADMIN)).status_code == 201

    success = await post(api, "s", "task_success", task_id="load")

    assert targets(await api.event(failure)) == [("hook", "firing"), ("mail", "firing")]
    assert (await api.event(failure))["resolved_by"] == success
    assert targets(await api.event(success)) == []


async def test_a_resolved_notice_is_stored_waiting_while_the_failures_notice_is_unsent(api: Api) -> None:
    await post(api, "f", "task_failure", task_id="load")  # its notices stay pending: no dispatcher here

    success = await post(api, "s", "task_success", task_id="load")

    statuses = {d["receiver"]: d["status"] for d in (await api.event(success))["deliveries"]}
    assert statuses == {"mail": "waiting", "hook": "waiting"}


async def test_a_resolved_notice_waits_until_the_failure_it_resolves_was_delivered(
    make_settings: SettingsFactory, database: Database, http_receiver: HttpReceiver
) -> None:
    http_receiver.script("/hook", Reply(503))  # the failure's first attempt; it is retried a second later
    routing = service_routing(http_receiver.receiver("/hook")) | {
        "retry": {"initial_backoff": "1s", "max_backoff": "1s", "horizon": "1h"}
    }
    async with running_api(make_settings(routing=routing, run_dispatcher=True), database) as api:
        await post(api, "f", "task_failure", task_id="load")
        await eventually(lambda: http_receiver.received("/hook"))
        await post(api, "s", "task_success", task_id="load")
        await eventually(lambda: len(http_receiver.received("/hook")) == 3)

    kinds = [json.loads(receipt.body)["type"] for receipt in http_receiver.received("/hook")]
    assert kinds == ["alert.firing", "alert.firing", "alert.resolved"]


async def test_a_resolved_webhook_carries_the_fingerprint_of_the_failure_it_resolves(
    make_settings: SettingsFactory, database: Database, http_receiver: HttpReceiver
) -> None:
    # An incident tool's deduplication key: the firing and the resolved notice must name the same alert.
    routing = service_routing(http_receiver.receiver("/hook"))
    async with running_api(make_settings(routing=routing, run_dispatcher=True), database) as api:
        await post(api, "f", "task_failure", task_id="load")
        await eventually(lambda: http_receiver.received("/hook"))
        await post(api, "s", "task_success", task_id="load")
        await eventually(lambda: len(http_receiver.received("/hook")) == 2)

    bodies = [json.loads(receipt.body) for receipt in http_receiver.received("/hook")]
    assert [(body["type"], body["data"]["event"]["fingerprint"]) for body in bodies] == [
        ("alert.firing", f"task:batch/{RUN}/load/-1"),
        ("alert.resolved", f"task:batch/{RUN}/load/-1"),
    ]


async def test_a_resolved_webhook_names_every_alert_it_closes_the_dags_own_included(
    make_settings: SettingsFactory, database: Database, http_receiver: HttpReceiver
) -> None:
    # The dead man's switch's missed day is keyed dag:<dag_id>, not by the run whose success closes it: an
    # incident tool closes it only if the resolved notice names it.
    hook = http_receiver.receiver("/hook")
    routing = service_routing(hook) | {"route": {"receivers": [hook.name]}}
    async with running_api(make_settings(routing=routing, run_dispatcher=True), database) as api:
        await post(api, "missed-day", "deadline_missed", run_id=None)
        await post(api, "run-failed", "dag_run_failure")
        await eventually(lambda: len(http_receiver.received("/hook")) == 2)
        await post(api, "ok", "dag_run_success")
        await eventually(lambda: len(http_receiver.received("/hook")) == 3)

    bodies = [json.loads(receipt.body) for receipt in http_receiver.received("/hook")]
    assert [(body["type"], body["data"]["resolves"]) for body in bodies] == [
        ("alert.firing", []),
        ("alert.firing", []),
        ("alert.resolved", ["dag:batch", f"run:batch/{RUN}"]),
    ]


async def test_a_retried_resolved_webhook_names_the_same_closed_alerts(
    make_settings: SettingsFactory, database: Database, http_receiver: HttpReceiver
) -> None:
    # The first try is sent from what the ingest had in hand, a retry from what it reads back: one body.
    routing = service_routing(http_receiver.receiver("/hook"))
    routing["route"] = {"receivers": ["incident-webhook"]}
    async with running_api(make_settings(routing=routing, run_dispatcher=True), database) as api:
        await post(api, "f", "task_failure", task_id="load")
        await eventually(lambda: http_receiver.received("/hook"))
        http_receiver.script("/hook", Reply(503))
        await post(api, "s", "task_success", task_id="load")
        await eventually(lambda: len(http_receiver.received("/hook")) == 3)

    first_try, retry = (receipt.body for receipt in http_receiver.received("/hook")[1:])
    assert json.loads(first_try)["data"]["resolves"] == [f"task:batch/{RUN}/load/-1"]
    assert retry == first_try


async def test_a_resolved_notice_to_a_receiver_the_failure_already_reached_is_sent_at_once(
    make_settings: SettingsFactory, database: Database, http_receiver: HttpReceiver
) -> None:
    routing = service_routing(http_receiver.receiver("/hook"))
    async with running_api(make_settings(routing=routing, run_dispatcher=True), database) as api:
        failure = await post(api, "f", "task_failure", task_id="load")
        [firing] = (await api.event(failure))["deliveries"]
        await database.until_status(firing["id"], DeliveryStatus.SENT)

        await post(api, "s", "task_success", task_id="load")

        # Nothing to wait for: held back as waiting, it would go out only at the next sweep, a minute later.
        await eventually(lambda: len(http_receiver.received("/hook")) == 2, within=5)

    kinds = [json.loads(receipt.body)["type"] for receipt in http_receiver.received("/hook")]
    assert kinds == ["alert.firing", "alert.resolved"]
