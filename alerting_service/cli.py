"""`alerting-service serve | worker | check-config`.

Every setting comes from the `ALERTING_*` environment (see config.py); `--config` overrides
ALERTING_CONFIG_FILE. A configuration error exits with 78 (EX_CONFIG) and a message naming the key; so does
a database whose tables another version of the service made.
"""
# ruff: file-ignore[print] - printing is this module's interface

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from alerting_service.api.app import (
    APP_FACTORY,
    DATABASE_UNAVAILABLE,
    create_app,
    prepare_shared_state,
)
from alerting_service.auth import configured_keys
from alerting_service.config import (
    ENV_PREFIX,
    ConfigError,
    Settings,
    load_alerting_config,
    load_settings,
)
from alerting_service.db import SchemaMismatch, database_problem
from alerting_service.dispatch.worker import run_worker
from alerting_service.logs import configure_logging
from alerting_service.metrics import MULTIPROCESS_DIR_VARIABLE, serve_worker_metrics

EX_CONFIG = 78
MAX_PORT = 65_535
WORKER_START_SECONDS = 30


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alerting-service", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="run the HTTP API (and the dispatcher unless ALERTING_RUN_DISPATCHER=false)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=_port, default=9095, help="port to listen on (default: %(default)s)")
    serve.add_argument(
        "--access-log", action="store_true", help="log every request (off: it costs throughput)"
    )
    serve.add_argument(
        "--processes",
        type=_at_least_one,
        default=1,
        help="server processes on the one port, each with its own ingest and dispatcher (default 1)",
    )
    worker = commands.add_parser("worker", help="run only the dispatcher, delivering what `serve` accepted")
    worker.add_argument(
        "--metrics-port",
        type=_port,
        help="serve the worker's own Prometheus metrics (its sends and their failures) on this port (default:"
        " none)",
    )
    worker.add_argument(
        "--metrics-host", default="127.0.0.1", help="address of --metrics-port (default: %(default)s)"
    )
    check = commands.add_parser("check-config", help="validate the settings and the YAML, then exit")
    for command in (serve, worker, check):
        command.add_argument("--config", type=Path, help=f"the YAML file (overrides {ENV_PREFIX}CONFIG_FILE)")
    return parser


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 to {MAX_PORT}, got {text!r}")
    return int(text)


def _at_least_one(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    try:
        settings = load_settings(**({"config_file": arguments.config} if arguments.config else {}))
        configure_logging(settings.log_level)
        if arguments.command == "serve":
            return _serve(settings, arguments)
        if arguments.command == "worker":
            return _work(settings, arguments)
        return _check_config(settings)
    except ConfigError as error:
        print(f"configuration error:\n{error}", file=sys.stderr)
        return EX_CONFIG
    except SchemaMismatch as error:
        print(f"database error:\n{error}", file=sys.stderr)
        return EX_CONFIG


def _serve(settings: Settings, arguments: argparse.Namespace) -> int:
    options: dict[str, Any] = {
        "host": arguments.host,
        "port": arguments.port,
        "loop": "uvloop",
        "http": "httptools",
        "access_log": arguments.access_log,
        "log_level": settings.log_level.lower(),
        "timeout_graceful_shutdown": 30,
    }
    try:
        asyncio.run(prepare_shared_state(settings))
    except DATABASE_UNAVAILABLE as error:
        # As when uvicorn fails to start an app: one line and its exit code, not a traceback and 1.
        print(f"database unavailable: {database_problem(error)}", file=sys.stderr)
        return STARTUP_FAILURE
    if arguments.processes == 1:
        uvicorn.run(create_app(settings, freeze_heap_once_started=True), **options)
        return 0
    if settings.config_file is not None:  # the processes load their settings anew, `--config` included
        os.environ[f"{ENV_PREFIX}CONFIG_FILE"] = str(settings.config_file)
    with _metrics_shared_between_processes():
        config = uvicorn.Config(
            APP_FACTORY,
            factory=True,
            workers=arguments.processes,
            # A replacement (a death, a SIGHUP) slower to start than this is given up: imports alone take
            # seconds on a loaded host, and uvicorn's 5 s default would abandon a reload silently.
            timeout_worker_healthcheck=WORKER_START_SECONDS,
            **options,
        )
        supervisor = Multiprocess(config, sockets=[config.bind_socket()])
        supervisor.run()
    # uvicorn stops every process when one fails to start (a replacement, say, while the database is down),
    # but exits 0 after that with several processes: a service manager must see the failure.
    failed = any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes)
    return STARTUP_FAILURE if failed else 0


def _work(settings: Settings, arguments: argparse.Namespace) -> int:
    if arguments.metrics_port is None:
        asyncio.run(run_worker(settings))
        return 0
    try:
        stop_metrics = serve_worker_metrics(arguments.metrics_host, arguments.metrics_port)
    except OSError as error:
        address = f"{arguments.metrics_host}:{arguments.metrics_port}"
        raise ConfigError(f"--metrics-port: cannot listen on {address}: {error.strerror}") from None
    try:
        asyncio.run(run_worker(settings))
    finally:
        stop_metrics()
    return 0


@contextlib.contextmanager
def _metrics_shared_between_processes() -> Generator[None]:
    """A fresh directory for the processes' metric files (metrics.py), removed when the server stops."""
    directory = tempfile.mkdtemp(prefix="alerting-service-metrics-")
    os.environ[MULTIPROCESS_DIR_VARIABLE] = directory
    try:
        yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _check_config(settings: Settings) -> int:
    config = load_alerting_config(settings)
    keys = configured_keys(settings)
    summary: dict[str, Any] = {
        "receivers": ", ".join(f"{r.name} ({r.integration})" for r in config.receivers) or "none",
        "route": "from the file" if config.route is not None else "default",
        "database": "embedded SQLite" if settings.uses_embedded_database else "external",
        "api keys": f"{len(keys)} configured" if keys is not None else f"generated in {settings.data_dir}",
    }
    print("configuration ok")
    for name, value in summary.items():
        print(f"  {name}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
