"""Experiment only: ``alerting-service`` with its SQLite pool capped at one connection.

Used by ``drain_probe.py --one-connection``. It wraps ``alerting_service.db.create_async_engine`` at run time
(pool_size=1, max_overflow=0 for SQLite URLs) and then runs the service's own CLI: the service's files are
not changed. With one connection, write transactions wait for each other in SQLAlchemy's asyncio pool queue
instead of polling SQLite's write lock with sleeps.
"""

from __future__ import annotations

import sys
from typing import Any

import alerting_service.db as db
from alerting_service.cli import main

_create_async_engine = db.create_async_engine


def _one_connection(url: Any, **kwargs: Any) -> Any:
    if str(url).startswith("sqlite"):
        kwargs.update(pool_size=1, max_overflow=0, pool_timeout=120)
    return _create_async_engine(url, **kwargs)


db.create_async_engine = _one_connection

if __name__ == "__main__":
    sys.argv[0] = "alerting-service"
    sys.exit(main())
