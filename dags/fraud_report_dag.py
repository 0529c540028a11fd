"""Downstream fraud report, triggered by every scored_transactions asset event: wiring only."""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import dag

from pipeline_common.assets import SCORED_TRANSACTIONS
from pipeline_common.defaults import alert_notifier, default_args
from pipeline_common.fraud_report import write_fraud_reports
from pipeline_common.settings import load_settings

DAG_ID = "fraud_report_dag"
START_DATE = datetime(2026, 1, 1, tzinfo=UTC)
TAGS = ["batch", "transactions", "fraud-report", "data-engineering"]
SETTINGS = load_settings()
ALERTS = alert_notifier()

DOC_MD = f"""
### Fraud report

**What it does.** Runs whenever `batch_pipeline_dag` loads a day into `scored_transactions` (asset event) and
writes `fraud_report_<YYYY-MM-DD>.json` for each date announced by the events of the run (a run can carry
several): the event counts, the rows now in the table, how many are flagged as fraud, the top suspects.

**Where the output goes.** `{SETTINGS.reports_dir}` (setting `BATCH_PIPELINE_REPORTS_DIR`); the task log names
each file written.

**Connections.** `postgres_default` (read only).

**Re-run.** Reports follow the data: re-run `batch_pipeline_dag` for the date (param `run_date`); its new
event triggers a new report. A manual run of this DAG has no event and is skipped.
"""


@dag(
    dag_id=DAG_ID,
    schedule=SCORED_TRANSACTIONS,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(SETTINGS, ALERTS),
    on_failure_callback=ALERTS,
    on_success_callback=ALERTS,
    tags=TAGS,
    doc_md=DOC_MD,
)
def fraud_report_dag() -> None:
    write_fraud_reports(reports_dir=str(SETTINGS.reports_dir))


fraud_report_dag()
