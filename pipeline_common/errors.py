"""The failures the pipeline tasks raise, split by whether a retry can fix them.

`RetryCannotHelp` is the one type the DAGs' retry policy (`defaults.RETRY_POLICY`) fails at once, so a missing
connection or invalid input data costs one try, not four. Everything else keeps Airflow's retries (backoff).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from airflow.sdk._shared.secrets_masker import redact


class RetryCannotHelp(Exception):
    """A failure that will be the same on every retry: fail the task now."""


class ConnectionConfigError(RetryCannotHelp):
    """An Airflow connection the pipeline reads is missing, or lacks a field it needs."""


class PipelineConfigError(RetryCannotHelp):
    """A `BATCH_PIPELINE_*` setting or a DAG param has a value the pipeline cannot use."""


class BatchJobFailed(Exception):
    """The batch job exited non-zero for a reason a later retry may fix (ML API or database unreachable)."""

    def __init__(self, exit_code: int, detail: str = "") -> None:
        self.exit_code = exit_code
        message = f"the batch job exited with code {exit_code}"
        super().__init__(f"{message}: {detail}" if detail else message)


class BatchJobRejectedInput(BatchJobFailed, RetryCannotHelp):
    """Exit 65 (EX_DATAERR): the day's input data is invalid as a whole; fix it, then re-run the date."""


class BatchJobRejectedConfig(BatchJobFailed, RetryCannotHelp):
    """Exit 78 (EX_CONFIG): the job's configuration (connections, settings) is wrong; fix it, then re-run."""


class BatchJobSummaryError(RetryCannotHelp):
    """The job exited 0 but its last stdout line is not the JSON summary of the contract."""


_PERMANENT_EXIT_CODES: dict[int, tuple[type[BatchJobFailed], str]] = {
    os.EX_DATAERR: (
        BatchJobRejectedInput,
        "invalid input data (unreadable CSV or missing columns); retrying cannot help",
    ),
    os.EX_CONFIG: (BatchJobRejectedConfig, "bad or missing configuration; retrying cannot help"),
}
# Not "Airflow retries it": the same words reach the alert of the last try, which nothing retries.
_TRANSIENT_DETAIL = "transient failure, retried with backoff while tries remain"
# The batch job's own account of its failure (batch_job.cli): `batch job failed (exit 1): no input: ...`.
_JOB_FAILURE_LINE = re.compile(r"batch job failed (?:\(exit \d+\): (?P<reason>.+)|on an unexpected error)")
REASON_LIMIT = 400


def batch_job_failure(exit_code: int, reason: str | None = None) -> BatchJobFailed:
    """The exception for a non-zero exit code of the batch job contract: 65 and 78 are permanent. `reason`,
    the job's own error line, goes into the message: it is what the failure alert shows the operator."""
    error_type, detail = _PERMANENT_EXIT_CODES.get(exit_code, (BatchJobFailed, _TRANSIENT_DETAIL))
    if reason:
        # Redacted before it is cut: a secret cut in two is no longer recognised.
        detail = f"{detail}: {redact(reason)[:REASON_LIMIT]}"
    return error_type(exit_code, detail)


def job_failure_reason(log_lines: Iterable[str]) -> str | None:
    """What the job said it failed on: its last `batch job failed` log line (the job never puts a secret
    there), or None when it said nothing (killed, out of memory)."""
    reason = None
    for line in log_lines:
        if found := _JOB_FAILURE_LINE.search(line):
            reason = found.group("reason") or "an unexpected error (traceback in the task log)"
    return reason
