"""AlertServiceNotifier against real peers on loopback: an HTTP receiver standing in for the alert service's
ingest endpoint (scripted answers), a socket that never answers, a closed port, and an aiosmtpd server for the
fallback email. The full service is exercised in tests/alerting/."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
import types
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from airflow.sdk import Connection
from structlog.testing import capture_logs

from pipeline_common.alert_events import EXCEPTION_SUMMARY_LIMIT, EventType
from pipeline_common.notifiers import (
    AlertServiceEndpoint,
    AlertServiceNotifier,
    AlertServiceUnavailable,
    missed_run_deadline,
)
from pipeline_common.run_date import business_date_label
from tests.alerting_service.delivery_fixtures import (  # ruff: ignore[unused-import]
    HttpReceiver,
    Reply,
    SmtpServer,
    free_port,
    http_receiver_fixture,
    silent_port_fixture,
    smtp_server_fixture,
)
from tests.pipeline_common.test_notifier_events import deadline_context, task_context

API_KEY = "ingest-key-7c1f0d9e"
FALLBACK_TO = "oncall@bank.example"
BOUND = 0.5  # timeout, and the fallback_timeout of the tests of that deadline
# The fallback email's bound elsewhere: roomy, so that a loaded machine cannot turn an email into a timeout.
FALLBACK_BOUND = 5.0


def set_alert_service(monkeypatch: pytest.MonkeyPatch, port: int, password: str | None = API_KEY) -> None:
    connection = {
        "conn_type": "http",
        "host": "127.0.0.1",
        "port": port,
        "schema": "http",
        "password": password,
    }
    monkeypatch.setenv("AIRFLOW_CONN_ALERT_SERVICE_DEFAULT", json.dumps(connection))


def set_smtp(monkeypatch: pytest.MonkeyPatch, server: SmtpServer, to: str | None = FALLBACK_TO) -> None:
    extra = {"from_email": "airflow@bank.example", "disable_tls": True, "disable_ssl": True, "timeout": 2}
    extra |= {"retry_limit": 0} | ({"to": to} if to else {})
    connection = {"conn_type": "smtp", "host": "127.0.0.1", "port": server.port, "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(connection))


def notifier(**options: Any) -> AlertServiceNotifier:
    return AlertServiceNotifier(**{"timeout": BOUND, "fallback_timeout": FALLBACK_BOUND} | options)


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch, http_receiver: HttpReceiver) -> HttpReceiver:
    set_alert_service(monkeypatch, http_receiver.port)
    return http_receiver


def posted_bodies(receiver: HttpReceiver) -> list[dict[str, Any]]:
    return [json.loads(receipt.body) for receipt in receiver.received("/v1/events")]


def undelivered_reason(logs: list[dict[str, Any]]) -> str:
    (error,) = [entry["event"] for entry in logs if "ALERT NOT DELIVERED" in entry["event"]]
    return error.partition("; the event follows")[0]


@pytest.fixture
def trickling_port() -> Iterator[int]:
    """A loopback port whose every connection gets one byte every 50 ms and never a whole answer: a socket
    timeout never fires on it."""
    stop = threading.Event()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.05)

        def serve() -> None:
            peers = []
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    peers.append(listener.accept()[0])
                for peer in peers:
                    with contextlib.suppress(OSError):
                        peer.send(b"2")
            for peer in peers:
                peer.close()

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        yield listener.getsockname()[1]
        stop.set()
        server.join()


def test_the_event_is_posted_with_the_ingest_key_as_bearer(service: HttpReceiver) -> None:
    service.script("/v1/events", Reply(202))

    notifier(labels={"team": "data"})(task_context(state="failed"))

    (receipt,) = service.received("/v1/events")
    assert receipt.headers["authorization"] == f"Bearer {API_KEY}"
    body = json.loads(receipt.body)
    assert (body["type"], body["labels"], body["max_tries"]) == ("task_failure", {"team": "data"}, 4)


def test_a_recorded_event_sends_no_fallback_email(
    service: HttpReceiver, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_smtp(monkeypatch, smtp_server)
    service.script("/v1/events", Reply(202))

    notifier()(task_context(state="failed"))

    assert smtp_server.mails == []


def test_a_conflict_means_the_key_is_already_recorded_so_no_fallback(
    service: HttpReceiver, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_smtp(monkeypatch, smtp_server)
    service.script("/v1/events", Reply(409))

    notifier()(task_context(state="failed"))

    assert smtp_server.mails == []


@pytest.mark.parametrize("status", [401, 422, 500, 503])
def test_a_refusal_by_the_service_falls_back_to_email(
    status: int, service: HttpReceiver, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_smtp(monkeypatch, smtp_server)
    service.script("/v1/events", Reply(status))

    notifier()(task_context(state="failed", try_number=4))

    (mail,) = smtp_server.mails
    assert mail.recipients == [FALLBACK_TO]
    assert (
        mail.message["Subject"] == "[error] task_failure batch_pipeline_dag.run_batch_processing (try 4 of 4)"
    )
    assert "ConnectionError: ml-api:8000 refused" in mail.part("text/html")


def test_a_200_is_not_the_services_acceptance_so_the_alert_falls_back_to_email(
    service: HttpReceiver, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The service answers 202 once the event is committed; a 200 comes from something else on that URL
    # (a proxy's login page, a UI's catch-all): the event is not recorded anywhere.
    set_smtp(monkeypatch, smtp_server)
    service.script("/v1/events", Reply(200, body=b"<html>sign in</html>"))

    notifier()(task_context(state="failed", try_number=4))

    (mail,) = smtp_server.mails
    assert mail.recipients == [FALLBACK_TO]


def test_a_refused_connection_is_reported_as_such_and_emails(
    monkeypatch: pytest.MonkeyPatch, smtp_server: SmtpServer
) -> None:
    set_alert_service(monkeypatch, free_port())
    set_smtp(monkeypatch, smtp_server)

    with capture_logs() as logs:
        notifier()(task_context(state="failed"))

    assert "ConnectError" in undelivered_reason(logs)
    assert len(smtp_server.mails) == 1


def test_a_service_that_never_answers_is_waited_for_the_timeout_then_emails(
    monkeypatch: pytest.MonkeyPatch, silent_port: int, smtp_server: SmtpServer
) -> None:
    set_alert_service(monkeypatch, silent_port)
    set_smtp(monkeypatch, smtp_server)

    started = time.monotonic()
    with capture_logs() as logs:
        notifier()(task_context(state="failed"))

    assert time.monotonic() - started >= BOUND
    assert f"TimeoutError: no answer within {BOUND:g} s" in undelivered_reason(logs)
    assert len(smtp_server.mails) == 1


def test_a_service_that_trickles_its_answer_is_given_up_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch, trickling_port: int, smtp_server: SmtpServer
) -> None:
    # Each byte resets a socket timeout, so only the hard deadline ends the attempt: without it this call
    # would not return before the test's own timeout.
    set_alert_service(monkeypatch, trickling_port)
    set_smtp(monkeypatch, smtp_server)

    with capture_logs() as logs:
        notifier()(task_context(state="failed"))

    assert f"TimeoutError: no answer within {BOUND:g} s" in undelivered_reason(logs)
    assert len(smtp_server.mails) == 1


@pytest.mark.parametrize("smtp_peer", ["silent_port", "trickling_port"])
def test_an_smtp_server_that_never_finishes_answering_is_given_up_at_the_fallback_deadline(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, smtp_peer: str
) -> None:
    set_alert_service(monkeypatch, free_port())
    connection = {"conn_type": "smtp", "host": "127.0.0.1", "port": request.getfixturevalue(smtp_peer)}
    extra = {"from_email": "a@bank.example", "to": FALLBACK_TO, "disable_tls": True, "disable_ssl": True}
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(connection | {"extra": extra}))

    with capture_logs() as logs:
        notifier(fallback_timeout=BOUND)(task_context(state="failed"))

    assert any(
        "fallback email" in entry["event"] and f"TimeoutError: no answer within {BOUND:g} s" in entry["event"]
        for entry in logs
    )


def test_the_undelivered_event_is_logged_at_error_without_the_api_key(
    monkeypatch: pytest.MonkeyPatch, silent_port: int
) -> None:
    set_alert_service(monkeypatch, silent_port)

    with capture_logs() as logs:
        notifier()(task_context(state="failed"))

    (error,) = [entry for entry in logs if entry["log_level"] == "error"]
    assert "ALERT NOT DELIVERED" in error["event"]
    assert (
        "batch_pipeline_dag/scheduled__2026-01-14T02:00:00+00:00/run_batch_processing/-1/2" in error["event"]
    )
    assert API_KEY not in json.dumps(logs)


def test_an_answer_that_echoes_the_api_key_is_quoted_without_it(service: HttpReceiver) -> None:
    # A proxy or ingress in front of the service may echo the request's headers in its error page.
    service.script("/v1/events", Reply(401, body=f"unauthorized: Authorization: Bearer {API_KEY}".encode()))

    with capture_logs() as logs:
        notifier()(task_context(state="failed"))

    assert "HTTP 401: unauthorized: Authorization: Bearer ***" in undelivered_reason(logs)
    assert API_KEY not in json.dumps(logs)


SPECIAL_KEY = "ingest/key+7c1f&0d9e="


@pytest.mark.parametrize(
    "echo",
    ["ingest\\/key+7c1f&0d9e=", "ingest/key+7c1f&amp;0d9e=", "ingest%2Fkey%2B7c1f%260d9e%3D"],
    ids=["json-escaped", "html-escaped", "percent-encoded"],
)
def test_an_answer_that_echoes_the_api_key_escaped_is_quoted_without_it(
    monkeypatch: pytest.MonkeyPatch, http_receiver: HttpReceiver, echo: str
) -> None:
    set_alert_service(monkeypatch, http_receiver.port, password=SPECIAL_KEY)
    http_receiver.script("/v1/events", Reply(401, body=f'{{"authorization": "Bearer {echo}"}}'.encode()))

    with capture_logs() as logs:
        notifier()(task_context(state="failed"))

    assert 'HTTP 401: {"authorization": "Bearer ***"}' in undelivered_reason(logs)


def test_an_api_key_with_a_trailing_newline_is_refused_by_name_not_sent(
    monkeypatch: pytest.MonkeyPatch, http_receiver: HttpReceiver
) -> None:
    # httpx would refuse the header with an error quoting it, key included.
    set_alert_service(monkeypatch, http_receiver.port, password=API_KEY + "\n")

    with capture_logs() as logs:
        notifier()(task_context(state="failed"))

    assert http_receiver.received("/v1/events") == []
    assert "the password (the ingest API key) holds whitespace at an end" in undelivered_reason(logs)
    assert API_KEY not in json.dumps(logs)


@pytest.mark.parametrize(
    ("fields", "events_url"),
    [
        ({"host": "alerts.internal", "port": 9095}, "http://alerts.internal:9095/v1/events"),
        (
            {"host": "alerts.internal", "port": 443, "schema": "https"},
            "https://alerts.internal:443/v1/events",
        ),
        (
            {"host": "https://alerts.example/prefix", "port": 8443},
            "https://alerts.example:8443/prefix/v1/events",
        ),
        ({"host": "https://alerts.example:8443/prefix/"}, "https://alerts.example:8443/prefix/v1/events"),
        ({"host": "http://alerts:9095", "schema": "alerts"}, "http://alerts:9095/v1/events"),
        ({"host": "alerts", "port": 443, "schema": "HTTPS"}, "https://alerts:443/v1/events"),
    ],
    ids=[
        "host-name",
        "schema",
        "url-with-path-and-port-field",
        "url-with-port",
        "a-url-ignores-schema",
        "upper-case-schema",
    ],
)
def test_the_events_url_puts_the_port_after_the_host_whatever_form_host_takes(
    fields: dict[str, Any], events_url: str
) -> None:
    connection = Connection(conn_id="alert_service_default", conn_type="http", password=API_KEY, **fields)
    assert AlertServiceEndpoint.from_connection(connection).events_url == events_url


def test_a_port_in_the_host_url_and_in_the_port_field_is_refused_naming_both() -> None:
    connection = Connection(
        conn_id="alert_service_default", conn_type="http", host="http://alerts:9095", port=9095, password="k"
    )
    with pytest.raises(AlertServiceUnavailable, match="already has a port and field 'port' \\(9095\\)"):
        AlertServiceEndpoint.from_connection(connection)


def test_a_service_behind_a_path_with_a_port_field_is_reached(
    monkeypatch: pytest.MonkeyPatch, http_receiver: HttpReceiver
) -> None:
    host = "http://127.0.0.1/alerts"  # a reverse proxy's prefix, say
    connection = {"conn_type": "http", "host": host, "port": http_receiver.port, "password": API_KEY}
    monkeypatch.setenv("AIRFLOW_CONN_ALERT_SERVICE_DEFAULT", json.dumps(connection))
    http_receiver.script("/alerts/v1/events", Reply(202))

    notifier()(task_context(state="failed"))

    assert len(http_receiver.received("/alerts/v1/events")) == 1


def test_a_missing_alert_service_connection_falls_back(
    monkeypatch: pytest.MonkeyPatch, smtp_server: SmtpServer
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_ALERT_SERVICE_DEFAULT", raising=False)
    set_smtp(monkeypatch, smtp_server)

    with capture_logs() as logs:
        notifier()(task_context(state="failed"))

    assert any("alert_service_default" in entry["event"] for entry in logs if entry["log_level"] == "error")
    assert len(smtp_server.mails) == 1


def test_a_connection_without_api_key_is_named_in_the_error(
    monkeypatch: pytest.MonkeyPatch, http_receiver: HttpReceiver
) -> None:
    set_alert_service(monkeypatch, http_receiver.port, password=None)

    with capture_logs() as logs:
        notifier()(task_context(state="failed"))

    assert http_receiver.received("/v1/events") == []
    assert any("has no password (the ingest API key)" in entry["event"] for entry in logs)


def test_the_fallback_recipient_argument_wins_over_the_connection_extra(
    monkeypatch: pytest.MonkeyPatch, smtp_server: SmtpServer
) -> None:
    set_alert_service(monkeypatch, free_port())
    set_smtp(monkeypatch, smtp_server)

    notifier(fallback_to="pipeline-owner@bank.example")(task_context(state="failed"))

    assert smtp_server.mails[0].recipients == ["pipeline-owner@bank.example"]


@pytest.mark.parametrize("state", ["up_for_retry", "success"])
def test_a_retry_or_success_during_an_outage_is_logged_not_emailed(
    state: str, monkeypatch: pytest.MonkeyPatch, smtp_server: SmtpServer
) -> None:
    set_alert_service(monkeypatch, free_port())
    set_smtp(monkeypatch, smtp_server)

    with capture_logs() as logs:
        notifier()(task_context(state=state))

    assert smtp_server.mails == []
    (logged,) = [entry for entry in logs if "ALERT NOT DELIVERED" in entry["event"]]
    assert logged["log_level"] == "warning"  # the first ERROR of a failed run's log stays its failure's


def test_without_a_recipient_the_fallback_only_logs(
    monkeypatch: pytest.MonkeyPatch, smtp_server: SmtpServer
) -> None:
    set_alert_service(monkeypatch, free_port())
    set_smtp(monkeypatch, smtp_server, to=None)

    with capture_logs() as logs:
        notifier()(task_context(state="failed"))

    assert smtp_server.mails == []
    assert any("set fallback_to or the 'to' extra" in entry["event"] for entry in logs)


def test_an_unusable_context_is_logged_and_never_raised(service: HttpReceiver) -> None:
    with capture_logs() as logs:
        notifier()({"unexpected": True})

    assert service.received("/v1/events") == []
    assert any("could not be built" in entry["event"] for entry in logs)


def test_templated_labels_are_rendered_from_the_context(service: HttpReceiver) -> None:
    service.script("/v1/events", Reply(202))
    context = task_context(state="failed") | {"ds": "2026-01-14"}

    notifier(labels={"business_date": "{{ ds }}"})(context)

    assert posted_bodies(service)[0]["labels"] == {"business_date": "2026-01-14"}


def test_labels_worked_out_from_the_context_join_the_notifiers_labels(service: HttpReceiver) -> None:
    service.script("/v1/events", Reply(202))

    notifier(labels={"team": "data"}, context_labels=lambda context: {"business_date": "2026-01-14"})(
        task_context(state="failed")
    )

    assert posted_bodies(service)[0]["labels"] == {"team": "data", "business_date": "2026-01-14"}


def test_labels_that_cannot_be_worked_out_do_not_cost_the_alert(service: HttpReceiver) -> None:
    service.script("/v1/events", Reply(202))

    def broken(context: Any) -> dict[str, str]:
        raise KeyError("dag_run")

    with capture_logs() as logs:
        notifier(labels={"team": "data"}, context_labels=broken)(task_context(state="failed"))

    assert posted_bodies(service)[0]["labels"] == {"team": "data"}
    assert any("the alert goes without them" in entry["event"] for entry in logs)


def test_a_secret_airflow_knows_is_masked_in_the_exception(service: HttpReceiver) -> None:
    from airflow.sdk.log import mask_secret

    mask_secret("db-password-42")
    context = task_context(state="failed") | {"exception": RuntimeError("login failed for db-password-42")}

    notifier()(context)

    assert posted_bodies(service)[0]["exception"] == "RuntimeError: login failed for ***"


def test_a_secret_is_masked_before_a_long_exception_is_cut(service: HttpReceiver) -> None:
    from airflow.sdk.log import mask_secret

    mask_secret("db-password-cut-in-two")
    # The secret starts just before the summary's cut: masked only if masked before cutting.
    message = "x" * (EXCEPTION_SUMMARY_LIMIT - 20) + "db-password-cut-in-two"
    context = task_context(state="failed") | {"exception": RuntimeError(message)}

    notifier()(context)

    assert (
        posted_bodies(service)[0]["exception"] == f"RuntimeError: {'x' * (EXCEPTION_SUMMARY_LIMIT - 20)}***"
    )


@pytest.mark.parametrize(("timeout", "fallback_timeout"), [(0, 1), (3, -1), (10, 10)])
def test_bounds_that_are_not_positive_or_reach_airflows_limit_are_refused(
    timeout: float, fallback_timeout: float
) -> None:
    with pytest.raises(ValueError, match="AlertServiceNotifier"):
        AlertServiceNotifier(timeout=timeout, fallback_timeout=fallback_timeout)


class TestAsDeadlineAlert:
    """The triggerer instantiates the notifier class with the alert's kwargs and context, then awaits it."""

    async def test_the_awaited_notifier_posts_a_deadline_missed(self, service: HttpReceiver) -> None:
        service.script("/v1/events", Reply(202))
        alert = missed_run_deadline(timedelta(minutes=90), labels={"team": "data"})

        await AlertServiceNotifier(**alert.callback.kwargs, context=deadline_context())

        (body,) = posted_bodies(service)
        assert (body["type"], body["severity"], body["labels"]) == (
            "deadline_missed",
            "critical",
            {"team": "data"},
        )

    async def test_a_missed_deadline_carries_the_labels_worked_out_from_its_context(
        self, service: HttpReceiver
    ) -> None:
        service.script("/v1/events", Reply(202))
        context = deadline_context()
        context["dag_run"] |= {"logical_date": "2026-01-15T02:00:00Z", "run_after": "2026-01-15T02:00:00Z"}
        alert = missed_run_deadline(timedelta(minutes=90), context_labels=business_date_label)

        await AlertServiceNotifier(**json.loads(json.dumps(alert.callback.kwargs)), context=context)

        (body,) = posted_bodies(service)
        assert body["labels"] == {"business_date": "2026-01-14"}

    def test_a_deadline_alerts_context_labels_the_triggerer_cannot_import_are_refused(self) -> None:
        with pytest.raises(ValueError, match="module-level function"):
            missed_run_deadline(timedelta(minutes=90), context_labels=lambda context: {})

    def test_a_deadline_alerts_context_labels_defined_in_a_dag_file_are_refused(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Importable in the dag-processor, which loaded the DAG file under this name; not in the triggerer.
        dag_file = types.ModuleType("unusual_prefix_0123456789abcdef0123456789abcdef01234567_labels_dag")

        def labels(context: Any) -> dict[str, str]:
            return {}

        labels.__module__, labels.__qualname__ = dag_file.__name__, "labels"
        dag_file.labels = labels  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, dag_file.__name__, dag_file)

        with pytest.raises(ValueError, match="not one in a DAG file"):
            missed_run_deadline(timedelta(minutes=90), context_labels=labels)

    async def test_a_backfill_runs_missed_deadline_pages_nobody(
        self, service: HttpReceiver, monkeypatch: pytest.MonkeyPatch, smtp_server: SmtpServer
    ) -> None:
        # `airflow backfill create` queues every run at once (measured: 20 runs, 20 deadlines within 0.5 s
        # of each other), so a backfill longer than the interval would page once per remaining day.
        service.script("/v1/events", Reply(202))
        set_smtp(monkeypatch, smtp_server)
        context = deadline_context()
        context["dag_run"] |= {"run_type": "backfill", "dag_run_id": "backfill__2026-01-15T02:00:00+00:00"}
        alert = missed_run_deadline(timedelta(minutes=90), labels={"team": "data"})

        with capture_logs() as logs:
            await AlertServiceNotifier(**alert.callback.kwargs, context=context)

        assert posted_bodies(service) == []
        assert smtp_server.mails == []
        assert any("backfill__2026-01-15T02:00:00+00:00" in entry["event"] for entry in logs)

    async def test_a_scheduled_runs_missed_deadline_is_alerted(self, service: HttpReceiver) -> None:
        service.script("/v1/events", Reply(202))
        context = deadline_context()
        context["dag_run"] |= {"run_type": "scheduled"}
        alert = missed_run_deadline(timedelta(minutes=90))

        await AlertServiceNotifier(**alert.callback.kwargs, context=context)

        assert [body["type"] for body in posted_bodies(service)] == ["deadline_missed"]

    async def test_a_service_that_trickles_its_answer_falls_back_to_email_at_the_deadline(
        self, monkeypatch: pytest.MonkeyPatch, trickling_port: int, smtp_server: SmtpServer
    ) -> None:
        set_alert_service(monkeypatch, trickling_port)
        set_smtp(monkeypatch, smtp_server)

        await notifier(event_type=EventType.DEADLINE_MISSED, context=deadline_context())

        assert (
            smtp_server.mails[0]
            .message["Subject"]
            .startswith("[critical] deadline_missed batch_pipeline_dag")
        )
