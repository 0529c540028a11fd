"""The batch job's peak memory by the number of rows in a day: what sizes `BATCH_PIPELINE_MEM_LIMIT`.

The job holds a day's rows in memory from validation to the load. For each row count this generates the day's
sample CSV (`batch_job.sample_data`), runs `python -m batch_job` against the example ML API (its own process,
on loopback) and an embedded SQLite results database, and prints the job's peak resident set size (the
kernel's `ru_maxrss` of the finished child) and what each row adds above the smallest run.

Run: `uv run --frozen python benchmarks/batch_job_memory.py [--rows 1000 50000 100000 200000]`
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path

import httpx

RUN_DATE = "2026-01-14"
ML_BATCH_SIZE = 2000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def example_ml_api() -> Generator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "batch_job.example_ml_api", "--port", str(port), "--log-level", "warning"]
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def peak_rss_of_a_run(rows: int, ml_api_url: str, work: Path) -> tuple[int, float]:
    """The job's peak RSS in KiB and its wall time for a day of `rows` rows."""
    landing, database = work / f"landing-{rows}", work / f"results-{rows}.db"
    generate = ["--date", RUN_DATE, "--out", str(landing), "--rows", str(rows)]
    subprocess.run(
        [sys.executable, "-m", "batch_job.sample_data", *generate], check=True, stdout=subprocess.DEVNULL
    )
    environment = os.environ | {
        "BATCH_RUN_DATE": RUN_DATE,
        "BATCH_SOURCE_URI": landing.as_uri(),
        "BATCH_DATABASE_URL": f"sqlite:///{database}",
        "BATCH_ML_API_URL": ml_api_url,
        "BATCH_ML_BATCH_SIZE": str(ML_BATCH_SIZE),
    }
    started = time.monotonic()
    # A child of its own (forked by a fresh interpreter), so that ru_maxrss is the job's alone.
    measure = (
        "import resource, subprocess, sys; "
        "subprocess.run([sys.executable, '-m', 'batch_job'], check=True, stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    finished = subprocess.run(
        [sys.executable, "-c", measure], env=environment, check=True, capture_output=True, text=True
    )
    return int(finished.stdout.strip()), time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 50_000, 100_000, 200_000])
    arguments = parser.parse_args()
    print(f"{'rows':>9}  {'peak RSS (MiB)':>14}  {'KiB per row above the smallest':>30}  {'wall (s)':>8}")
    with tempfile.TemporaryDirectory(prefix="batch-job-memory-") as work, example_ml_api() as url:
        smallest: tuple[int, int] | None = None
        for rows in sorted(arguments.rows):
            peak_kib, seconds = peak_rss_of_a_run(rows, url, Path(work))
            if smallest is None:
                smallest = (rows, peak_kib)
                per_row = "-"
            else:
                per_row = f"{(peak_kib - smallest[1]) / (rows - smallest[0]):.2f}"
            print(f"{rows:>9,}  {peak_kib / 1024:>14.1f}  {per_row:>30}  {seconds:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
