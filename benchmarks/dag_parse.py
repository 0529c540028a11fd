"""Parse time of each DAG file next to an empty DAG file's, once Airflow itself is imported.

The dag-processor re-parses every file on every loop, so a DAG file must not do heavy or networked work at
import time. Each file is parsed REPETITIONS times by a fresh `DagBag` (a fresh module each time, as the
dag-processor does); the first, cold parse also pays for importing `pipeline_common` and the Docker provider,
so it is reported apart from the warm median and p95.

Run: `uv run --frozen python benchmarks/dag_parse.py [--repetitions N]`. Figures only, no assertion.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DAG_FILES = sorted((REPO / "dags").glob("*.py"))
EMPTY_DAG = """
from datetime import datetime, UTC

from airflow.sdk import dag, task


@dag(schedule=None, start_date=datetime(2026, 1, 1, tzinfo=UTC), catchup=False, tags=["benchmark"])
def empty_dag():
    @task
    def nothing():
        pass

    nothing()


empty_dag()
"""


def parse_seconds(path: Path, repetitions: int) -> list[float]:
    from airflow.dag_processing.dagbag import DagBag

    timings = []
    for _ in range(repetitions):
        started = time.perf_counter()
        bag = DagBag(dag_folder=str(path))
        timings.append(time.perf_counter() - started)
        if bag.import_errors:
            raise SystemExit(f"{path.name} does not parse: {bag.import_errors}")
    return timings


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=30)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="airflow-home-bench-")
    try:
        benchmark(Path(home), args.repetitions)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def benchmark(home: Path, repetitions: int) -> None:
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    started = time.perf_counter()
    import airflow.dag_processing.dagbag  # ruff: ignore[unused-import]  # pay for Airflow's import up front

    print(f"importing Airflow: {time.perf_counter() - started:.2f} s (not counted below)")

    empty = home / "empty_dag.py"
    empty.write_text(EMPTY_DAG)
    print(f"{'file':<28}{'cold ms':>9}{'median ms':>11}{'p95 ms':>9}   ({repetitions} parses each)")
    for path in [empty, *DAG_FILES]:
        cold, *warm = parse_seconds(path, repetitions + 1)
        label = f"{path.name} (baseline)" if path == empty else path.name
        print(
            f"{label:<28}{cold * 1000:>9.1f}{statistics.median(warm) * 1000:>11.1f}{p95(warm) * 1000:>9.1f}"
        )
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs (shared: figures vary with load)")


if __name__ == "__main__":
    main()
