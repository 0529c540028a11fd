"""Diagnosis: how fast the service's dispatcher drains a backlog, and what its claim query costs.

    uv run --frozen python benchmarks/alerting/drain_probe.py [--fill-seconds 10]

1. Fill: the service with ``ALERTING_RUN_DISPATCHER=false`` takes wrk's load (64 connections) for
   ``--fill-seconds``: every event leaves a pending webhook delivery in its SQLite outbox. Then it is stopped.
2. Claim query: on a copy of that database, ``EXPLAIN QUERY PLAN`` and the mean time of the dispatcher's
   claim candidate query as ``store/deliveries.claim_due`` issued it on SQLite before commit f963bd8 (one
   query, OR of the two due conditions), and of its pending branch alone (what the service does since).
3. Drain: the service restarted on the same data dir with its dispatcher, nothing else sent to it; webhooks
   counted at the local receiver for ``--drain-seconds``.

Figures only, measured in this run; every process it starts is stopped in ``finally``.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import alerting_service_bench as bench  # ruff: ignore[module-import-not-at-top-of-file]  (benchmarks/alerting_service_bench.py)

CANDIDATES = (
    "SELECT deliveries.id FROM deliveries"
    " WHERE deliveries.status = 'pending' AND deliveries.next_attempt_at <= ?"
    " OR deliveries.status = 'in_flight' AND deliveries.lease_until < ? ORDER BY deliveries.next_attempt_at"
    " LIMIT ?"
)
PENDING_ONLY = (
    "SELECT deliveries.id FROM deliveries"
    " WHERE deliveries.status = 'pending' AND deliveries.next_attempt_at <= ?"
    " ORDER BY deliveries.next_attempt_at LIMIT ?"
)


def claim_query_figures(db: Path, limit: int = 8, repeat: int = 20) -> None:
    copy = db.with_name("copy.db")
    with sqlite3.connect(db) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    with sqlite3.connect(copy) as conn:
        pending = conn.execute("SELECT count(*) FROM deliveries WHERE status = 'pending'").fetchone()[0]
        now = conn.execute("SELECT max(next_attempt_at) FROM deliveries").fetchone()[0]
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + CANDIDATES, (now, now, limit))]
        print(f"[claim] {pending} pending deliveries; plan of the claim candidates query: {' | '.join(plan)}")
        for label, sql, params in (
            ("claim candidates (claim_due's SQL before f963bd8)", CANDIDATES, (now, now, limit)),
            ("pending branch alone", PENDING_ONLY, (now, limit)),
        ):
            start = time.perf_counter()
            for _ in range(repeat):
                conn.execute(sql, params).fetchall()
            print(f"[claim] {label}: {(time.perf_counter() - start) / repeat * 1000:.2f} ms per query")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fill-seconds", type=float, default=10)
    parser.add_argument("--drain-seconds", type=float, default=10)
    args = parser.parse_args()
    print(f"[start] load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    bench.ensure_tools()
    tmp = Path(tempfile.mkdtemp(prefix="alerting-drain-"))
    procs = bench.Processes()
    try:
        receiver_port = bench.start_receiver(procs, tmp)
        secrets_file = tmp / "webhook_secrets"
        secrets_file.write_text("whsec_" + base64.b64encode(secrets.token_bytes(24)).decode() + "\n")
        config = tmp / "alerting.yaml"
        config.write_text(
            "receivers:\n  - name: bench-webhook\n    webhook:\n"
            f"      url: http://{bench.HOST}:{receiver_port}/hook\n      format: standard\n"
            f"      secrets_file: {secrets_file}\n      allow_private_network: true\n"
            "route:\n  receivers: [bench-webhook]\n"
        )
        token = secrets.token_urlsafe(32)
        env = {
            **os.environ,
            "ALERTING_DATA_DIR": str(tmp / "data"),
            "ALERTING_API_KEYS": f"bench:ingest:{token}",
            "ALERTING_CONFIG_FILE": str(config),
            "ALERTING_LOG_LEVEL": "WARNING",
        }
        env.pop("ALERTING_DATABASE_URL", None)
        serve = [str(Path(sys.executable).parent / "alerting-service")]

        def start(dispatcher: bool) -> bench.Target:
            port = bench.free_port()
            run_env = {**env, "ALERTING_RUN_DISPATCHER": "true" if dispatcher else "false"}
            command = [*serve, "serve", "--host", bench.HOST, "--port", str(port)]
            procs.start("service", command, tmp / "service.log", run_env)
            bench.wait_ready(procs, "service", [f"http://{bench.HOST}:{port}/readyz"])
            return bench.Target("service", port, "/v1/events", 202, token=token)

        target = start(False)
        fill = argparse.Namespace(threads=2, connections=64)
        result = bench.run_wrk(target, fill, args.fill_seconds, f"fill{secrets.token_hex(3)}")
        print(f"[fill] {result['ok']} events accepted in {result['duration_us'] / 1e6:.1f} s, dispatcher off")
        procs.stop("service")
        claim_query_figures(tmp / "data" / "alerts.db")

        start(True)
        begin, before = time.monotonic(), bench.receiver_count(receiver_port)
        time.sleep(args.drain_seconds)
        elapsed, after = time.monotonic() - begin, bench.receiver_count(receiver_port)
        print(
            f"[drain] {after - before} webhooks in {elapsed:.1f} s "
            f"({(after - before) / elapsed:.0f}/s), nothing else sent to the service"
        )
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"[end] load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
