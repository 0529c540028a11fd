"""DAG integrity: what the dag-processor sees when it parses the DAG files with production settings."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta

import pytest
from airflow.providers.docker.operators.docker import DockerOperator
from airflow.sdk import CronTriggerTimetable, RetryAction

from pipeline_common.assets import INCOMING_TRANSACTIONS, SCORED_TRANSACTIONS
from pipeline_common.errors import (
    BatchJobFailed,
    BatchJobRejectedInput,
    ConnectionConfigError,
    batch_job_failure,
)
from pipeline_common.run_date import business_date_label
from pipeline_common.settings import DEFAULT_IMAGE
from tests.dags.conftest import DAGS_FOLDER

PRODUCER = "batch_pipeline_dag"
CONSUMER = "fraud_report_dag"


def parse(monkeypatch: pytest.MonkeyPatch, **settings: str) -> dict:
    """Parse the dags folder with no BATCH_PIPELINE_* variable but the given ones (tests shrink delays)."""
    from airflow.dag_processing.dagbag import DagBag

    for name in [name for name in os.environ if name.startswith("BATCH_PIPELINE_")]:
        monkeypatch.delenv(name)
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert bag.import_errors == {}
    return bag.dags


@pytest.fixture(scope="module")
def dags() -> dict:
    with pytest.MonkeyPatch.context() as monkeypatch:
        return parse(monkeypatch)


@pytest.fixture(scope="module")
def docker_dags() -> dict:
    with pytest.MonkeyPatch.context() as monkeypatch:
        return parse(
            monkeypatch,
            BATCH_PIPELINE_DOCKER_URL="tcp://docker-engine.internal:2376",
            BATCH_PIPELINE_DOCKER_TLS_CA_CERT="/etc/docker-tls/ca.pem",
            BATCH_PIPELINE_DOCKER_TLS_CLIENT_CERT="/etc/docker-tls/cert.pem",
            BATCH_PIPELINE_DOCKER_TLS_CLIENT_KEY="/etc/docker-tls/key.pem",
        )


def test_the_dags_folder_holds_exactly_the_two_pipeline_dags(dags):
    assert set(dags) == {PRODUCER, CONSUMER}


def test_the_producer_runs_daily_at_0200_utc_with_a_cron_trigger_timetable(dags):
    dag = dags[PRODUCER]
    assert isinstance(dag.timetable, CronTriggerTimetable)
    assert dag.timetable.expression == "0 2 * * *"
    assert dag.timetable.timezone.name == "UTC"
    assert dag.start_date == datetime(2026, 1, 1, tzinfo=UTC)
    assert dag.catchup is False
    assert dag.max_active_runs == 1


def test_the_producer_prepares_the_environment_then_runs_the_batch_job(dags):
    dag = dags[PRODUCER]
    assert set(dag.task_dict) == {"prepare_environment", "run_batch_processing"}
    assert dag.task_dict["run_batch_processing"].upstream_task_ids == {"prepare_environment"}


def test_the_producer_offers_a_run_date_param_that_defaults_to_none(dags):
    params = dags[PRODUCER].params
    assert params["run_date"] is None
    assert params.get_param("run_date").schema["pattern"] == r"^\d{4}-\d{2}-\d{2}$"


@pytest.mark.parametrize("dag_id", [PRODUCER, CONSUMER])
def test_every_task_retries_three_times_with_capped_exponential_backoff_within_an_hour(dags, dag_id):
    for task in dags[dag_id].tasks:
        assert task.owner == "data-engineering"
        assert task.depends_on_past is False
        assert task.retries == 3
        assert task.retry_delay == timedelta(minutes=5)
        assert task.retry_exponential_backoff == pytest.approx(2.0)
        assert task.max_retry_delay == timedelta(minutes=30)
        assert task.execution_timeout == timedelta(hours=1)
        assert not task.email, "alerts go through the alert service, not Airflow email"


@pytest.mark.parametrize(
    ("error", "action"),
    [
        (batch_job_failure(65), RetryAction.FAIL),
        (batch_job_failure(78), RetryAction.FAIL),
        (ConnectionConfigError("connection 'x' is not defined"), RetryAction.FAIL),
        (batch_job_failure(1), RetryAction.DEFAULT),
        (ConnectionError("ml-api refused"), RetryAction.DEFAULT),
    ],
    ids=["exit-65", "exit-78", "missing-connection", "exit-1", "other-error"],
)
def test_the_retry_policy_fails_at_once_only_what_retrying_cannot_fix(dags, error, action):
    task = dags[PRODUCER].task_dict["run_batch_processing"]
    assert task.retry_policy.evaluate(error, try_number=1, max_tries=4).action is action


def test_exit_65_is_an_input_error_and_exit_1_a_retryable_failure():
    assert isinstance(batch_job_failure(65), BatchJobRejectedInput)
    assert type(batch_job_failure(1)) is BatchJobFailed


def test_the_pipelines_alerts_carry_the_business_date_its_run_processes(dags):
    dag = dags[PRODUCER]
    names = ("on_retry_callback", "on_failure_callback", "on_success_callback")
    callbacks = [dag.on_failure_callback, dag.on_success_callback]
    callbacks += [getattr(task, name) for task in dag.tasks for name in names]
    notifiers = [one for found in callbacks for one in (found if isinstance(found, list) else [found])]
    assert len(notifiers) == 2 + 3 * len(dag.tasks)
    assert {notifier.context_labels for notifier in notifiers} == {business_date_label}


def test_the_pipelines_missed_deadline_carries_the_business_date_too(dags):
    # The triggerer instantiates the notifier from JSON kwargs: the function goes as its import path.
    (deadline,) = dags[PRODUCER].deadline
    kwargs = deadline.callback.kwargs
    assert kwargs["context_labels"] == "pipeline_common.run_date.business_date_label"


def test_the_batch_job_reads_the_incoming_prefix_and_emits_scored_transactions(dags):
    task = dags[PRODUCER].task_dict["run_batch_processing"]
    assert task.inlets == [INCOMING_TRANSACTIONS]
    assert task.outlets == [SCORED_TRANSACTIONS]


def test_the_consumer_is_scheduled_on_the_producers_asset(dags):
    assert dags[CONSUMER].timetable.asset_condition == SCORED_TRANSACTIONS


def test_without_a_docker_url_the_job_runs_as_a_local_process(dags):
    task = dags[PRODUCER].task_dict["run_batch_processing"]
    assert type(task).__name__ == "LocalBatchJobOperator"
    assert task.template_fields == ("environment",)


def test_with_a_docker_url_the_job_runs_in_the_pinned_image_without_secrets_at_parse_time(docker_dags):
    task = docker_dags[PRODUCER].task_dict["run_batch_processing"]
    assert isinstance(task, DockerOperator)
    assert task.image == DEFAULT_IMAGE
    assert task.docker_url == "tcp://docker-engine.internal:2376"
    assert task.mount_tmp_dir is False
    assert task.auto_remove == "success"
    assert task.mem_limit == "2g"
    assert (task.tls_ca_cert, task.tls_client_cert, task.tls_client_key) == (
        "/etc/docker-tls/ca.pem",
        "/etc/docker-tls/cert.pem",
        "/etc/docker-tls/key.pem",
    ), "the engine is reached over TLS: the container environment carries secrets"
    assert task._private_environment == {}, "secrets are resolved at execution time only"
    assert "private_environment" not in task.template_fields


@pytest.mark.parametrize("dag_id", [PRODUCER, CONSUMER])
def test_no_task_uses_a_latest_image(dags, docker_dags, dag_id):
    for task in [*dags[dag_id].tasks, *docker_dags[dag_id].tasks]:
        image = getattr(task, "image", None)
        assert image is None or not image.endswith(":latest")


@pytest.mark.parametrize("dag_id", [PRODUCER, CONSUMER])
def test_every_dag_has_tags_and_operator_docs(dags, dag_id):
    dag = dags[dag_id]
    assert "data-engineering" in dag.tags
    assert "Re-run" in dag.doc_md and "Connections" in dag.doc_md


def test_every_pipeline_task_has_a_doc_in_the_ui_with_either_runner(dags, docker_dags):
    undocumented = [
        task.task_id for dag in (dags, docker_dags) for task in dag[PRODUCER].tasks if not task.doc_md
    ]
    assert undocumented == []


def test_the_docs_clear_command_gives_the_logical_date_of_a_scheduled_run_with_its_time(dags):
    # The CLI reads a bare date as midnight: `-s 2026-01-15 -e 2026-01-15` matches no 02:00 run and clears
    # nothing, exit 0. The example must be a moment a scheduled run has.
    from airflow.sdk.timezone import parse as parse_cli_date  # as the CLI's -s/-e

    doc = dags[PRODUCER].doc_md
    found = re.search(r"airflow tasks clear batch_pipeline_dag .*?-s (\S+)\s+-e (\S+)", doc, re.DOTALL)
    assert found, "the DAG doc shows the clear command"
    start, end = (parse_cli_date(value.rstrip("`")) for value in found.groups())
    assert start == end
    assert (start.hour, start.minute, start.utcoffset()) == (2, 0, timedelta(0)), "02:00 UTC, the schedule's"


def test_the_docs_backfill_command_keeps_the_dags_one_active_run(dags):
    # A backfill's runs obey its own max_active_runs (10 by default), never the DAG's: measured, a backfill
    # created as the docs said ran with max_active_runs=10 although the DAG has 1.
    docs = (DAGS_FOLDER.parent / "docs" / "dags.md").read_text(encoding="utf-8")
    found = re.search(r"`(airflow backfill create [^`]*)`", docs)
    assert found, "docs/dags.md shows the backfill command"
    command = " ".join(found.group(1).split())
    assert f"--max-active-runs {dags[PRODUCER].max_active_runs}" in command
