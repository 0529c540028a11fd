"""The FastAPI application: `create_app(settings)`.

Configuration (YAML, API keys) is loaded when the app is created, so a bad one fails before the server
listens. The lifespan opens the database and its writer (store/writer.py), starts the group-commit ingestor
and, when `run_dispatcher` is set, the in-process Dispatcher, to which the ingestor hands the deliveries it
commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, ProgrammingError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.routing import Route
from uvicorn.config import STARTUP_FAILURE

from alerting_service import __version__
from alerting_service.api.body_limit import BodySizeLimit
from alerting_service.api.deps import Services
from alerting_service.api.routes import deliveries, events, health, receivers, silences
from alerting_service.auth import load_key_ring
from alerting_service.config import (
    AlertingConfig,
    ConfigError,
    Settings,
    load_alerting_config,
    load_settings,
)
from alerting_service.db import create_engine, create_schema, create_session_factory, database_problem
from alerting_service.dispatch.worker import Dispatcher
from alerting_service.expectations import watching
from alerting_service.heap import freeze_startup_objects
from alerting_service.ingest import Ingestor, NoHandoff
from alerting_service.logs import configure_logging
from alerting_service.retention import pruning
from alerting_service.store.writer import Writer

COMPONENT_REF = "#/components/schemas/{model}"  # a pydantic template, filled in per model
TAGS = [
    {"name": "events", "description": "Airflow events in (ingest scope) and the event log (admin scope)."},
    {"name": "deliveries", "description": "The notification log, dead letters and replay (admin scope)."},
    {"name": "receivers", "description": "Receiver state (admin scope)."},
    {"name": "silences", "description": "Mute matching events for a time (admin scope)."},
    {"name": "health", "description": "Probes and Prometheus metrics (no authentication)."},
]


log = logging.getLogger(__name__)

# What the database (or reaching it) raises when it is down, refuses connections or writes, or is full; a
# server that is not listening is asyncpg's bare ConnectionRefusedError, which SQLAlchemy does not wrap.
DATABASE_UNAVAILABLE = (DBAPIError, SQLAlchemyTimeoutError, OSError)
# ... but not what it answers a statement it finds wrong (a schema that drifted, a bug): retrying cannot help.
DATABASE_REFUSED_AS_WRONG = (ProgrammingError, IntegrityError, DataError)
ADMIN_RETRY_AFTER_SECONDS = 5

# `serve --processes N`: each process builds its app from the environment (uvicorn's factory mode).
APP_FACTORY = "alerting_service.api.app:create_app_from_environment"


async def prepare_shared_state(settings: Settings) -> None:
    """What `serve` does once before its processes start: the configuration checked (an error stops the
    server, not each process in turn), the API keys generated on a first start (a process reading the file
    another is still writing would find no key), the schema created, or refused if another version made it
    (exit 78 rather than uvicorn's startup failure and a traceback)."""
    load_alerting_config(settings)
    load_key_ring(settings)
    writer = Writer(settings)
    try:
        await writer.transaction(create_schema)
    finally:
        writer.close()


def create_app_from_environment() -> FastAPI:
    """The app of one process of `serve --processes N`, from the `ALERTING_*` environment.

    Any error here (the YAML edited since the server started, the keys file unreadable) exits with
    uvicorn's startup-failure code: uvicorn then stops the server, or on a SIGHUP keeps the running processes,
    instead of restarting a process that cannot start again and again.
    """
    try:
        settings = load_settings()
        configure_logging(settings.log_level)
        return create_app(settings, freeze_heap_once_started=True)
    except ConfigError as error:
        log.error("configuration error:\n%s", error)
    except Exception:
        log.exception("the app could not be built")
    sys.exit(STARTUP_FAILURE)


def create_app(settings: Settings, *, freeze_heap_once_started: bool = False) -> FastAPI:
    """`freeze_heap_once_started` for an app that owns its process (heap.py), not one among a test's many."""
    config = load_alerting_config(settings)
    if not config.receivers:
        log.warning(
            "no receivers configured (ALERTING_CONFIG_FILE unset, or its YAML has none): events are stored "
            "and answered 202, but delivered to no one"
        )
    app = FastAPI(
        title="Airflow alert service",
        version=__version__,
        description="Durable, idempotent alert fan-out for Airflow callbacks: email and signed webhooks.",
        openapi_tags=TAGS,
        lifespan=lambda app: _lifespan(app, settings, config, freeze_heap=freeze_heap_once_started),
    )
    app.state.key_ring = load_key_ring(settings)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for unavailable in DATABASE_UNAVAILABLE:
        app.add_exception_handler(unavailable, _database_unavailable)
    for wrong in DATABASE_REFUSED_AS_WRONG:  # looked up before DBAPIError, their base
        app.add_exception_handler(wrong, _database_bug)
    # First among the routes: the hottest path is matched without trying the others.
    app.router.routes.insert(0, Route(events.INGEST_PATH, events.IngestEndpoint(), methods=["POST"]))
    for module in (events, deliveries, receivers, silences, health):
        app.include_router(module.router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


@contextlib.asynccontextmanager
async def _lifespan(
    app: FastAPI, settings: Settings, config: AlertingConfig, *, freeze_heap: bool
) -> AsyncGenerator[None]:
    # Stopped in the reverse order: ingest first (no hand-off reaches a dispatcher that has stopped), then
    # the dispatcher, then the writer both of them write through.
    async with contextlib.AsyncExitStack() as resources:
        writer = Writer(settings)
        resources.callback(writer.close)
        await writer.transaction(create_schema)
        engine = create_engine(settings)
        resources.push_async_callback(engine.dispose)
        sessions = create_session_factory(engine)
        dispatcher = Dispatcher(writer, config) if settings.run_dispatcher else None
        if dispatcher is not None:
            stop = asyncio.Event()
            delivering = asyncio.create_task(dispatcher.run(stop), name="dispatcher")
            resources.push_async_callback(_stop_dispatching, stop, delivering)
        handoff = dispatcher if dispatcher is not None else NoHandoff()
        ingestor = Ingestor(
            writer,
            sessions,
            config,
            batch_max=settings.ingest_batch_max,
            queue_max=settings.ingest_queue_max,
            silence_refresh_seconds=settings.silence_refresh_seconds,
            handoff=handoff,
        )
        await ingestor.start()
        resources.push_async_callback(ingestor.stop)
        app.state.services = Services(config, engine, sessions, ingestor, writer, handoff.wake)
        await resources.enter_async_context(pruning(writer, settings.retention))
        # The watcher records through the ingestor: it stops first.
        async with watching(config.expectations, session_factory=sessions, ingestor=ingestor):
            if freeze_heap:
                freeze_startup_objects()
            yield


async def _stop_dispatching(stop: asyncio.Event, delivering: asyncio.Task[None]) -> None:
    stop.set()
    await delivering


# Async although it awaits nothing: Starlette would run a sync handler in its thread pool.
async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:  # ruff: ignore[unused-async]
    """422 naming each bad field; the offending input is not echoed back."""
    assert isinstance(exc, RequestValidationError)
    detail = [
        {"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]} for error in exc.errors()
    ]
    return JSONResponse({"detail": detail}, status_code=422)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:  # ruff: ignore[unused-async]
    """503 with a JSON body and one log line, not a plain-text 500 and a traceback per request."""
    log.warning("database unavailable: %s", database_problem(exc), extra={"path": request.url.path})
    return JSONResponse(
        {"detail": "the database is unavailable; try again later"},
        status_code=503,
        headers={"Retry-After": str(ADMIN_RETRY_AFTER_SECONDS)},
    )


async def _database_bug(request: Request, exc: Exception) -> JSONResponse:  # ruff: ignore[unused-async]
    """A 500 with its traceback logged: not to be retried, nor mistaken for an outage."""
    log.error("the database refused a statement", exc_info=exc, extra={"path": request.url.path})
    return JSONResponse({"detail": "internal error"}, status_code=500)


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            tags=app.openapi_tags,
        )
        # POST /v1/events is a plain ASGI endpoint (see IngestEndpoint): document it by hand; and the bodies
        # parsed only after their key is checked (silences.BODY_MODELS).
        schema["paths"].setdefault(events.INGEST_PATH, {})["post"] = events.INGEST_OPERATION
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (*events.INGEST_MODELS, *silences.BODY_MODELS):
            model_schema = model.model_json_schema(ref_template=COMPONENT_REF)
            components.update(model_schema.pop("$defs", {}))
            components[model.__name__] = model_schema
        app.openapi_schema = schema
    return app.openapi_schema
