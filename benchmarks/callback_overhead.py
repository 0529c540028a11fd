"""What an alert callback adds to a task: AlertServiceNotifier timed the way a task process calls it.

A task callback runs in the task process after its state is reported, synchronously: its whole duration is
added to the task. Each call here uses a new notifier (a task process builds its own: connection lookup, HTTP
client, TCP connect) and a context with a new idempotency key (every call is a real insert).

Three situations, all on loopback with real peers:
- the service up: `alerting-service serve` (temp SQLite data dir), N calls -> p50, p99, max;
- the service refusing connections (a closed port) -> worst case, fallback email included (aiosmtpd);
- the service accepting and never answering (a listening socket nobody reads) -> worst case, which is the
  notifier's configured bound: `timeout` for the attempt plus the fallback email.

Targets: p99 < 50 ms when up; never more than timeout + fallback_timeout when down. Figures only, no
assertion.
Not included: the connection lookup through a worker's supervisor (env variables here).

Run: `uv run --frozen python benchmarks/callback_overhead.py [--calls 300] [--silent-calls 5]`
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Generator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
from aiosmtpd.controller import Controller

INGEST_KEY = "benchmark-ingest-key-0123456789abcdef"
TARGET_P99_UP = 0.050


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def failed_task_context() -> dict[str, Any]:
    """A task callback's context as the notifier reads it; a fresh run_id gives a fresh idempotency key."""
    task = SimpleNamespace(
        retry_delay=timedelta(minutes=5), retry_exponential_backoff=2.0, max_retry_delay=None
    )
    ti = SimpleNamespace(
        dag_id="batch_pipeline_dag",
        run_id=f"manual__{uuid.uuid4()}",
        task_id="run_batch_processing",
        map_index=-1,
        try_number=4,
        max_tries=3,
        state="failed",
        end_date=datetime.now(UTC),
        log_url="http://localhost:8080/dags/batch_pipeline_dag/runs/r/tasks/run_batch_processing?try_number=4",
        task=task,
    )
    return {"ti": ti, "logical_date": datetime.now(UTC), "exception": ConnectionError("ml-api:8000 refused")}


def use_alert_service(port: int) -> None:
    connection = {"conn_type": "http", "host": "127.0.0.1", "port": port, "password": INGEST_KEY}
    os.environ["AIRFLOW_CONN_ALERT_SERVICE_DEFAULT"] = json.dumps(connection)


@contextmanager
def alert_service(workdir: Path) -> Generator[int]:
    port = free_port()
    environment = os.environ | {
        "ALERTING_DATA_DIR": str(workdir),
        "ALERTING_API_KEYS": f"airflow:ingest:{INGEST_KEY}",
        "ALERTING_LOG_LEVEL": "WARNING",
    }
    with (workdir / "service.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "alerting_service.cli", "serve", "--port", str(port)],
            env=environment,
            stdout=log,
            stderr=log,
        )
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/readyz", process)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_until_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the alert service exited with {process.returncode}")
        try:
            if httpx.get(url).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("the alert service was not ready within 30 s")


@contextmanager
def smtp_server() -> Generator[int]:
    """A real SMTP server for the fallback email, configured as `smtp_default`."""

    class Accept:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 OK"

    port = free_port()
    controller = Controller(Accept(), hostname="127.0.0.1", port=port)
    controller.start()
    extra = {"from_email": "airflow@bank.example", "to": "oncall@bank.example", "disable_tls": True}
    extra |= {"disable_ssl": True, "retry_limit": 0}
    connection = {"conn_type": "smtp", "host": "127.0.0.1", "port": port, "extra": extra}
    os.environ["AIRFLOW_CONN_SMTP_DEFAULT"] = json.dumps(connection)
    try:
        yield port
    finally:
        controller.stop()


@contextmanager
def silent_port() -> Generator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        yield listener.getsockname()[1]


def time_calls(calls: int, make_notifier: Callable[[], Any]) -> list[float]:
    durations = []
    for _ in range(calls):
        notifier, context = make_notifier(), failed_task_context()
        started = time.perf_counter()
        notifier(context)
        durations.append(time.perf_counter() - started)
    return durations


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="calls with the service up and refusing")
    parser.add_argument("--silent-calls", type=int, default=5, help="calls to a service that never answers")
    arguments = parser.parse_args()

    # Airflow is imported once, before timing: a task process has it loaded already.
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airflow-home-bench-"))
    import logging

    import structlog

    from pipeline_common.notifiers import AlertServiceNotifier

    # The fallback logs an ERROR per call: it is formatted (its cost stays) but not printed.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command log
    notifier = AlertServiceNotifier
    defaults = notifier()
    bound = defaults.timeout + defaults.fallback_timeout
    print(
        f"notifier bounds: timeout {defaults.timeout:g} s + fallback_timeout {defaults.fallback_timeout:g} s"
    )
    print(f"{'situation':<34}{'calls':>6}{'p50':>12}{'p99':>12}{'max':>12}   target")

    with tempfile.TemporaryDirectory(prefix="callback-bench-") as workdir, smtp_server():
        with alert_service(Path(workdir)) as port:
            use_alert_service(port)
            time_calls(20, notifier)  # warm the service's database and the benchmark's imports
            up = time_calls(arguments.calls, notifier)
        report("service up", up, f"p99 < {TARGET_P99_UP * 1000:.0f} ms", percentile(up, 0.99) < TARGET_P99_UP)

        use_alert_service(free_port())
        refused = time_calls(arguments.calls, notifier)
        report("service refusing (+ fallback email)", refused, f"max < {bound:g} s", max(refused) < bound)

        with silent_port() as port:
            use_alert_service(port)
            silent = time_calls(arguments.silent_calls, notifier)
        report("service silent (+ fallback email)", silent, f"max < {bound:g} s", max(silent) < bound)


def report(situation: str, durations: list[float], target: str, met: bool) -> None:
    figures = "".join(
        ms(value) for value in (statistics.median(durations), percentile(durations, 0.99), max(durations))
    )
    print(f"{situation:<34}{len(durations):>6}{figures:>36}   {target}: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
