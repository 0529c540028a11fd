"""Task defaults shared by the pipeline DAGs, and the retry policy failing fast on what retrying cannot fix.

Alerts go through the alert service (docs/alerts.md), not `email_on_failure` (deprecated in Airflow 3):
every task reports its retries, failure and success, each DAG its run's end, and the batch pipeline a run
that has not finished in time (Deadline Alert).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import DeadlineAlert, ExceptionRetryPolicy, RetryAction, RetryRule

from pipeline_common.errors import RetryCannotHelp
from pipeline_common.notifiers import AlertServiceNotifier, ContextLabels, missed_run_deadline
from pipeline_common.settings import PipelineSettings

OWNER = "data-engineering"
RETRIES = 3
RETRY_BACKOFF_MULTIPLIER = 2.0
ALERT_LABELS = {"team": OWNER}

RETRY_POLICY = ExceptionRetryPolicy(
    rules=[
        RetryRule(
            exception=RetryCannotHelp,
            action=RetryAction.FAIL,
            reason="retrying cannot fix this (invalid input, bad configuration or missing connection)",
        )
    ],
)


def default_args(settings: PipelineSettings, alerts: AlertServiceNotifier) -> dict[str, Any]:
    """`alerts`: the DAG's notifier (`alert_notifier`), for its tasks' retries, failures and successes."""
    return {
        "owner": OWNER,
        "depends_on_past": False,
        "retries": RETRIES,
        "retry_delay": settings.retry_delay,
        "retry_exponential_backoff": RETRY_BACKOFF_MULTIPLIER,
        "max_retry_delay": settings.max_retry_delay,
        "execution_timeout": settings.execution_timeout,
        "retry_policy": RETRY_POLICY,
        "on_retry_callback": alerts,
        "on_failure_callback": alerts,
        "on_success_callback": alerts,
    }


def alert_notifier(
    context_labels: ContextLabels | None = None,
) -> AlertServiceNotifier:
    """The pipeline's notifier; as a DAG's on_success_callback it also resolves the run's alerts and feeds
    the service's dead man's switch (a day without dag_run_success is an alert). `context_labels`: see
    AlertServiceNotifier."""
    return AlertServiceNotifier(labels=ALERT_LABELS, context_labels=context_labels)


def run_deadline(
    settings: PipelineSettings, context_labels: ContextLabels | None = None
) -> DeadlineAlert | None:
    """The pipeline's Deadline Alert, with the labels of its other alerts (`context_labels`: see
    missed_run_deadline); None when turned off."""
    if settings.run_deadline is None:
        return None
    return missed_run_deadline(settings.run_deadline, labels=ALERT_LABELS, context_labels=context_labels)
