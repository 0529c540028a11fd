"""The two demo commands run end to end, as `make demo` and `make demo-alerts` run them (in a scratch dir)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def run_demo(script: str, directory: Path) -> str:
    # The demos set up their own Airflow home and settings: none of the test session's may leak in.
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AIRFLOW", "BATCH_PIPELINE", "ALERTING_"))
    }
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / script), "--dir", str(directory)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_make_demo_runs_the_pipeline_and_its_consumer_and_a_rerun_adds_no_duplicate(tmp_path: Path) -> None:
    output = run_demo("demo.py", tmp_path / "demo")

    assert "fraud_report_dag run asset_triggered__" in output
    assert "rows per stage: read 500, valid 494, rejected 6, scored 494, loaded 494" in output
    assert "-> the same" in output
    assert "494 rows, 494 distinct ids -> no duplicates" in output


@pytest.mark.slow
def test_make_demo_alerts_shows_the_failure_arriving_by_email_and_signed_webhook(tmp_path: Path) -> None:
    output = run_demo("demo_alerts.py", tmp_path / "alerts")

    assert "try 4 of 4" in output
    assert "signature VERIFIED" in output
    assert "dag_run_failure" in output
