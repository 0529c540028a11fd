"""The batch job's outcome: the summary contract, the asset event extras, exit codes from Docker."""

from __future__ import annotations

import json

import pytest
from airflow.providers.docker.exceptions import DockerContainerFailedException

from pipeline_common.batch_job_operators import scored_event_extra, summary_from_output
from pipeline_common.docker_batch_job_operator import docker_exit_code, summary_line
from pipeline_common.errors import BatchJobSummaryError

SUMMARY = {
    "run_date": "2026-01-14",
    "source": "s3://transactions/incoming/2026-01-14/",
    "table": "scored_transactions",
    "rejects_table": "rejected_transactions",
    "counts": {"read": 1000, "valid": 990, "rejected": 10, "scored": 990, "loaded": 990},
    "duration_seconds": 3.2,
}


def test_the_event_extras_are_run_date_counts_table_and_source_only():
    summary = summary_from_output(json.dumps({**SUMMARY, "unexpected": "value"}), "2026-01-14")
    assert scored_event_extra(summary) == {
        "run_date": "2026-01-14",
        "counts": {"read": 1000, "valid": 990, "rejected": 10, "scored": 990, "loaded": 990},
        "table": "scored_transactions",
        "source": "s3://transactions/incoming/2026-01-14/",
    }


@pytest.mark.parametrize(
    ("last_line", "message"),
    [
        (None, "not its JSON summary"),
        ("load: 990 rows", "not its JSON summary"),
        (json.dumps({**SUMMARY, "counts": {"read": 1}}), "lacks integer counts"),
        (json.dumps({key: value for key, value in SUMMARY.items() if key != "source"}), "lacks source"),
        (
            json.dumps({**SUMMARY, "run_date": "2026-01-13"}),
            "processed 2026-01-13 but was asked for 2026-01-14",
        ),
    ],
    ids=["no-output", "not-json", "partial-counts", "no-source", "other-date"],
)
def test_a_summary_breaking_the_contract_is_refused_saying_why(last_line, message):
    with pytest.raises(BatchJobSummaryError, match=message):
        summary_from_output(last_line, "2026-01-14")


@pytest.mark.parametrize("status", [1, 65, 78, 137])
def test_the_exit_code_is_read_from_the_providers_container_failure(status):
    # Provider 4.6.1 raises exactly this: the repr of Docker's wait() result in the message.
    result = {"Error": None, "StatusCode": status}
    assert docker_exit_code(DockerContainerFailedException(f"Docker container failed: {result!r}")) == status


def test_a_container_failure_without_status_code_counts_as_transient():
    assert docker_exit_code(DockerContainerFailedException("Docker container failed: lost")) == 1


def test_the_summary_is_found_in_a_container_stream_where_a_log_line_overtook_it():
    lines = ["2026-11-24 INFO extract: 1 files", json.dumps(SUMMARY), "2026-11-24 INFO load: 990 rows"]
    assert summary_line(lines) == json.dumps(SUMMARY)


def test_a_container_stream_without_a_json_line_has_no_summary():
    assert summary_line(["2026-11-24 INFO load: 990 rows"]) is None
