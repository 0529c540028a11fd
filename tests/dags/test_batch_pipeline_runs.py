"""Real runs of batch_pipeline_dag (dag.test(): in-process tasks, the real metadata DB, the real batch job).

Each test processes its own business date: the tests share the session's servers and databases, not rows.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable, Generator, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.dags.conftest import connection_env, metadata_rows, query_results
from tests.support.peers import BUCKET, PREFIX, free_port

DAG_ID = "batch_pipeline_dag"


def run_for_date(fresh_dags, run_date: date):
    """A manual run (no logical date) with the run_date param, as an operator re-runs a date."""
    return fresh_dags()[DAG_ID].test(logical_date=None, run_conf={"run_date": run_date.isoformat()})


def tries_of(airflow_db: Path, run_id: str, task_id: str) -> list[dict]:
    """Every try of a task in a run, oldest first: earlier tries from the history table, the last one live."""
    sql = (
        "SELECT try_number, state, start_date, end_date FROM {table} WHERE run_id = ? AND task_id = ? "
        "ORDER BY try_number"
    )
    rows = [
        *metadata_rows(airflow_db, sql.format(table="task_instance_history"), run_id, task_id),
        *metadata_rows(airflow_db, sql.format(table="task_instance"), run_id, task_id),
    ]
    return [dict(row) for row in rows]


def scored_events(airflow_db: Path, run_id: str) -> list[dict]:
    rows = metadata_rows(
        airflow_db,
        "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
        "WHERE a.name = 'scored_transactions' AND e.source_run_id = ? ORDER BY e.id",
        run_id,
    )
    return [json.loads(row["extra"]) for row in rows]


def scored_ids(results_db: str, run_date: date) -> list[str]:
    rows = query_results(
        results_db, "SELECT transaction_id FROM scored_transactions WHERE run_date = %s ORDER BY 1", run_date
    )
    return [row[0] for row in rows]


def test_a_successful_run_records_one_scored_transactions_event_with_the_job_summary(
    fresh_dags, landing, airflow_db, results_db
):
    day = date(2026, 1, 10)
    landing.put_sample_day(day, rows=60, bad_share=0.1)

    dag_run = run_for_date(fresh_dags, day)

    assert dag_run.state == "success"
    [extra] = scored_events(airflow_db, dag_run.run_id)
    loaded = len(scored_ids(results_db, day))
    assert extra == {
        "run_date": "2026-01-10",
        "counts": {
            "read": 60,
            "valid": extra["counts"]["valid"],
            "rejected": 60 - extra["counts"]["valid"],
            "scored": extra["counts"]["valid"],
            "loaded": loaded,
        },
        "table": "scored_transactions",
        "source": "s3://transactions/incoming/2026-01-10/",
    }
    assert 0 < extra["counts"]["rejected"] < 60, "the sample's bad rows are rejected, the rest loaded"
    assert loaded == extra["counts"]["valid"]


def test_a_scheduled_run_processes_the_day_before_its_logical_date(fresh_dags, landing, airflow_db):
    landing.put_sample_day(date(2026, 1, 11), rows=10)

    dag_run = fresh_dags()[DAG_ID].test(logical_date=datetime(2026, 1, 12, 2, 0, tzinfo=UTC))

    assert dag_run.state == "success"
    [extra] = scored_events(airflow_db, dag_run.run_id)
    assert extra["run_date"] == "2026-01-11"
    assert extra["counts"]["loaded"] == 10


def test_rerunning_a_date_leaves_the_same_rows_and_reports_the_same_counts(
    fresh_dags, landing, airflow_db, results_db
):
    day = date(2026, 1, 13)
    landing.put_sample_day(day, rows=40, bad_share=0.1)

    first = run_for_date(fresh_dags, day)
    rows_after_first = scored_ids(results_db, day)
    second = run_for_date(fresh_dags, day)

    assert (first.state, second.state) == ("success", "success")
    assert scored_ids(results_db, day) == rows_after_first
    assert len(set(rows_after_first)) == len(rows_after_first) > 0
    assert scored_events(airflow_db, first.run_id) == scored_events(airflow_db, second.run_id)


class FlakyProxy:
    """A real HTTP server in front of the ML API answering 503 to the first `failures` requests."""

    def __init__(self, upstream: str, failures: int) -> None:
        self.remaining_failures = failures
        self.requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                proxy.requests += 1
                if proxy.remaining_failures > 0:
                    proxy.remaining_failures -= 1
                    self._reply(503, b'{"detail": "induced outage"}')
                    return
                forwarded = {
                    k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")
                }
                answer = httpx.post(f"{upstream}{self.path}", content=body, headers=forwarded, timeout=30)
                self._reply(answer.status_code, answer.content)

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FlakyProxy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def ml_api_failing_twice(ml_api_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FlakyProxy]:
    """ml_api_default pointed at a proxy failing the first two /predict calls; the job does not retry."""
    from tests.dags.conftest import ML_API_KEY

    with FlakyProxy(ml_api_url, failures=2) as proxy:
        name, value = connection_env(
            "ml_api_default", conn_type="http", host=proxy.url, password=ML_API_KEY, extra={"max_retries": 0}
        )
        monkeypatch.setenv(name, value)
        yield proxy


def computed_retry_delays(fresh_dags, tries: list[dict]) -> list[float]:
    """Airflow's own next_retry_datetime() for each failed try, as seconds after that try ended."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.serialization.serialized_objects import create_scheduler_operator

    task = create_scheduler_operator(fresh_dags()[DAG_ID].task_dict["run_batch_processing"])
    instance = TaskInstance(task=task, run_id="computed", dag_version_id=uuid.uuid4())
    delays = []
    for failed in tries:
        instance.try_number = failed["try_number"]
        instance.end_date = datetime.fromisoformat(failed["end_date"])
        delays.append((instance.next_retry_datetime() - instance.end_date).total_seconds())
    return delays


def test_a_transient_ml_api_outage_is_retried_with_growing_delays_then_succeeds(
    fresh_dags, landing, airflow_db, ml_api_failing_twice
):
    landing.put_sample_day(date(2026, 1, 16), rows=20)

    dag_run = run_for_date(fresh_dags, date(2026, 1, 16))

    assert dag_run.state == "success"
    tries = tries_of(airflow_db, dag_run.run_id, "run_batch_processing")
    # The history table keeps each earlier try with the state it ended in.
    assert [(t["try_number"], t["state"]) for t in tries] == [(1, "failed"), (2, "failed"), (3, "success")]
    assert ml_api_failing_twice.requests == 3
    delays = computed_retry_delays(fresh_dags, tries[:2])
    assert delays[0] < delays[1], "exponential backoff: the second wait is longer"
    for failed, retried, delay in zip(tries, tries[1:], delays, strict=False):
        waited = datetime.fromisoformat(retried["start_date"]) - datetime.fromisoformat(failed["end_date"])
        assert waited.total_seconds() >= delay, "no retry starts before its computed retry date"


@contextmanager
def when_retry_is_due(
    airflow_db: Path, task_id: str, action: Callable[[], None]
) -> Generator[None, None, None]:
    """Runs `action` once `task_id` of batch_pipeline_dag is up for retry, as an operator fixing a connection
    after a failed try would; the retry starts only after its retry delay, by then the fix is in."""
    stopped = threading.Event()
    sql = "SELECT 1 FROM task_instance WHERE dag_id = ? AND task_id = ? AND state = 'up_for_retry'"

    def watch() -> None:
        while not stopped.wait(0.05):
            if metadata_rows(airflow_db, sql, DAG_ID, task_id):
                action()
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stopped.set()
        watcher.join()


def test_a_retry_uses_a_connection_fixed_after_the_failed_try(
    fresh_dags, landing, airflow_db, results_db, pipeline_connections, monkeypatch
):
    day = date(2026, 1, 23)
    landing.put_sample_day(day, rows=10)
    fixed = pipeline_connections["AIRFLOW_CONN_POSTGRES_DEFAULT"]
    wrong_port = {**json.loads(fixed), "port": free_port()}  # nothing listens there: transient, retried
    monkeypatch.setenv("AIRFLOW_CONN_POSTGRES_DEFAULT", json.dumps(wrong_port))

    def fix_the_connection() -> None:
        os.environ["AIRFLOW_CONN_POSTGRES_DEFAULT"] = fixed

    with when_retry_is_due(airflow_db, "run_batch_processing", fix_the_connection):
        dag_run = run_for_date(fresh_dags, day)

    assert dag_run.state == "success"
    tries = tries_of(airflow_db, dag_run.run_id, "run_batch_processing")
    assert [(t["try_number"], t["state"]) for t in tries] == [(1, "failed"), (2, "success")]
    assert len(scored_ids(results_db, day)) == 10


def test_prepare_environment_passes_on_only_the_run_date(fresh_dags, landing, airflow_db):
    day = date(2026, 1, 24)
    landing.put_sample_day(day, rows=5)

    dag_run = run_for_date(fresh_dags, day)

    assert dag_run.state == "success"
    [xcom] = metadata_rows(
        airflow_db,
        "SELECT value FROM xcom WHERE run_id = ? AND task_id = 'prepare_environment' "
        "AND key = 'return_value'",
        dag_run.run_id,
    )
    assert json.loads(xcom["value"]) == {"BATCH_RUN_DATE": "2026-01-24"}


def test_invalid_input_data_fails_after_exactly_one_try(fresh_dags, landing, airflow_db, tmp_path, capfd):
    day = date(2026, 1, 17)
    malformed = tmp_path / "transactions.csv"
    malformed.write_text("transaction_id;amount\nt-1;12.50\n", encoding="utf-8")  # wrong delimiter, columns
    landing.put_file(day, malformed)

    dag_run = run_for_date(fresh_dags, day)

    assert dag_run.state == "failed"
    tries = tries_of(airflow_db, dag_run.run_id, "run_batch_processing")
    assert [(t["try_number"], t["state"]) for t in tries] == [(1, "failed")]
    assert scored_events(airflow_db, dag_run.run_id) == []
    assert "the batch job exited with code 65" in capfd.readouterr().out


def test_the_alerts_of_a_failed_run_name_its_business_date(fresh_dags, landing, tmp_path, capfd):
    # No alert service here: the notifier logs each event it could not deliver, as JSON.
    day = date(2026, 1, 19)
    malformed = tmp_path / "transactions.csv"
    malformed.write_text("transaction_id;amount\nt-1;12.50\n", encoding="utf-8")
    landing.put_file(day, malformed)

    assert run_for_date(fresh_dags, day).state == "failed"

    logged = [
        json.JSONDecoder().raw_decode(line[line.index("{") :])[0]  # the log line goes on after the JSON
        for line in capfd.readouterr().out.splitlines()
        if "ALERT NOT DELIVERED" in line
    ]
    failures = {event["type"]: event["labels"] for event in logged if event["type"].endswith("failure")}
    assert failures == {
        "task_failure": {"team": "data-engineering", "business_date": "2026-01-19"},
        "dag_run_failure": {"team": "data-engineering", "business_date": "2026-01-19"},
    }


def test_a_missing_connection_fails_the_first_task_at_once_naming_it(
    fresh_dags, airflow_db, monkeypatch, capfd
):
    monkeypatch.delenv("AIRFLOW_CONN_POSTGRES_DEFAULT")

    dag_run = run_for_date(fresh_dags, date(2026, 1, 18))

    assert dag_run.state == "failed"
    tries = tries_of(airflow_db, dag_run.run_id, "prepare_environment")
    assert [(t["try_number"], t["state"]) for t in tries] == [(1, "failed")]
    assert tries_of(airflow_db, dag_run.run_id, "run_batch_processing")[0]["state"] == "upstream_failed"
    assert "connection 'postgres_default' is not defined" in capfd.readouterr().out


def test_a_date_whose_input_is_gone_is_retried_then_fails_keeping_its_loaded_rows(
    fresh_dags, landing, airflow_db, results_db, capfd
):
    day = date(2026, 1, 22)
    landing.put_sample_day(day, rows=20)
    assert run_for_date(fresh_dags, day).state == "success"
    loaded = scored_ids(results_db, day)
    with closing(landing.client()) as client:  # the landing bucket's retention expired, say
        for found in client.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/{day.isoformat()}/")["Contents"]:
            client.delete_object(Bucket=BUCKET, Key=found["Key"])

    dag_run = run_for_date(fresh_dags, day)

    assert dag_run.state == "failed"
    tries = tries_of(airflow_db, dag_run.run_id, "run_batch_processing")
    assert [(t["try_number"], t["state"]) for t in tries] == [
        (1, "failed"),
        (2, "failed"),
        (3, "failed"),
        (4, "failed"),
    ]
    assert (
        f"no CSV objects at s3://{BUCKET}/{PREFIX}/2026-01-22/ for run date 2026-01-22"
        in capfd.readouterr().out
    )
    assert scored_ids(results_db, day) == loaded
    assert len(loaded) == 20
