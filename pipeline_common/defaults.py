"""Task defaults shared by the pipeline DAGs, and the retry policy failing fast on what retrying cannot fix.

Alert callbacks (on_failure/on_retry) are added here by the alerting integration; alerts go through the alert
service, not `email_on_failure` (deprecated in Airflow 3).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import ExceptionRetryPolicy, RetryAction, RetryRule

from pipeline_common.errors import RetryCannotHelp
from pipeline_common.settings import PipelineSettings

OWNER = "data-engineering"
RETRIES = 3
RETRY_BACKOFF_MULTIPLIER = 2.0
EXECUTION_TIMEOUT = timedelta(hours=1)

RETRY_POLICY = ExceptionRetryPolicy(
    rules=[
        RetryRule(
            exception=RetryCannotHelp,
            action=RetryAction.FAIL,
            reason="retrying cannot fix this (invalid input, bad configuration or missing connection)",
        )
    ],
)


def default_args(settings: PipelineSettings) -> dict[str, Any]:
    return {
        "owner": OWNER,
        "depends_on_past": False,
        "retries": RETRIES,
        "retry_delay": settings.retry_delay,
        "retry_exponential_backoff": RETRY_BACKOFF_MULTIPLIER,
        "max_retry_delay": settings.max_retry_delay,
        "execution_timeout": EXECUTION_TIMEOUT,
        "retry_policy": RETRY_POLICY,
    }
