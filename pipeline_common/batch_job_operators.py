"""The `run_batch_processing` task: run the batch job once for a date, as a container or a local process.

Both runners keep the same contract (docs/architecture.md): the templated `environment` is the XCom of
`prepare_environment`, `BATCH_RUN_DATE` only; every variable derived from a connection, secret or not, is read
from the connections inside `execute()` (`connection_job_environment`), so each try, a retry or a Cleared
task, uses the connections as they are then, never a mix of an old endpoint and a new password. They go
straight into the job's environment, never into a templated field or XCom; only non-secret ones are logged.
Exit 65/78 raise a `RetryCannotHelp` error (the retry policy fails the task at once), any other non-zero exit
a retryable `BatchJobFailed`. On success the last stdout line, the job's JSON summary, becomes the extras of
the `scored_transactions` asset event and the task's (non-secret) return value.

The local runner is here; the Docker one is in `docker_batch_job_operator`, imported only in Docker mode.
"""

from __future__ import annotations

import json
import os
import subprocess  # ruff: ignore[suspicious-subprocess-import]  # runs the batch job: a fixed argv, no shell
import sys
import threading
from collections.abc import Mapping
from logging import Logger
from typing import IO, Any

from airflow.sdk import BaseOperator, Context

from pipeline_common.assets import INCOMING_TRANSACTIONS, SCORED_EVENT_COUNT_KEYS, SCORED_TRANSACTIONS
from pipeline_common.connections import job_environment, read_pipeline_connections, secret_job_environment
from pipeline_common.errors import BatchJobSummaryError, batch_job_failure, job_failure_reason
from pipeline_common.settings import PipelineSettings, Runner

TASK_ID = "run_batch_processing"
# The task's page in the Airflow UI (Task Instance > Details): what a failed try means and what to do.
TASK_DOC = """
Runs the batch job for the date `prepare_environment` returned (`BATCH_RUN_DATE`), as a container when
`BATCH_PIPELINE_DOCKER_URL` is set, else as a local process; the connections are read again at each try.
The job's own log lines are in this task's log, ending with its JSON summary on success.

* Exit 65: the day's input is invalid as a whole. Not retried: get a corrected file, then re-run the date.
* Exit 78: a connection or credential is wrong, or the results table has another layout (the last log
  line names which). Not retried: fix it, then clear this task.
* Any other failure is retried with exponential backoff; once the tries are spent, fix the cause (an
  unreachable ML API or database, the day's files not delivered yet), then clear this task.

A re-run replaces the date's rows; it never duplicates them.
"""
# Output lines kept in memory per stream: the summary is stdout's last, the failure line among stderr's last.
KEPT_LINES = 20
# Variables a local job process inherits from the worker (locale, paths, proxies and CA bundles of the host);
# everything else, notably AIRFLOW_CONN_* with every connection's secrets, stays out.
INHERITED_VARIABLES = (
    *("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "PYTHONPATH"),
    *("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"),
    *("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "AWS_CA_BUNDLE"),
)


def run_batch_processing(settings: PipelineSettings, environment: Any, **kwargs: Any) -> BaseOperator:
    """The task for the configured runner: Docker when `BATCH_PIPELINE_DOCKER_URL` is set, else local."""
    if settings.runner is Runner.DOCKER:
        # Imported only in Docker mode: the Docker SDK adds ~0.3 s to every cold parse of the DAG file.
        from pipeline_common.docker_batch_job_operator import DockerBatchJobOperator

        return DockerBatchJobOperator(
            settings=settings, environment=environment, task_id=TASK_ID, doc_md=TASK_DOC, **kwargs
        )
    return LocalBatchJobOperator(environment=environment, task_id=TASK_ID, doc_md=TASK_DOC, **kwargs)


def connection_job_environment(log: Logger) -> dict[str, str]:
    """Every `BATCH_*` variable derived from the connections, read now; logs the non-secret ones only."""
    connections = read_pipeline_connections()
    public = job_environment(connections)
    for name, value in sorted(public.items()):
        log.info("%s=%s", name, value)
    return {**public, **secret_job_environment(connections)}


def summary_from_output(last_stdout_line: str | None, expected_run_date: str) -> dict[str, Any]:
    """The job's JSON summary, checked against the contract; a malformed one is a contract violation."""
    try:
        summary = json.loads(last_stdout_line or "")
    except json.JSONDecodeError:
        raise BatchJobSummaryError(
            "the batch job exited 0 but its last stdout line is not its JSON summary: "
            f"{last_stdout_line!r:.200}"
        ) from None
    counts = summary.get("counts") if isinstance(summary, dict) else None
    if not isinstance(counts, dict) or not all(
        isinstance(counts.get(key), int) for key in SCORED_EVENT_COUNT_KEYS
    ):
        raise BatchJobSummaryError(
            f"the batch job summary lacks integer counts {', '.join(SCORED_EVENT_COUNT_KEYS)}: "
            f"{summary!r:.300}"
        )
    missing = [key for key in ("run_date", "table", "source") if not isinstance(summary.get(key), str)]
    if missing:
        raise BatchJobSummaryError(f"the batch job summary lacks {', '.join(missing)}: {summary!r:.300}")
    if summary["run_date"] != expected_run_date:
        raise BatchJobSummaryError(
            f"the batch job processed {summary['run_date']} but was asked for {expected_run_date}"
        )
    return summary


def scored_event_extra(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The asset event extras: an allow-list of summary fields, so nothing else can slip into the event."""
    return {
        "run_date": summary["run_date"],
        "counts": {key: summary["counts"][key] for key in SCORED_EVENT_COUNT_KEYS},
        "table": summary["table"],
        "source": summary["source"],
    }


def record_success(context: Context, environment: Mapping[str, str], last_stdout_line: str | None) -> dict:
    extra = scored_event_extra(summary_from_output(last_stdout_line, environment["BATCH_RUN_DATE"]))
    context["outlet_events"][SCORED_TRANSACTIONS].extra = extra
    return extra


class LocalBatchJobOperator(BaseOperator):
    """The batch job as `python -m batch_job` on the worker (the embedded default, no Docker needed)."""

    template_fields = ("environment",)

    def __init__(self, *, environment: Any, **kwargs: Any) -> None:
        super().__init__(inlets=[INCOMING_TRANSACTIONS], outlets=[SCORED_TRANSACTIONS], **kwargs)
        self.environment = environment
        self._process: subprocess.Popen[str] | None = None

    def execute(self, context: Context) -> dict[str, Any]:
        process_env = {
            **{name: os.environ[name] for name in INHERITED_VARIABLES if name in os.environ},
            **self.environment,
            **connection_job_environment(self.log),
        }
        self.log.info("Running %s -m batch_job for %s", sys.executable, self.environment["BATCH_RUN_DATE"])
        exit_code, last_line, failure_reason = self._run(process_env)
        if exit_code != 0:
            raise batch_job_failure(exit_code, failure_reason)
        return record_success(context, self.environment, last_line)

    def _run(self, process_env: dict[str, str]) -> tuple[int, str | None, str | None]:
        with subprocess.Popen(
            [sys.executable, "-m", "batch_job"],
            env=process_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        ) as self._process:
            return self._wait_streaming(self._process)

    def _wait_streaming(self, process: subprocess.Popen[str]) -> tuple[int, str | None, str | None]:
        try:
            # Drain stderr (the job's log) and stdout (its summary) concurrently so neither pipe fills up.
            # Of stderr only the job's failure lines: a traceback after one is longer than KEPT_LINES.
            stderr_lines: list[str] = []
            stderr_thread = threading.Thread(
                target=self._stream_to_log,
                args=(process.stderr, stderr_lines),
                kwargs={"only_failure_lines": True},
                daemon=True,
            )
            stderr_thread.start()
            stdout_lines: list[str] = []
            self._stream_to_log(process.stdout, stdout_lines)
            exit_code = process.wait()
            stderr_thread.join()
            last_line = next((line for line in reversed(stdout_lines) if line.strip()), None)
            return exit_code, last_line, job_failure_reason(stderr_lines)
        finally:
            self._stop_process()

    def _stream_to_log(self, stream: IO[str], kept: list[str], *, only_failure_lines: bool = False) -> None:
        """Log every line as it arrives; keep the last few (the summary), or the job's failure lines."""
        for raw in stream:
            line = raw.rstrip("\n")
            self.log.info("%s", line)
            if only_failure_lines and job_failure_reason([line]) is None:
                continue
            kept.append(line)
            del kept[:-KEPT_LINES]

    def on_kill(self) -> None:
        self._stop_process()

    def _stop_process(self) -> None:
        # Also reached on execution_timeout: never leave a job process writing to the database behind.
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
