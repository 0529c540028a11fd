"""Alert service performance benchmark, side by side with Prometheus Alertmanager. One command:

    uv run --frozen python benchmarks/alerting_service_bench.py

It installs what it lacks (Debian ``wrk`` and ``prometheus-alertmanager``, with apt-get: needs root), then, on
loopback only and in one run:

1. ingest: the same closed-loop wrk load (N connections, fixed duration, one alert per request, a unique key
   per request) against (a) the alert service, ``POST /v1/events`` with a Bearer ingest key, counting every
   non-202 as an error, on its embedded default (temp SQLite data dir, generated key, one webhook receiver),
   and (b) Alertmanager, single-alert ``POST /api/v2/alerts``. Both deliver one webhook per alert to the same
   local receiver meanwhile.
2. delivery: an open-loop generator at a steady rate (500 events/s for 10 s) records each 202 (200 for
   Alertmanager); the receiver records each webhook's arrival; the figure is arrival - answer, matched by
   event id / key.

Every figure printed is measured in this run. Every process started here is stopped in ``finally``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUPPORT = HERE / "alerting"
REPO = HERE.parent
sys.path.insert(0, str(SUPPORT))

import openloop  # ruff: ignore[module-import-not-at-top-of-file]  (benchmarks/alerting/openloop.py)

HOST = "127.0.0.1"
TOOLS = {"wrk": "wrk", "prometheus-alertmanager": "prometheus-alertmanager"}  # executable -> Debian package


# ------------------------------------------------------------------------------------------- processes


class Processes:
    """Every process this run starts, each in its own session so its whole group can be stopped."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def start(
        self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        fh = log.open("ab")
        proc = subprocess.Popen(
            argv, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=REPO
        )
        fh.close()
        self.procs[name] = proc
        self.logs[name] = log
        return proc

    def stop(self, name: str, sig: int = signal.SIGTERM, grace: float = 10.0) -> int | None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)  # the group of a process started here (start_new_session)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        return proc.returncode

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def tail(self, name: str, lines: int = 30) -> str:
        log = self.logs.get(name)
        if not log or not log.exists():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def http(method: str, url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(procs: Processes, name: str, urls: list[str], timeout: float = 90.0) -> str:
    """Poll until one of ``urls`` answers 200; fail early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = procs.procs[name]
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{procs.tail(name)}")
        for url in urls:
            try:
                if http("GET", url, timeout=2)[0] == 200:
                    return url
            except OSError:
                pass
        time.sleep(0.2)
    raise RuntimeError(f"{name} not ready after {timeout:.0f} s:\n{procs.tail(name)}")


def ensure_tools() -> None:
    missing = [exe for exe in TOOLS if shutil.which(exe) is None]
    if not missing:
        return
    packages = [TOOLS[exe] for exe in missing]
    print(
        f"[setup] missing {', '.join(missing)}: "
        f"installing Debian package(s) {' '.join(packages)} with apt-get"
    )
    if os.geteuid() != 0:
        sys.exit(f"[setup] not root: run `sudo apt-get install -y {' '.join(packages)}` first")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if subprocess.run(install, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True)
        subprocess.run(install, env=env, check=True)
    still = [exe for exe in TOOLS if shutil.which(exe) is None]
    if still:
        sys.exit(f"[setup] still missing after apt-get: {', '.join(still)}")


def tool_version(argv: list[str]) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
    return (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr).strip() else "?"


# --------------------------------------------------------------------------------------------- targets


@dataclass
class Target:
    name: str  # "service" | "alertmanager"
    port: int
    path: str
    expected: int
    headers: dict[str, str] = field(default_factory=dict)
    token: str = "-"
    data_dir: Path | None = None
    # Processes besides `name` serving the target (`alerting-service worker`s): stopped with it, CPU counted.
    helpers: list[str] = field(default_factory=list)


def start_receiver(procs: Processes, tmp: Path) -> int:
    port = free_port()
    procs.start(
        "receiver", [sys.executable, str(SUPPORT / "receiver.py"), "--port", str(port)], tmp / "receiver.log"
    )
    wait_ready(procs, "receiver", [f"http://{HOST}:{port}/__count"])
    return port


def start_service(
    procs: Processes,
    tmp: Path,
    phase: str,
    receiver_port: int,
    standin: bool,
    extra_env: list[str],
    processes: int,
    workers: int,
) -> Target:
    """The alert service on its embedded default: temp SQLite dir, generated key, one webhook receiver."""
    base = tmp / f"service-{phase}"
    data_dir = base / "data"
    data_dir.mkdir(parents=True)
    token = secrets.token_urlsafe(32)
    secrets_file = base / "webhook_secrets"
    secrets_file.write_text(
        "whsec_" + __import__("base64").b64encode(secrets.token_bytes(24)).decode() + "\n"
    )
    config = base / "alerting.yaml"
    config.write_text(
        "receivers:\n"
        "  - name: bench-webhook\n"
        "    webhook:\n"
        f"      url: http://{HOST}:{receiver_port}/hook\n"
        "      format: standard\n"
        f"      secrets_file: {secrets_file}\n"
        "      timeout_seconds: 15\n"
        "      allow_private_network: true\n"
        "route:\n"
        "  receivers: [bench-webhook]\n"
    )
    port = free_port()
    env = {
        **os.environ,
        "ALERTING_DATA_DIR": str(data_dir),
        "ALERTING_API_KEYS": f"bench:ingest:{token}",
        "ALERTING_CONFIG_FILE": str(config),
    }
    env.pop("ALERTING_DATABASE_URL", None)  # the embedded default: SQLite under the data dir
    env.update(item.split("=", 1) for item in extra_env)  # --service-env, for diagnosis only
    if standin:
        argv = [sys.executable, str(SUPPORT / "standin_service.py")]
    else:
        exe = Path(sys.executable).parent / "alerting-service"
        argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "alerting_service.cli"]
    argv += ["serve", "--host", HOST, "--port", str(port)]
    if processes > 1:
        argv += ["--processes", str(processes)]
    if workers:
        env["ALERTING_RUN_DISPATCHER"] = "false"  # the worker processes deliver
    procs.start("service", argv, base / "service.log", env)
    wait_ready(procs, "service", [f"http://{HOST}:{port}/readyz", f"http://{HOST}:{port}/healthz"])
    helpers = [f"service-worker-{index}" for index in range(workers)]
    for helper in helpers:
        procs.start(helper, [*argv[: argv.index("serve")], "worker"], base / f"{helper}.log", env)
    return Target(
        name="service",
        port=port,
        path="/v1/events",
        expected=202,
        headers={"Authorization": f"Bearer {token}"},
        token=token,
        data_dir=data_dir,
        helpers=helpers,
    )


def start_alertmanager(procs: Processes, tmp: Path, phase: str, receiver_port: int) -> Target:
    """Alertmanager with a minimal config: one webhook per alert (group_by its unique key), group_wait 0."""
    base = tmp / f"alertmanager-{phase}"
    base.mkdir(parents=True)
    config = base / "alertmanager.yml"
    config.write_text(
        "route:\n"
        "  receiver: bench\n"
        "  group_by: ['key']\n"
        "  group_wait: 0s\n"
        "  group_interval: 5m\n"
        "  repeat_interval: 4h\n"
        "receivers:\n"
        "  - name: bench\n"
        "    webhook_configs:\n"
        f"      - url: http://{HOST}:{receiver_port}/am\n"
        "        send_resolved: false\n"
    )
    port = free_port()
    argv = [
        "prometheus-alertmanager",
        f"--config.file={config}",
        f"--storage.path={base / 'data'}",
        f"--web.listen-address={HOST}:{port}",
        "--cluster.listen-address=",
        "--log.level=warn",
    ]
    procs.start("alertmanager", argv, base / "alertmanager.log")
    wait_ready(procs, "alertmanager", [f"http://{HOST}:{port}/-/ready"])
    return Target(name="alertmanager", port=port, path="/api/v2/alerts", expected=200)


def stop_target(procs: Processes, target: Target) -> None:
    for name in (target.name, *target.helpers):
        procs.stop(name)


def target_cpu_seconds(procs: Processes, target: Target) -> float:
    return sum(cpu_seconds(procs.procs[name].pid) for name in (target.name, *target.helpers))


def db_counts(data_dir: Path | None) -> dict[str, int | dict[str, int]] | None:
    """Rows the service committed (read with the sqlite3 module after the service stopped)."""
    if data_dir is None:
        return None
    dbs = sorted(data_dir.glob("*.db"))
    if not dbs:
        return None
    with sqlite3.connect(f"file:{dbs[0]}?mode=ro", uri=True) as conn:
        try:
            counts: dict[str, int | dict[str, int]] = {
                "events": conn.execute("SELECT count(*) FROM events").fetchone()[0]
            }
        except sqlite3.Error:
            return None
        with contextlib.suppress(sqlite3.Error):
            counts["deliveries"] = dict(
                conn.execute("SELECT status, count(*) FROM deliveries GROUP BY status")
            )
    return counts


def stored_event_ids(data_dir: Path | None) -> set[str] | None:
    if data_dir is None or not (data_dir / "alerts.db").exists():
        return None
    with sqlite3.connect(f"file:{data_dir / 'alerts.db'}?mode=ro", uri=True) as conn:
        try:
            return {row[0] for row in conn.execute("SELECT id FROM events")}
        except sqlite3.Error:
            return None


# ---------------------------------------------------------------------------------------- measurements


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def receiver_count(receiver_port: int) -> int:
    return json.loads(http("GET", f"http://{HOST}:{receiver_port}/__count")[1])["received"]


def wait_for_webhooks(
    receiver_port: int, expected: int, timeout: float, stall: float = 10.0
) -> tuple[int, float]:
    """Poll the receiver until ``expected`` webhooks arrived, no progress for ``stall`` s, or ``timeout``."""
    start = time.monotonic()
    last, last_change = receiver_count(receiver_port), start
    while last < expected:
        now = time.monotonic()
        if now - start > timeout or now - last_change > stall:
            break
        time.sleep(0.25)
        count = receiver_count(receiver_port)
        if count != last:
            last, last_change = count, time.monotonic()
    return last, (last_change if last else time.monotonic()) - start


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) and of its live child processes
    (`serve --processes N`), from /proc; a child that ended counts once it was waited for."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return math.nan
    # utime + stime, and cutime + cstime: children that ended and were waited for count too.
    own = sum(int(field) for field in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    children = (cpu_seconds(child) for child in child_pids(pid))
    return own + sum(seconds for seconds in children if not math.isnan(seconds))


def child_pids(pid: int) -> list[int]:
    pids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            pids += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue  # the thread ended meanwhile
    return pids


def group_commit_batches(target: Target) -> tuple[int, float] | None:
    """From the service's /metrics: how many ingest transactions, and the mean events per transaction."""
    if target.name != "service":
        return None
    try:
        text = http("GET", f"http://{HOST}:{target.port}/metrics")[1].decode()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("alerting_ingest_batch_size_count", "alerting_ingest_batch_size_sum"):
            values[name.rsplit("_", 1)[1]] = float(value)
    if not values.get("count"):
        return None
    return int(values["count"]), values["sum"] / values["count"]


def run_wrk(target: Target, args: argparse.Namespace, seconds: float, prefix: str) -> dict:
    argv = [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(SUPPORT / "ingest.lua"),
        f"http://{HOST}:{target.port}",
        "--",
        target.name,
        target.token,
        prefix,
    ]
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=seconds + 60)
    for line in out.stdout.splitlines():
        if line.startswith("WRKRESULT "):
            return json.loads(line.removeprefix("WRKRESULT "))
    raise RuntimeError(f"wrk printed no result (rc {out.returncode}):\n{out.stdout}\n{out.stderr}")


def ingest_phase(procs: Processes, target: Target, receiver_port: int, args: argparse.Namespace) -> dict:
    label = target.name
    run_id = secrets.token_hex(4)
    http("POST", f"http://{HOST}:{receiver_port}/__reset")
    warm = (
        run_wrk(target, args, args.warmup, f"warm{run_id}") if args.warmup > 0 else {"requests": 0, "ok": 0}
    )
    print(f"[ingest:{label}] warm-up {args.warmup:g} s: {warm['requests']} requests, discarded")
    cpu_before = target_cpu_seconds(procs, target)
    wrk = run_wrk(target, args, args.duration, f"k{run_id}")
    cpu = target_cpu_seconds(procs, target) - cpu_before
    at_end = receiver_count(receiver_port)
    seconds = wrk["duration_us"] / 1e6
    result = {
        "seconds": seconds,
        "requests": wrk["requests"],
        "accepted": wrk["ok"],
        "accepted_per_s": wrk["ok"] / seconds,
        "p50_ms": wrk["p50_us"] / 1000,
        "p90_ms": wrk["p90_us"] / 1000,
        "p99_ms": wrk["p99_us"] / 1000,
        "max_ms": wrk["max_us"] / 1000,
        "bad": wrk["bad"],
        "duplicates": wrk["duplicates"],
        "bad_statuses": wrk["bad_statuses"],
        "socket_errors": {k: v for k, v in wrk["socket_errors"].items() if v and k != "status"},
        "webhooks_at_load_end": at_end,
        "cpu_seconds": cpu,
        "accepted_per_cpu_s": wrk["ok"] / cpu if cpu > 0 else math.nan,
    }
    print(
        f"[ingest:{label}] {wrk['requests']} requests in {seconds:.2f} s: accepted {wrk['ok']} "
        f"({result['accepted_per_s']:.0f}/s), p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
        f"max {result['max_ms']:.1f} ms; non-{target.expected}: {wrk['bad']} {wrk['bad_statuses'] or ''}; "
        f"socket errors: {result['socket_errors'] or 0}; answered duplicate: {wrk['duplicates']}"
    )
    print(
        f"[ingest:{label}] server CPU during the load: {cpu:.1f} s over {seconds:.1f} s "
        f"({result['accepted_per_cpu_s']:.0f} accepted per CPU-second, webhook sending included)"
    )
    expected_hooks = warm["ok"] + wrk["ok"]
    print(
        f"[ingest:{label}] webhooks received by the end of the load: {at_end} of >= {expected_hooks} accepted"
    )
    got, drain = wait_for_webhooks(receiver_port, expected_hooks, args.drain_timeout)
    drained_per_s = (got - at_end) / drain if drain > 0 else math.nan
    result.update(
        webhooks_total=got, drain_seconds=drain, webhooks_expected=expected_hooks, drain_per_s=drained_per_s
    )
    state = "all delivered" if got >= expected_hooks else "NOT all delivered (gave up waiting)"
    print(
        f"[ingest:{label}] backlog: {got} webhooks {drain:.1f} s after the load ended "
        f"({drained_per_s:.0f} webhooks/s meanwhile): {state}"
    )
    batches = group_commit_batches(target)
    if batches:
        result["ingest_batches"], result["mean_batch"] = batches
        print(
            f"[ingest:{label}] group commit (its /metrics): {batches[0]} transactions, "
            f"mean {batches[1]:.1f} events per transaction"
        )
    stop_target(procs, target)
    counts = db_counts(target.data_dir)
    if counts is not None:
        result["db"] = counts
        print(
            f"[ingest:{label}] committed rows after stop: events {counts['events']} (>= {expected_hooks} "
            f"answered 202 incl. warm-up: {'yes' if counts['events'] >= expected_hooks else 'NO'}), "
            f"deliveries {counts.get('deliveries', '?')}"
        )
    return result


def delivery_phase(procs: Processes, target: Target, receiver_port: int, args: argparse.Namespace) -> dict:
    label = target.name
    run_id = secrets.token_hex(4)
    http("POST", f"http://{HOST}:{receiver_port}/__reset")

    def body(i: int) -> tuple[str, bytes]:
        key = f"d{run_id}-{i}"
        if target.name == "service":
            payload = {
                "idempotency_key": key,
                "type": "task_failure",
                "severity": "critical",
                "dag_id": "bench_dag",
                "task_id": "run_batch_processing",
                "run_id": key,
                "try_number": 1,
                "max_tries": 4,
                "exception": "ConnectionError: bench",
                "labels": {"team": "bench"},
            }
        else:
            payload = [{"labels": {"alertname": "bench", "dag_id": "bench_dag", "key": key}}]
        return key, json.dumps(payload).encode()

    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        run = runner.run(
            openloop.run(
                HOST, target.port, target.path, target.headers, body, args.rate, args.delivery_seconds
            )
        )
    outcomes = run.outcomes
    accepted = [o for o in outcomes if o.status == target.expected]
    errors: dict[str, int] = {}
    for o in outcomes:
        if o.status != target.expected:
            reason = o.error or str(o.status)
            errors[reason] = errors.get(reason, 0) + 1
    got, _ = wait_for_webhooks(receiver_port, len(accepted), args.delivery_wait)
    records = json.loads(http("GET", f"http://{HOST}:{receiver_port}/__dump", timeout=60)[1])["records"]
    first: dict[str, float] = {}
    seen: dict[str, int] = {}
    for arrival, strings in records:
        for s in set(strings):
            if s not in first or arrival < first[s]:
                first[s] = arrival
            seen[s] = seen.get(s, 0) + 1
    latencies, duplicates = [], 0
    for o in accepted:
        hit = o.event_id if o.event_id in first else (o.key if o.key in first else None)
        if hit is not None:
            latencies.append((first[hit] - o.answered) * 1000)
            duplicates += seen[hit] > 1
    answer_ms = [(o.answered - o.due) * 1000 for o in accepted]
    last_due = outcomes[-1].due if outcomes else 0
    result = {
        "sent": len(outcomes),
        "accepted": len(accepted),
        "duplicate_answers": sum(1 for o in accepted if o.duplicate),
        "errors": errors,
        "offered_rate": args.rate,
        "achieved_rate": len(outcomes) / max(1e-9, last_due - outcomes[0].due) if len(outcomes) > 1 else 0,
        "late_starts": run.late_starts,
        "resent": run.retried,
        "connections": run.connections_opened,
        "max_in_flight": run.max_in_flight,
        "answer_p50_ms": percentile(answer_ms, 50),
        "answer_p99_ms": percentile(answer_ms, 99),
        "arrived": len(latencies),
        "webhooks_received": got,
        "duplicates": duplicates,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies) if latencies else math.nan,
        "min_ms": min(latencies) if latencies else math.nan,
        # the webhook came before the client had read the answer (sent while answering, or a late client)
        "negative": sum(1 for value in latencies if value < 0),
    }
    print(
        f"[delivery:{label}] {result['sent']} sent at {args.rate:g}/s for {args.delivery_seconds:g} s "
        f"(scheduler late > 5 ms: {run.late_starts}, connections {run.connections_opened}, "
        f"resent on a stale keep-alive connection {run.retried}, max in flight "
        f"{run.max_in_flight}): {len(accepted)} answered {target.expected} "
        f"({result['duplicate_answers']} as duplicates), errors {errors or 0}; "
        "answer latency "
        f"from due time p50 {result['answer_p50_ms']:.2f} ms, p99 {result['answer_p99_ms']:.2f} ms"
    )
    print(
        f"[delivery:{label}] webhooks matched {len(latencies)} of {len(accepted)} (duplicates {duplicates}); "
        f"{target.expected} -> webhook arrival p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
        f"min {result['min_ms']:.1f} ms, max {result['max_ms']:.1f} ms; {result['negative']} negative (the "
        "webhook arrived before the client had read the answer: sent while answering, or a late client)"
    )
    stop_target(procs, target)
    stored = stored_event_ids(target.data_dir)
    if stored is not None:
        ids = [o.event_id for o in accepted]
        missing = sum(1 for event_id in ids if event_id not in stored)
        result["answered_but_not_stored"] = missing
        print(
            f"[delivery:{label}] every id answered 202 is in the events table after stop: "
            f"{'yes' if missing == 0 else 'NO'} ({len(ids) - missing} of {len(ids)})"
        )
    return result


# ---------------------------------------------------------------------------------------------- report


def fmt(value: float, digits: int = 1) -> str:
    return (
        "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"
    )


def report(
    results: dict, args: argparse.Namespace, load_start: tuple, load_end: tuple, versions: dict
) -> None:
    ours_i, am_i = results.get("ingest:service"), results.get("ingest:alertmanager")
    ours_d, am_d = results.get("delivery:service"), results.get("delivery:alertmanager")
    rows: list[tuple[str, str, str]] = []

    def row(label: str, ours, am, key: str, digits: int = 1) -> None:
        rows.append(
            (
                label,
                fmt(ours[key], digits) if ours and key in ours else "-",
                fmt(am[key], digits) if am and key in am else "-",
            )
        )

    row(
        f"ingest: accepted/s ({args.connections} conns, {args.duration:g} s)",
        ours_i,
        am_i,
        "accepted_per_s",
        0,
    )
    row("ingest: p50 latency (ms)", ours_i, am_i, "p50_ms", 2)
    row("ingest: p99 latency (ms)", ours_i, am_i, "p99_ms", 2)
    row("ingest: max latency (ms)", ours_i, am_i, "max_ms", 1)
    row("ingest: accepted per server CPU-second", ours_i, am_i, "accepted_per_cpu_s", 0)
    row("ingest: non-202/200 answers", ours_i, am_i, "bad", 0)
    row("ingest: webhooks by load end", ours_i, am_i, "webhooks_at_load_end", 0)
    row("ingest: webhooks after drain", ours_i, am_i, "webhooks_total", 0)
    row("ingest: drain time after load (s)", ours_i, am_i, "drain_seconds", 1)
    row("ingest: webhooks/s while draining", ours_i, am_i, "drain_per_s", 0)
    row(
        f"delivery: accepted of {round(args.rate * args.delivery_seconds)} at {args.rate:g}/s",
        ours_d,
        am_d,
        "accepted",
        0,
    )
    row("delivery: answer p99 from due time (ms)", ours_d, am_d, "answer_p99_ms", 2)
    row("delivery: webhooks arrived (matched)", ours_d, am_d, "arrived", 0)
    row("delivery: answer -> webhook p50 (ms)", ours_d, am_d, "p50_ms", 1)
    row("delivery: answer -> webhook p99 (ms)", ours_d, am_d, "p99_ms", 1)
    width = max(len(r[0]) for r in rows)
    ours_name = "alert service (stand-in!)" if args.standin else "alert service"
    print()
    print("=" * (width + 44))
    print(f"{'':{width}}  {ours_name:>20}  {'Alertmanager':>20}")
    for label, ours, am in rows:
        print(f"{label:{width}}  {ours:>20}  {am:>20}")
    print("=" * (width + 44))
    if ours_i and am_i:
        ratio = ours_i["accepted_per_s"] / am_i["accepted_per_s"] if am_i["accepted_per_s"] else math.nan
        print(f"ingest ratio ours/Alertmanager: {ratio:.2f}")
        print(f"target ingest rate >= Alertmanager's: {'met' if ratio >= 1 else 'NOT met'}")
    if ours_i:
        ok = ours_i["p99_ms"] < 25 and ours_i["bad"] == 0
        print(
            f"target ingest p99 < 25 ms with no errors: {'met' if ok else 'NOT met'} "
            f"({ours_i['p99_ms']:.2f} ms)"
        )
    if ours_d:
        ok = ours_d["p99_ms"] < 250 and ours_d["arrived"] == ours_d["accepted"] == ours_d["sent"]
        print(
            f"target delivery p99 < 250 ms, every event delivered: {'met' if ok else 'NOT met'} "
            f"({fmt(ours_d['p99_ms'])} ms, {ours_d['arrived']}/{ours_d['sent']})"
        )
    print(
        f"conditions: {os.cpu_count()} CPUs, load average at start {load_start[0]:.2f} {load_start[1]:.2f} "
        f"{load_start[2]:.2f}, at end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}; "
        + "; ".join(f"{k}: {v}" for k, v in versions.items())
    )


# ------------------------------------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--duration", type=float, default=15, help="wrk seconds per target (default 15)")
    parser.add_argument("--warmup", type=float, default=2, help="wrk warm-up seconds, discarded (default 2)")
    parser.add_argument("--drain-timeout", type=float, default=60, help="max wait for an ingest backlog (s)")
    parser.add_argument("--rate", type=float, default=500, help="delivery phase events/s (default 500)")
    parser.add_argument(
        "--delivery-seconds", type=float, default=10, help="delivery phase length (default 10)"
    )
    parser.add_argument("--delivery-wait", type=float, default=60, help="max wait for late webhooks (s)")
    parser.add_argument(
        "--phase", choices=["ingest", "delivery"], action="append", help="run only this phase (repeatable)"
    )
    parser.add_argument("--skip-alertmanager", action="store_true")
    parser.add_argument("--skip-service", action="store_true")
    parser.add_argument(
        "--standin", action="store_true", help="test the harness on a FastAPI stand-in service"
    )
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the service (diagnosis, e.g. ALERTING_RUN_DISPATCHER=false)",
    )
    parser.add_argument(
        "--service-processes",
        type=int,
        default=1,
        help="run the service as `serve --processes N` (default 1)",
    )
    parser.add_argument(
        "--service-workers",
        type=int,
        default=0,
        help="deliver from N `alerting-service worker` processes, not from `serve` (default 0)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, databases)")
    args = parser.parse_args()

    def on_term(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    load_start = os.getloadavg()
    print(
        f"[start] {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, "
        f"load average {load_start[0]:.2f} {load_start[1]:.2f} "
        f"{load_start[2]:.2f} on {os.cpu_count()} CPUs"
    )
    ensure_tools()
    versions = {
        "wrk": tool_version(["wrk", "-v"]).split(" [")[0],
        "alertmanager": tool_version(["prometheus-alertmanager", "--version"]).split(" (")[0],
        "python": platform.python_version(),
    }
    commit = subprocess.run(
        ["git", "-C", str(REPO), "log", "-1", "--format=%h", "--", "alerting_service"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "alerting_service"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split("\n")
    changed = [line[3:] for line in dirty if line.strip()]
    # The work tree is what runs: say when it differs from the commit.
    versions["service commit"] = (commit or "?") + (
        f" + uncommitted changes to {', '.join(changed)}" if changed else ""
    )
    versions["service processes"] = str(args.service_processes)
    if args.service_workers:
        versions["service processes"] += f" serving, {args.service_workers} `worker` delivering"
    tmp = Path(tempfile.mkdtemp(prefix="alerting-bench-"))
    procs = Processes()
    results: dict[str, dict] = {}
    try:
        receiver_port = start_receiver(procs, tmp)
        print(f"[setup] webhook receiver on {HOST}:{receiver_port}; temp dir {tmp}")
        targets = []
        if not args.skip_service:
            targets.append("service")
        if not args.skip_alertmanager:
            targets.append("alertmanager")
        for phase, runner in (("ingest", ingest_phase), ("delivery", delivery_phase)):
            if args.phase and phase not in args.phase:
                continue
            for name in targets:
                if name == "service":
                    target = start_service(
                        procs,
                        tmp,
                        phase,
                        receiver_port,
                        args.standin,
                        args.service_env,
                        args.service_processes,
                        args.service_workers,
                    )
                else:
                    target = start_alertmanager(procs, tmp, phase, receiver_port)
                try:
                    results[f"{phase}:{name}"] = runner(procs, target, receiver_port, args)
                except Exception as exc:  # report the failure, keep measuring the other side
                    print(f"[{phase}:{name}] FAILED: {type(exc).__name__}: {exc}")
                    print(procs.tail(name))
                finally:
                    stop_target(procs, target)
    finally:
        procs.stop_all()
        if args.keep:
            print(f"[end] kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    load_end = os.getloadavg()
    report(results, args, load_start, load_end, versions)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"results": results, "load_start": load_start, "load_end": load_end, **versions}, indent=2
            )
        )
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
