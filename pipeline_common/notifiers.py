"""`AlertServiceNotifier`: Airflow callbacks and Deadline Alerts -> the alert service, never holding a task.

An Airflow callback fires once and nothing re-sends it, so the notifier makes one short attempt and, when
the alert service does not accept the event, falls back at once: the event goes to the task log (at ERROR
level for an alarm, WARNING for a retry or a success) and, when the `smtp_default` connection and a
recipient are configured, straight to an inbox through the SMTP provider. Only alarms are emailed (failures
and missed deadlines); a retry or a success during an outage is logged, not mailed to a person who would get
one email per task.

Bounds. Airflow kills a task callback after 20 s (`[core] task_success_overtime`) and a DAG callback that
hangs can take other callbacks of its file down with it, so the attempt (`timeout`) and the fallback email
(`fallback_timeout`) are hard deadlines, not socket timeouts: a DNS lookup that hangs or an SMTP server that
accepts and never answers costs at most the bound. Every exception is caught and logged; the task's outcome
never depends on alerting.

Connections (nothing is looked up when the DAG file is parsed):
- `alert_service_default`: host (or a full URL in host), port, schema = http | https, password = ingest key;
- `smtp_default` (optional fallback): the SMTP provider's connection; the recipients are `fallback_to` or the
  connection's extra `"to"`.
"""

from __future__ import annotations

import asyncio
import html
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import httpx
from airflow.sdk import AsyncCallback, BaseHook, BaseNotifier, DeadlineAlert, DeadlineReference
from airflow.sdk._shared.module_loading.dag_file import UNUSUAL_MODULE_PREFIX
from airflow.sdk._shared.secrets_masker import redact
from airflow.sdk.configuration import conf
from airflow.sdk.exceptions import AirflowNotFoundException
from airflow.sdk.module_loading import import_string, qualname

from pipeline_common.alert_events import (
    AlertEvent,
    EventType,
    build_event,
    exception_text,
    fallback_email_html,
    is_backfill_deadline,
)
from pipeline_common.connections import http_base_url, is_header_safe
from pipeline_common.errors import ConnectionConfigError

if TYPE_CHECKING:
    import jinja2
    from airflow.sdk import Connection
    from airflow.sdk.definitions.context import Context

T = TypeVar("T")
ContextLabels = Callable[["Context"], Mapping[str, str]]

SOCKET_TIMEOUT_MARGIN_SECONDS = 1.0
DEFAULT_CONN_ID = "alert_service_default"
DEFAULT_SMTP_CONN_ID = "smtp_default"
DEFAULT_TIMEOUT_SECONDS = 3.0
DEFAULT_FALLBACK_TIMEOUT_SECONDS = 5.0
# Airflow's `[core] task_success_overtime`: a task callback running longer is killed. Stay well inside it.
AIRFLOW_CALLBACK_LIMIT_SECONDS = 20.0
EVENTS_PATH = "/v1/events"
_ERROR_DETAIL_LIMIT = 200


class AlertServiceUnavailable(Exception):
    """The alert service did not record the event: unreachable, too slow, or it refused the request."""


@dataclass(frozen=True)
class AlertServiceEndpoint:
    events_url: str
    api_key: str

    @classmethod
    def from_connection(cls, connection: Connection) -> AlertServiceEndpoint:
        if not connection.host:
            raise AlertServiceUnavailable(f"connection {connection.conn_id!r} has no host")
        if not connection.password:
            raise AlertServiceUnavailable(
                f"connection {connection.conn_id!r} has no password (the ingest API key)"
            )
        if not is_header_safe(connection.password):
            raise AlertServiceUnavailable(
                f"connection {connection.conn_id!r}: the password (the ingest API key) holds whitespace at "
                "an end, a control character (a newline pasted with it?) or a non-ASCII character"
            )
        try:
            base = http_base_url(connection)
        except ConnectionConfigError as error:
            raise AlertServiceUnavailable(str(error)) from None
        return cls(events_url=base.rstrip("/") + EVENTS_PATH, api_key=connection.password)

    @property
    def uses_tls(self) -> bool:
        """Plain http needs no TLS context, and building one (loading the CA bundle) costs ~100 ms a task."""
        return self.events_url.startswith("https://")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


class AlertServiceNotifier(BaseNotifier):
    """Send the callback's event to the alert service; never raise, never block past the two bounds.

    As a task or DAG callback: `on_failure_callback=AlertServiceNotifier(labels={"team": "data"})`; the event
    type comes from the context (retry, failure, success, DAG run failure/success) unless `event_type`
    is given; `context_labels(context)` adds labels worked out from the callback's context (the business
    date a run processes, say): a function, or its import path (a Deadline Alert's kwargs are JSON).
    As a Deadline Alert: `missed_run_deadline(timedelta(minutes=90))` (runs `async_notify` in the triggerer).
    """

    template_fields = ("severity", "labels", "fallback_to")

    def __init__(
        self,
        *,
        event_type: EventType | str | None = None,
        severity: str | None = None,
        labels: Mapping[str, str] | None = None,
        conn_id: str = DEFAULT_CONN_ID,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        smtp_conn_id: str = DEFAULT_SMTP_CONN_ID,
        fallback_to: str | list[str] | None = None,
        fallback_timeout: float = DEFAULT_FALLBACK_TIMEOUT_SECONDS,
        context_labels: ContextLabels | str | None = None,
        context: Context | None = None,
    ) -> None:
        # `context`: how the triggerer hands a Deadline Alert's context to the notifier class it instantiates.
        super().__init__(context)
        self.event_type = event_type
        self.severity = severity
        self.labels = dict(labels or {})
        self.conn_id = conn_id
        self.timeout = timeout
        self.smtp_conn_id = smtp_conn_id
        self.fallback_to = fallback_to
        self.fallback_timeout = fallback_timeout
        self.context_labels = context_labels
        _check_bounds(timeout, fallback_timeout)

    # --- Airflow's entry points -----------------------------------------------------------------------------

    def notify(self, context: Context) -> None:
        event = self._event_or_none(context)
        if event is None:
            return
        try:
            outcome = _call_within(self.timeout, lambda: self._post(event))
        except Exception as error:
            self._log_fallback(event, error)
            if event.is_alarm:
                self._email_fallback(event)
        else:
            self.log.info("Alert %s recorded by the alert service: %s", event.idempotency_key, outcome)

    async def async_notify(self, context: Context) -> None:
        event = self._event_or_none(context)
        if event is None:
            return
        try:
            outcome = await asyncio.wait_for(self._apost(event), self.timeout)
        except Exception as error:
            self._log_fallback(event, error)
            if event.is_alarm:
                await self._aemail_fallback(event)
        else:
            self.log.info("Alert %s recorded by the alert service: %s", event.idempotency_key, outcome)

    def render_template_fields(self, context: Context, jinja_env: jinja2.Environment | None = None) -> None:
        """Render, or keep the fields as written: a template error must not cost the alert.

        A DAG callback under `dag.test()` gets a SerializedDAG without `get_template_env`; the sandboxed
        environment without a DAG renders the same templates.
        """
        try:
            if jinja_env is None and not hasattr(context.get("dag"), "get_template_env"):
                jinja_env = self.get_template_env()
            super().render_template_fields(context, jinja_env)
        except Exception:
            self.log.exception("Rendering the notifier's templated fields failed; sending them as written")

    # --- the event --------------------------------------------------------------------------------------

    def _event_or_none(self, context: Context) -> AlertEvent | None:
        if is_backfill_deadline(context):
            self.log.warning(
                "No deadline_missed alert for backfill run %s: its deadline counts from when the backfill "
                "queued all its runs, not from when this one could start",
                context["dag_run"].get("dag_run_id"),
            )
            return None
        try:
            event = build_event(
                _with_exception_redacted(context),
                event_type=self.event_type,
                severity=self.severity,
                labels={**self.labels, **self._labels_from(context)},
                api_base_url=conf.get("api", "base_url", fallback="http://localhost:8080/"),
            )
        except Exception:
            self.log.exception("No alert sent: the event could not be built from the callback context")
            return None
        return event

    def _labels_from(self, context: Context) -> Mapping[str, str]:
        """`context_labels`' labels; none if it fails: a label must not cost the alert."""
        if self.context_labels is None:
            return {}
        try:
            labeller = self.context_labels
            return (import_string(labeller) if isinstance(labeller, str) else labeller)(context)
        except Exception:
            self.log.exception("Labels from the callback context failed; the alert goes without them")
            return {}

    # --- the attempt ------------------------------------------------------------------------------------

    @property
    def _socket_timeout(self) -> float:
        # Past the hard deadline (`timeout`), so that the deadline always ends a silent attempt, with the same
        # words whichever way it goes silent; the socket's only ends the abandoned thread soon after.
        return self.timeout + SOCKET_TIMEOUT_MARGIN_SECONDS

    @cached_property
    def _endpoint(self) -> AlertServiceEndpoint:
        return AlertServiceEndpoint.from_connection(BaseHook.get_connection(self.conn_id))

    @cached_property
    def _http_client(self) -> httpx.Client:
        return httpx.Client(
            timeout=self._socket_timeout, follow_redirects=False, verify=self._endpoint.uses_tls
        )

    def _post(self, event: AlertEvent) -> str:
        endpoint = self._endpoint
        response = self._http_client.post(endpoint.events_url, json=event.as_json(), headers=endpoint.headers)
        return _recorded(response, endpoint.api_key)

    async def _apost(self, event: AlertEvent) -> str:
        # The triggerer builds a notifier per missed deadline: nothing to cache, and a client per call is
        # closed with it. Built after the lookup: plain http loads no CA bundle on the triggerer's loop.
        endpoint = AlertServiceEndpoint.from_connection(await BaseHook.aget_connection(self.conn_id))
        async with httpx.AsyncClient(
            timeout=self._socket_timeout, follow_redirects=False, verify=endpoint.uses_tls
        ) as client:
            response = await client.post(endpoint.events_url, json=event.as_json(), headers=endpoint.headers)
        return _recorded(response, endpoint.api_key)

    # --- the fallback -----------------------------------------------------------------------------------

    def _log_fallback(self, event: AlertEvent, error: BaseException) -> None:
        # A warning for a retry or a success: the first ERROR of a failed run's log is then its failure's.
        log = self.log.error if event.is_alarm else self.log.warning
        log(
            "ALERT NOT DELIVERED to the alert service (%s); the event follows: %s %s",
            _describe(error),
            event.headline,
            json.dumps(event.as_json(), sort_keys=True),
        )

    def _email_fallback(self, event: AlertEvent) -> None:
        try:
            _call_within(self.fallback_timeout, lambda: self._send_email(event))
        except Exception as error:
            self.log.error(
                "The fallback email for alert %s failed: %s", event.idempotency_key, _describe(error)
            )

    async def _aemail_fallback(self, event: AlertEvent) -> None:
        try:
            await asyncio.wait_for(self._asend_email(event), self.fallback_timeout)
        except Exception as error:
            self.log.error(
                "The fallback email for alert %s failed: %s", event.idempotency_key, _describe(error)
            )

    def _send_email(self, event: AlertEvent) -> None:
        from airflow.providers.smtp.hooks.smtp import SmtpHook

        recipients = self._fallback_recipients(self._smtp_connection_or_none())
        if recipients:
            with SmtpHook(smtp_conn_id=self.smtp_conn_id) as hook:
                hook.send_email_smtp(
                    to=recipients, subject=event.headline, html_content=fallback_email_html(event)
                )
            self.log.warning("Fallback email for alert %s sent to %s", event.idempotency_key, recipients)

    async def _asend_email(self, event: AlertEvent) -> None:
        from airflow.providers.smtp.hooks.smtp import SmtpHook

        try:
            connection = await BaseHook.aget_connection(self.smtp_conn_id)
        except AirflowNotFoundException:
            connection = None
        recipients = self._fallback_recipients(connection)
        if recipients:
            async with SmtpHook(smtp_conn_id=self.smtp_conn_id) as hook:
                await hook.asend_email_smtp(
                    to=recipients, subject=event.headline, html_content=fallback_email_html(event)
                )
            self.log.warning("Fallback email for alert %s sent to %s", event.idempotency_key, recipients)

    def _smtp_connection_or_none(self) -> Connection | None:
        try:
            return BaseHook.get_connection(self.smtp_conn_id)
        except AirflowNotFoundException:
            return None

    def _fallback_recipients(self, smtp_connection: Connection | None) -> list[str]:
        if smtp_connection is None:
            self.log.warning("No fallback email: connection %r is not defined", self.smtp_conn_id)
            return []
        configured = self.fallback_to or smtp_connection.extra_dejson.get("to")
        recipients = [configured] if isinstance(configured, str) else list(configured or [])
        if not recipients:
            self.log.warning(
                "No fallback email: set fallback_to or the 'to' extra of connection %r", self.smtp_conn_id
            )
        return recipients


def missed_run_deadline(
    interval: timedelta, *, context_labels: ContextLabels | None = None, **notifier_kwargs: Any
) -> DeadlineAlert:
    """A Deadline Alert: `deadline_missed` when a run has not finished `interval` after it was queued.

    The triggerer imports the notifier class by its path and instantiates it with these kwargs, which must
    therefore be JSON-serialisable: `context_labels`, a module-level function, goes as its import path.
    """
    if context_labels is not None:
        notifier_kwargs["context_labels"] = _import_path(context_labels)
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=interval,
        callback=AsyncCallback(
            AlertServiceNotifier, kwargs={"event_type": EventType.DEADLINE_MISSED.value, **notifier_kwargs}
        ),
    )


def _import_path(function: ContextLabels) -> str:
    """Where the triggerer finds `function` again; refused when it cannot (a lambda, a nested function, one
    defined in a DAG file: the dag-processor loads that file under a name no other process can import), so
    that the DAG fails to parse rather than every missed deadline losing its labels."""
    path = qualname(function)
    try:
        found = import_string(path)
    except ImportError:
        found = None
    if found is not function or path.startswith((UNUSUAL_MODULE_PREFIX, "__main__.")):
        raise ValueError(
            f"context_labels of a Deadline Alert must be a module-level function of an importable module "
            f"(not one in a DAG file), not {path}"
        )
    return path


def _check_bounds(timeout: float, fallback_timeout: float) -> None:
    if timeout <= 0 or fallback_timeout <= 0:
        raise ValueError("AlertServiceNotifier: timeout and fallback_timeout must be positive")
    if timeout + fallback_timeout >= AIRFLOW_CALLBACK_LIMIT_SECONDS:
        raise ValueError(
            f"AlertServiceNotifier: timeout + fallback_timeout must stay under Airflow's "
            f"{AIRFLOW_CALLBACK_LIMIT_SECONDS:g} s callback limit"
        )


def _recorded(response: httpx.Response, api_key: str) -> str:
    """What the service said, when it has the event; `AlertServiceUnavailable` when it does not, quoting the
    start of the answer without the API key: a proxy or an ingress in front of the service may echo the
    request's headers, and the reason is logged, unmasked under `dag.test()`."""
    if response.status_code == httpx.codes.ACCEPTED:
        try:
            answer = response.json()
        except ValueError:
            return "accepted"
        return f"id {answer.get('id')}" + (" (duplicate)" if answer.get("duplicate") else "")
    if response.status_code == httpx.codes.CONFLICT:
        # The key is recorded, with a body that differs (e.g. a retried DAG callback): the alert exists.
        return "already recorded under this key with another body"
    # Replaced before the cut: a key cut in two would no longer be recognised.
    answer = _without(response.text, api_key)[:_ERROR_DETAIL_LIMIT]
    raise AlertServiceUnavailable(f"HTTP {response.status_code}: {answer}")


def _without(text: str, secret: str) -> str:
    """`text` with `secret` replaced by `***`, also as an echo may have escaped it (JSON, HTML, URL)."""
    as_json = json.dumps(secret)[1:-1]
    forms = {secret, as_json, as_json.replace("/", "\\/"), html.escape(secret), quote(secret, safe="")}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "***")
    return text


def _call_within(seconds: float, work: Callable[[], T]) -> T:
    """`work()` in a daemon thread, waited for at most `seconds`: a hard bound socket timeouts do not give.

    A daemon thread, not an executor: an abandoned worker must not keep the task process from exiting.
    """
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, work()))
        except BaseException as error:
            outcome.append((False, error))

    worker = threading.Thread(target=run, name="alert-notifier", daemon=True)
    worker.start()
    worker.join(seconds)
    if not outcome:
        raise TimeoutError(f"no answer within {seconds:g} s")
    succeeded, value = outcome[0]
    if not succeeded:
        raise value
    return value


def _with_exception_redacted(context: Context) -> Mapping[str, Any]:
    """The context with its exception as text Airflow's masker has redacted: an exception message can quote a
    credential (a database URL, a header). Redacted whole, before the event's summary cuts it: a secret cut in
    two is no longer recognised."""
    error = context.get("exception")
    if error is None:
        return context
    text = exception_text(error) if isinstance(error, BaseException) else str(error)
    return {**context, "exception": redact(text)}


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
