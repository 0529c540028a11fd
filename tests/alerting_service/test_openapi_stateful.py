"""Sequences of API calls against the service as a real process: ingest, read, replay, silence, expire, bulk
replay, in the orders a hypothesis state machine draws (derandomized: the same sequences every run).

Each answer must be one the OpenAPI document lists for its operation, in the schema it gives for that status
(schemathesis validates it), a refusal must say what it refused, and once the dispatcher has settled no
delivery is left unfinished nor sent more often than it was attempted. Both receivers are loopback webhooks:
`ok` answers 200, `bad` 400 (a dead letter at once, to replay).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    multiple,
    rule,
    run_state_machine_as_test,
)

from tests.alerting_service.conftest import ADMIN, INGEST, SettingsFactory
from tests.alerting_service.delivery_fixtures import HttpReceiver, Reply, ServiceProcess, service_routing

RECEIVERS = ("ok", "bad")
KINDS = ("task_failure", "task_retry", "task_success")
TASKS = ("extract", "load")
# Operations with path parameters, by their OpenAPI path.
EVENT = "/v1/events/{event_id}"
REPLAY = "/v1/deliveries/{delivery_id}/replay"
SILENCE = "/v1/silences/{silence_id}"
RECEIVER_REPLAY = "/v1/receivers/{name}/replay"
UNFINISHED = ("waiting", "pending", "in_flight")
FAR_FUTURE = "2099-01-01T00:00:00Z"


class ApiSequences(RuleBasedStateMachine):
    """The API as an admin and Airflow use it; the model holds what each idempotency key was sent with and
    which silences are active. Set `url`, `schema` and `receiver` on a subclass."""

    url: str
    schema: Any
    receiver: HttpReceiver

    events = Bundle("events")
    silences = Bundle("silences")

    def __init__(self) -> None:
        super().__init__()
        self.client = httpx.Client(base_url=self.url, timeout=10)
        # The service outlives each sequence: keys, and a silenced DAG, of its own.
        self.prefix = uuid.uuid4().hex[:8]
        self.quiet_dag = f"quiet_{self.prefix}"
        self.bodies: dict[str, dict[str, Any]] = {}
        self.ids: dict[str, str] = {}
        self.active_silences: set[str] = set()

    def call(
        self, method: str, template: str, path_parameters: dict[str, str] | None = None, **request: Any
    ) -> httpx.Response:
        """The answer, checked against what the OpenAPI document says `method template` answers."""
        answer = self.client.request(method, template.format_map(path_parameters or {}), **request)
        operation = self.schema[template][method]
        assert answer.status_code < 500, f"{method} {answer.url}: {answer.status_code} {answer.text}"
        assert operation.responses.find_by_status_code(answer.status_code) is not None, (
            f"{method} {template} answered {answer.status_code}, which its OpenAPI operation does not list"
        )
        operation.validate_response(answer)
        return answer

    @rule(target=events, calls=st.lists(st.tuples(st.integers(0, 11), st.booleans()), min_size=1, max_size=4))
    def ingest(self, calls: list[tuple[int, bool]]) -> Any:
        return multiple(*(event_id for call in calls if (event_id := self.ingest_one(*call)) is not None))

    def ingest_one(self, key: int, other_body: bool) -> str | None:
        """Key n is always the same event, unless `other_body`; the event id, None for a 409."""
        idempotency_key = f"{self.prefix}/{key}"
        quiet = key >= 6
        body = {
            "idempotency_key": idempotency_key,
            "type": KINDS[key % 3],
            "task_id": TASKS[key // 3 % 2],
            "dag_id": self.quiet_dag if quiet else "etl",
            "run_id": "r",
            "try_number": 2 if other_body else 1,
        }
        answer = self.call("POST", "/v1/events", json=body, headers=INGEST)
        sent_before = self.bodies.get(idempotency_key)
        if sent_before is not None and sent_before != body:
            assert answer.status_code == 409
            assert idempotency_key in answer.json()["detail"]
            return None
        assert answer.status_code == 202
        accepted = answer.json()
        assert accepted["duplicate"] == (sent_before is not None)
        assert accepted["id"] == self.ids.setdefault(idempotency_key, accepted["id"])
        if sent_before is None:
            self.bodies[idempotency_key] = body
            self._check_muting(accepted["id"], silenced=quiet and bool(self.active_silences))
        return accepted["id"]

    def _check_muting(self, event_id: str, *, silenced: bool) -> None:
        event = self.event(event_id)
        if silenced:
            assert event["muted_by"] in self.active_silences
            assert event["deliveries"] == []
        else:
            assert event["muted_by"] is None

    @rule(event_id=events)
    def read_event(self, event_id: str) -> None:
        self.event(event_id)

    def event(self, event_id: str) -> dict[str, Any]:
        answer = self.call("GET", EVENT, {"event_id": event_id}, headers=ADMIN)
        assert answer.status_code == 200
        event = answer.json()
        firing = Counter(d["receiver"] for d in event["deliveries"] if d["kind"] == "firing")
        assert all(count == 1 for count in firing.values()), event["deliveries"]
        return event

    @rule(event_id=events, pick=st.integers(0, 3))
    def replay_delivery(self, event_id: str, pick: int) -> None:
        deliveries = self.event(event_id)["deliveries"]
        if not deliveries:  # a muted event's: replay one that does not exist instead
            self._replay_unknown_delivery()
            return
        before = deliveries[pick % len(deliveries)]
        answer = self.call("POST", REPLAY, {"delivery_id": before["id"]}, headers=ADMIN)
        if before["status"] == "dead":  # only a replay revives a dead letter, and only this machine replays
            assert answer.status_code == 200
        if answer.status_code == 200:
            replayed = answer.json()
            assert (replayed["status"], replayed["attempts"]) == ("pending", before["attempts"])
        else:
            assert answer.status_code == 409
            assert before["id"] in answer.json()["detail"]

    def _replay_unknown_delivery(self) -> None:
        answer = self.call("POST", REPLAY, {"delivery_id": "nope"}, headers=ADMIN)
        assert answer.status_code == 404
        assert "'nope'" in answer.json()["detail"]

    @rule(target=silences)
    def create_silence(self) -> str:
        body = {
            "matchers": [{"name": "dag_id", "value": self.quiet_dag}],
            "ends_at": FAR_FUTURE,
            "comment": "fuzz",
        }
        answer = self.call("POST", "/v1/silences", json=body, headers=ADMIN)
        assert answer.status_code == 201
        assert answer.json()["state"] == "active"
        self.active_silences.add(answer.json()["id"])
        return answer.json()["id"]

    @rule(silence_id=silences)
    def expire_silence_twice(self, silence_id: str) -> None:
        first, again = (self.call("DELETE", SILENCE, {"silence_id": silence_id}, headers=ADMIN) for _ in "12")
        assert (first.status_code, again.status_code) == (200, 200)
        assert first.json()["state"] == again.json()["state"] == "expired"
        assert first.json()["expired_at"] == again.json()["expired_at"]
        self.active_silences.discard(silence_id)

    @rule(name=st.sampled_from([*RECEIVERS, "nope"]), reason=st.sampled_from([None, "client_error"]))
    def bulk_replay(self, name: str, reason: str | None) -> None:
        params = {} if reason is None else {"reason": reason}
        answer = self.call("POST", RECEIVER_REPLAY, {"name": name}, params=params, headers=ADMIN)
        if name == "nope":
            assert answer.status_code == 404
            assert "'nope'" in answer.json()["detail"]
        else:
            assert answer.status_code == 200
            assert answer.json()["replayed"] >= 0

    @rule(status=st.sampled_from(["dead", "pending", None]))
    def list_deliveries(self, status: str | None) -> None:
        params = {} if status is None else {"status": status}
        answer = self.call("GET", "/v1/deliveries", params=params, headers=ADMIN)
        assert answer.status_code == 200
        assert all(status in (None, d["status"]) for d in answer.json()["data"])

    def teardown(self) -> None:
        """Once the dispatcher settled: none sent more often than attempted, or under two webhook-ids."""
        deliveries = self._once_settled()
        sends = Counter(json.loads(receipt.body)["data"]["delivery_id"] for receipt in self.receiver.receipts)
        webhook_ids = {receipt.headers["webhook-id"] for receipt in self.receiver.receipts}
        oversent = {d["id"]: sends[d["id"]] for d in deliveries if sends[d["id"]] > d["attempts"]}
        assert oversent == {}, "sent more often than attempted"
        assert len(webhook_ids) == len(sends), "one webhook-id per delivery, on every attempt"
        self.client.close()

    def _once_settled(self) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 15
        while True:
            listed = self.call("GET", "/v1/deliveries", params={"limit": 1000}, headers=ADMIN)
            deliveries = listed.json()["data"]
            unfinished = [d for d in deliveries if d["status"] in UNFINISHED]
            if not unfinished:
                return deliveries
            assert time.monotonic() < deadline, f"left unfinished: {unfinished}"
            time.sleep(0.05)


async def test_api_sequences_get_documented_answers_and_leave_nothing_unfinished(
    make_settings: SettingsFactory, start_service: Any, http_receiver: HttpReceiver
) -> None:
    http_receiver.answer_by_default("/bad", Reply(status=400))
    routing = service_routing(*(http_receiver.receiver(f"/{name}", name=name) for name in RECEIVERS))
    routing["route"] = {"receivers": list(RECEIVERS)}
    service: ServiceProcess = start_service(make_settings(routing=routing, run_dispatcher=True))
    await service.until_ready()

    class Sequences(ApiSequences):
        url = service.url
        schema = schemathesis.openapi.from_url(f"{service.url}/openapi.json")
        receiver = http_receiver

    run_state_machine_as_test(
        Sequences,
        settings=settings(
            max_examples=8,
            stateful_step_count=20,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
