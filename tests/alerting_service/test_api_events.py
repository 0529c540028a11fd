"""POST /v1/events: what is stored, idempotency, refused input (also the admin API's parameters); and reading
the event log."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from alerting_service.api.app import create_app
from alerting_service.config import load_settings
from tests.alerting_service.conftest import ADMIN, API_KEYS, INGEST, Api, SettingsFactory, running_api
from tests.alerting_service.delivery_fixtures import Database, eventually, new_whsec

ROUTING = {
    "receivers": [
        {"name": "oncall-email", "email": {"to": ["oncall@bank.example"], "from": "af@bank.example",
                                           "smarthost": {"host": "127.0.0.1", "port": 2525}, "tls": "none"}},
        {"name": "incident-webhook", "webhook": {"url": "http://127.0.0.1:9/hook", "secrets": [new_whsec()]}},
    ]
}  # fmt: skip


async def test_an_accepted_event_is_stored_with_the_id_answered(api: Api) -> None:
    answer = await api.post_event(idempotency_key="k1", task_id="load", run_id="r1", labels={"team": "de"})

    assert answer.status_code == 202
    assert answer.json()["duplicate"] is False
    stored = await api.event(answer.json()["id"])
    assert (stored["idempotency_key"], stored["task_id"], stored["labels"]) == ("k1", "load", {"team": "de"})


@pytest.mark.parametrize(
    ("event_type", "severity"),
    [
        ("task_failure", "error"),
        ("task_retry", "warning"),
        ("dag_run_failure", "critical"),
        ("task_success", "info"),
    ],
)
async def test_severity_defaults_by_type(api: Api, event_type: str, severity: str) -> None:
    answer = await api.post_event(type=event_type)

    assert (await api.event(answer.json()["id"]))["severity"] == severity


async def test_a_given_severity_is_kept(api: Api) -> None:
    answer = await api.post_event(type="task_retry", severity="critical")

    assert (await api.event(answer.json()["id"]))["severity"] == "critical"


async def test_the_same_key_and_body_again_answers_the_same_id_and_stores_nothing_new(
    make_settings: SettingsFactory, database: Database
) -> None:
    async with running_api(make_settings(routing=ROUTING), database) as api:
        first = await api.post_event(idempotency_key="again", task_id="t")
        counts = await api.row_counts()
        second = await api.post_event(idempotency_key="again", task_id="t")

        assert second.status_code == 202
        assert second.json() == {"id": first.json()["id"], "duplicate": True}
        assert await api.row_counts() == counts
        assert counts["deliveries"] == 2


async def test_the_same_body_with_keys_in_another_order_is_a_duplicate(api: Api) -> None:
    body = (
        '{"idempotency_key": "order", "type": "task_failure", "dag_id": "d", "labels": {"a": "1", "b": "2"}}'
    )
    reordered = (
        '{"labels": {"b": "2", "a": "1"}, "dag_id": "d", "type": "task_failure", "idempotency_key": "order"}'
    )
    first = await api.client.post("/v1/events", content=body, headers=INGEST)
    second = await api.client.post("/v1/events", content=reordered, headers=INGEST)

    assert second.json() == {"id": first.json()["id"], "duplicate": True}


async def test_the_same_instant_in_another_time_zone_is_a_duplicate(api: Api) -> None:
    first = await api.post_event(idempotency_key="tz", occurred_at="2026-01-14T02:07:12Z")
    second = await api.post_event(idempotency_key="tz", occurred_at="2026-01-14T03:07:12+01:00")

    assert second.json() == {"id": first.json()["id"], "duplicate": True}


async def test_the_same_key_with_another_body_is_a_409_naming_the_key(api: Api) -> None:
    await api.post_event(idempotency_key="reused", try_number=1)
    counts = await api.row_counts()

    answer = await api.post_event(idempotency_key="reused", try_number=2)

    assert answer.status_code == 409
    assert "reused" in answer.json()["detail"]
    assert await api.row_counts() == counts


async def test_concurrent_events_are_each_stored_under_their_own_id(api: Api) -> None:
    answers = await asyncio.gather(
        *(api.post_event(idempotency_key=f"burst/{n}", task_id=f"t{n}") for n in range(200))
    )

    assert {answer.status_code for answer in answers} == {202}
    assert len({answer.json()["id"] for answer in answers}) == 200
    assert (await api.row_counts())["events"] == 200


async def test_concurrent_repeats_of_one_key_store_one_event(api: Api) -> None:
    answers = await asyncio.gather(*(api.post_event(idempotency_key="storm", task_id="t") for _ in range(20)))

    assert len({answer.json()["id"] for answer in answers}) == 1
    assert sorted(answer.json()["duplicate"] for answer in answers) == [False] + [True] * 19
    assert (await api.row_counts())["events"] == 1


async def test_a_failure_gets_one_pending_delivery_per_routed_receiver(
    make_settings: SettingsFactory, database: Database
) -> None:
    async with running_api(make_settings(routing=ROUTING), database) as api:
        answer = await api.post_event(type="task_failure")

        deliveries = (await api.event(answer.json()["id"]))["deliveries"]
        assert sorted((d["receiver"], d["kind"], d["status"]) for d in deliveries) == [
            ("incident-webhook", "firing", "pending"),
            ("oncall-email", "firing", "pending"),
        ]


async def test_a_retry_goes_to_webhooks_only_by_default(
    make_settings: SettingsFactory, database: Database
) -> None:
    async with running_api(make_settings(routing=ROUTING), database) as api:
        answer = await api.post_event(type="task_retry")

        deliveries = (await api.event(answer.json()["id"]))["deliveries"]
        assert [d["receiver"] for d in deliveries] == ["incident-webhook"]


# --- refused input: a clear answer, and nothing written ---------------------------------------------------

VALID = {"idempotency_key": "k", "type": "task_failure", "dag_id": "d"}


def without(field: str) -> dict[str, Any]:
    return {name: value for name, value in VALID.items() if name != field}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (without("idempotency_key"), "idempotency_key"),
        (without("type"), "type"),
        (without("dag_id"), "dag_id"),
        (VALID | {"type": "task_exploded"}, "type"),
        (VALID | {"dag_id": 42}, "dag_id"),
        (VALID | {"try_number": "2"}, "try_number"),
        (VALID | {"try_number": 2**63}, "try_number"),
        (VALID | {"max_tries": 2**31}, "max_tries"),
        (VALID | {"occurred_at": "2026-01-14T02:07:12"}, "occurred_at"),
        (VALID | {"occurred_at": 1768356432}, "occurred_at"),  # Unix time: read as such, a guess at its unit
        (VALID | {"logical_date": "1768356432000"}, "logical_date"),
        (VALID | {"labels": {"team": 1}}, "labels"),
        (VALID | {"dag_id": "d\u0000"}, "dag_id"),
        (VALID | {"run_id": "\U0001f525" * 250}, "run_id"),  # 250 characters, 1,000 bytes in UTF-8
        (VALID | {"unexpected": 1}, "unexpected"),
    ],
)
async def test_an_invalid_event_is_a_422_naming_the_field_and_nothing_is_written(
    api: Api, body: dict[str, Any], field: str
) -> None:
    answer = await api.client.post("/v1/events", json=body, headers=INGEST)

    assert answer.status_code == 422
    assert any(error["loc"][:2] == ["body", field] for error in answer.json()["detail"]), answer.json()
    assert (await api.row_counts())["events"] == 0


@pytest.mark.parametrize(
    ("body", "field", "limit"),
    [
        (VALID | {"dag_id": "d" * 251}, "dag_id", 250),
        (VALID | {"exception": "x" * 32769}, "exception", 32768),
        (VALID | {"log_url": "https://airflow/" + "l" * 2048}, "log_url", 2048),
        (VALID | {"labels": {"team": "t" * 1025}}, "labels", 1024),
    ],
)
async def test_a_text_over_its_limit_is_a_422_saying_how_many_characters_it_may_have(
    api: Api, body: dict[str, Any], field: str, limit: int
) -> None:
    answer = await api.client.post("/v1/events", json=body, headers=INGEST)

    assert answer.status_code == 422
    [error] = answer.json()["detail"]
    assert error["loc"][:2] == ["body", field]
    assert error["msg"] == f"String should have at most {limit} characters"


@pytest.mark.parametrize("field", ["dag_id", "task_id"])
@pytest.mark.parametrize("value", ["=?utf-8?q?etl=0D=0AReply-To:_x@evil.example?=", "daily etl", "etl\n"])
async def test_a_dag_or_task_id_outside_airflows_id_grammar_is_a_422_naming_it(
    api: Api, field: str, value: str
) -> None:
    # These ids go into email subjects, where text shaped as an RFC 2047 encoded word would be decoded.
    answer = await api.client.post("/v1/events", json=VALID | {field: value}, headers=INGEST)

    assert answer.status_code == 422
    [error] = answer.json()["detail"]
    assert error["loc"][:2] == ["body", field]
    assert error["msg"] == "Value error, must be an Airflow id: letters, digits, '_', '.' and '-' only"
    assert (await api.row_counts())["events"] == 0


@pytest.mark.parametrize(
    ("log_url", "message"),
    [
        (
            "https://airflow.bank.example@evil.example/login",
            "must not carry a user name or password before its host",
        ),
        ("https://user:pw@airflow.bank.example/", "must not carry a user name or password before its host"),
        ("https:///dags/etl", "has no host"),
        (
            "https://airflow.bank.example/log\n\nAirflow log: https://evil.example/",
            "must not contain whitespace or control characters",
        ),
        ("https://airflow.bank.example:99999/", "is not a valid URL"),
    ],
)
async def test_a_log_url_that_hides_or_lacks_its_host_is_a_422(api: Api, log_url: str, message: str) -> None:
    answer = await api.client.post("/v1/events", json=VALID | {"log_url": log_url}, headers=INGEST)

    assert answer.status_code == 422
    [error] = answer.json()["detail"]
    assert error["loc"][:2] == ["body", "log_url"]
    assert error["msg"] == f"Value error, {message}"


async def test_ids_of_250_characters_of_three_utf8_bytes_each_are_stored(api: Api) -> None:
    # The longest Airflow ids of the widest word characters: their fingerprint fits PostgreSQL's index.
    ids = {name: "\u6f22" * 250 for name in ("dag_id", "task_id", "run_id")}

    answer = await api.client.post("/v1/events", json=VALID | ids, headers=INGEST)

    assert answer.status_code == 202, answer.text
    assert (await api.event(answer.json()["id"]))["task_id"] == ids["task_id"]


@pytest.mark.parametrize("content", [b"{", b"not json", b"[1, 2]", b""])
async def test_a_body_that_is_not_a_json_object_is_a_422_saying_why(api: Api, content: bytes) -> None:
    answer = await api.client.post("/v1/events", content=content, headers=INGEST)

    assert answer.status_code == 422
    [error] = answer.json()["detail"]
    assert error["loc"] == ["body"] and error["msg"]
    assert (await api.row_counts())["events"] == 0


async def test_a_body_declared_over_the_limit_is_a_413_before_it_is_read(api: Api) -> None:
    oversized = (
        b'{"idempotency_key": "big", "type": "task_failure", "dag_id": "d", "exception": "' + b"x" * 70_000
    )
    answer = await api.client.post("/v1/events", content=oversized + b'"}', headers=INGEST)

    assert answer.status_code == 413
    assert "65536" in answer.json()["detail"]
    assert (await api.row_counts())["events"] == 0


async def test_a_body_of_exactly_the_limit_is_accepted(api: Api) -> None:
    event = b'{"idempotency_key": "at-the-limit", "type": "task_failure", "dag_id": "d"}'
    answer = await api.client.post("/v1/events", content=event.ljust(65536), headers=INGEST)

    assert answer.status_code == 202, answer.text


async def test_a_streamed_body_over_the_limit_is_a_413(api: Api) -> None:
    async def chunks() -> Any:
        yield b'{"idempotency_key": "big", "type": "task_failure", "dag_id": "d", "exception": "'
        for _ in range(10):
            await asyncio.sleep(0)  # each chunk its own write, as from a slow client
            yield b"x" * 10_000
        yield b'"}'

    answer = await api.client.post("/v1/events", content=chunks(), headers=INGEST)

    assert answer.status_code == 413
    assert (await api.row_counts())["events"] == 0


@pytest.mark.parametrize(
    ("method", "url", "parameter"),
    [
        ("GET", "/v1/events?dag_id=a%00b", ["query", "dag_id"]),
        ("GET", "/v1/events/a%00b", ["path", "event_id"]),
        ("GET", "/v1/deliveries?receiver=a%00b", ["query", "receiver"]),
        ("POST", "/v1/deliveries/a%00b/replay", ["path", "delivery_id"]),
        ("DELETE", "/v1/silences/a%00b", ["path", "silence_id"]),
        ("POST", "/v1/receivers/a%00b/enable", ["path", "name"]),
        ("POST", "/v1/receivers/a%00b/replay", ["path", "name"]),
    ],
)
async def test_a_nul_in_any_path_or_query_parameter_is_a_422_naming_it(
    api: Api, method: str, url: str, parameter: list[str]
) -> None:
    answer = await api.client.request(method, url, headers=ADMIN)

    assert answer.status_code == 422
    assert [error["loc"] for error in answer.json()["detail"]] == [parameter]


# --- the event log ----------------------------------------------------------------------------------------


async def test_the_event_log_filters_by_dag_and_type_and_counts_all_matches(api: Api) -> None:
    for n in range(3):
        await api.post_event(idempotency_key=f"a{n}", dag_id="dag_a", type="task_failure")
    await api.post_event(idempotency_key="a-retry", dag_id="dag_a", type="task_retry")
    await api.post_event(idempotency_key="b", dag_id="dag_b", type="task_failure")

    page = await api.client.get(
        "/v1/events", params={"dag_id": "dag_a", "type": "task_failure", "limit": 2}, headers=ADMIN
    )

    assert page.status_code == 200
    assert page.json()["count"] == 3
    assert [event["dag_id"] for event in page.json()["data"]] == ["dag_a", "dag_a"]


async def test_the_event_log_filters_by_time_received(api: Api) -> None:
    first = await api.post_event(idempotency_key="early")
    boundary = (await api.event(first.json()["id"]))["received_at"]
    await asyncio.sleep(0.01)
    await api.post_event(idempotency_key="late")

    before = await api.client.get("/v1/events", params={"until": boundary}, headers=ADMIN)
    after = await api.client.get("/v1/events", params={"since": boundary}, headers=ADMIN)

    assert before.json()["count"] == 0
    assert after.json()["count"] == 2


@pytest.mark.parametrize("since", ["2026-01-14T02:00:00", "0001-01-01T00:00:00+14:00", "0.5", "1768356432"])
async def test_a_time_filter_without_zone_or_out_of_range_is_a_422(api: Api, since: str) -> None:
    answer = await api.client.get("/v1/events", params={"since": since}, headers=ADMIN)

    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["query", "since"]


async def test_an_unknown_event_id_is_a_404(api: Api) -> None:
    answer = await api.client.get("/v1/events/no-such-id", headers=ADMIN)

    assert answer.status_code == 404


async def test_events_beyond_the_queue_limit_are_refused_at_once_while_the_database_is_stuck(
    tmp_path: Path,
) -> None:
    queue_max = 5
    settings = load_settings(
        data_dir=tmp_path,
        api_keys=API_KEYS,
        run_dispatcher=False,
        ingest_queue_max=queue_max,
        writer_stall_seconds=0.2,  # /readyz says when the writer is stuck
    )
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as client,
    ):

        def post(key: str) -> asyncio.Task[httpx.Response]:
            body = VALID | {"idempotency_key": key}
            return asyncio.create_task(client.post("/v1/events", json=body, headers=INGEST))

        async def writer_stuck() -> bool:
            return (await client.get("/readyz")).json()["writer"] is False

        blocker = sqlite3.connect(tmp_path / "alerts.db")
        try:
            blocker.execute("BEGIN IMMEDIATE")  # another writer holds the database
            first = post("first")
            await eventually(writer_stuck)  # on the first event's transaction: none is queued
            posting = [post(f"q{n}") for n in range(30)]
            # `queue_max` of them queue behind the first; every other one is answered without waiting.
            await eventually(lambda: sum(task.done() for task in posting) == 30 - queue_max)
            answered_while_stuck = [task.result() for task in posting if task.done()]
        finally:
            blocker.close()  # rolled back: the database is free again
        answers = [await first, *await asyncio.gather(*posting)]
        stored = (await client.get("/v1/events", headers=ADMIN)).json()["count"]

    assert all(answer.status_code == 503 for answer in answered_while_stuck)
    assert all("overloaded" in answer.json()["detail"] for answer in answered_while_stuck)
    assert stored == sum(answer.status_code == 202 for answer in answers) == 1 + queue_max
