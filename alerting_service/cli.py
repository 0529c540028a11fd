"""`alerting-service serve | worker | check-config`.

Every setting comes from the `ALERTING_*` environment (see config.py); `--config` overrides
ALERTING_CONFIG_FILE. A configuration error exits with 78 (EX_CONFIG) and a message naming the key.
"""
# ruff: file-ignore[print] - printing is this module's interface

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import uvicorn

from alerting_service.api.app import create_app
from alerting_service.auth import configured_keys
from alerting_service.config import (
    ENV_PREFIX,
    ConfigError,
    Settings,
    load_alerting_config,
    load_settings,
)
from alerting_service.dispatch.worker import run_worker

EX_CONFIG = 78


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alerting-service", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="run the HTTP API (and the dispatcher unless ALERTING_RUN_DISPATCHER=false)"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=9095)
    serve.add_argument(
        "--access-log", action="store_true", help="log every request (off: it costs throughput)"
    )
    worker = commands.add_parser("worker", help="run only the dispatcher, delivering what `serve` accepted")
    check = commands.add_parser("check-config", help="validate the settings and the YAML, then exit")
    for command in (serve, worker, check):
        command.add_argument("--config", type=Path, help=f"the YAML file (overrides {ENV_PREFIX}CONFIG_FILE)")
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    try:
        settings = load_settings(**({"config_file": arguments.config} if arguments.config else {}))
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
        if arguments.command == "serve":
            return _serve(settings, arguments.host, arguments.port, access_log=arguments.access_log)
        if arguments.command == "worker":
            asyncio.run(run_worker(settings))
            return 0
        return _check_config(settings)
    except ConfigError as error:
        print(f"configuration error:\n{error}", file=sys.stderr)
        return EX_CONFIG


def _serve(settings: Settings, host: str, port: int, *, access_log: bool) -> int:
    app = create_app(settings)
    uvicorn.run(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=access_log,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=30,
    )
    return 0


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
