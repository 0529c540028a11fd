"""POST /v1/events (ingest scope) and the event log (admin scope)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from alerting_service import schemas
from alerting_service.api.deps import (
    ADMIN_ERRORS,
    AdminKey,
    PageLimit,
    PageOffset,
    PathText,
    Services,
    SessionDep,
    authorize,
    parse_body,
)
from alerting_service.auth import Scope as AuthScope
from alerting_service.ingest import IngestUnavailable
from alerting_service.models import EventType
from alerting_service.schemas import (
    ErrorResponse,
    EventDetail,
    EventIn,
    EventList,
    IngestAccepted,
    Text,
    UTCTimestamp,
)
from alerting_service.store import events as event_store
from alerting_service.store.events import IdempotencyConflict

router = APIRouter(prefix="/v1/events", tags=["events"])

INGEST_PATH = "/v1/events"


class IngestEndpoint:
    """POST /v1/events as a plain ASGI endpoint: the hot path of an alert storm.

    FastAPI's dependency solving costs more than everything else an ingest request does, so this endpoint
    skips it: one pydantic-core pass validates the raw body, `authorize` is the same check the other routes
    use, and errors are raised as HTTPException / RequestValidationError for the app's handlers to answer.
    `INGEST_OPERATION` documents it in the OpenAPI schema.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        authorize(request, AuthScope.INGEST)
        event = parse_body(EventIn, await request.body())
        services: Services = request.app.state.services
        try:
            accepted = await services.ingestor.submit(event)
        except IdempotencyConflict as conflict:
            raise HTTPException(409, str(conflict)) from None
        except IngestUnavailable as unavailable:
            raise HTTPException(503, str(unavailable), headers={"Retry-After": "1"}) from None
        body = IngestAccepted(id=accepted.id, duplicate=accepted.duplicate).model_dump_json()
        await Response(body, status_code=202, media_type="application/json")(scope, receive, send)


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(ErrorResponse)}}}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


INGEST_OPERATION: dict[str, Any] = {
    "tags": ["events"],
    "summary": "Accept an Airflow event",
    "description": "Answers after the event and its deliveries are committed. The same idempotency_key and "
    "body again answer the same id with duplicate=true and store nothing new.",
    "operationId": "ingest_event",
    "security": [{"HTTPBearer": []}],
    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(EventIn)}}},
    "responses": {
        "202": {"description": "Stored.", "content": {"application/json": {"schema": _ref(IngestAccepted)}}},
        "401": _error("Missing or unknown API key."),
        "403": _error("The API key lacks the ingest scope."),
        "409": _error("The idempotency_key was already used with another body."),
        "413": _error("The body is over ALERTING_MAX_BODY_BYTES."),
        "422": _error("Invalid JSON or fields; `detail` names each problem."),
        "503": _error("Not stored (database unavailable or shutting down); send it again."),
    },
}
INGEST_MODELS: tuple[type[BaseModel], ...] = (EventIn, IngestAccepted, ErrorResponse)


@router.get("", response_model=EventList, responses=ADMIN_ERRORS, summary="List events, newest first")
async def list_events(
    _key: AdminKey,
    session: SessionDep,
    dag_id: Annotated[Text | None, Query(max_length=250)] = None,
    type: Annotated[EventType | None, Query()] = None,
    since: Annotated[
        UTCTimestamp | None, Query(description="received at or after (ISO 8601 with zone)")
    ] = None,
    until: Annotated[UTCTimestamp | None, Query(description="received before (ISO 8601 with zone)")] = None,
    limit: PageLimit = 100,
    offset: PageOffset = 0,
) -> EventList:
    rows, count = await event_store.list_events(
        session, dag_id=dag_id, event_type=type, since=since, until=until, limit=limit, offset=offset
    )
    return EventList(data=[schemas.event_out(row) for row in rows], count=count)


@router.get(
    "/{event_id}",
    response_model=EventDetail,
    responses={**ADMIN_ERRORS, 404: {"model": ErrorResponse, "description": "No such event."}},
    summary="One event with the state of each of its deliveries",
)
async def get_event(event_id: PathText, _key: AdminKey, session: SessionDep) -> EventDetail:
    event = await event_store.get_with_deliveries(session, event_id)
    if event is None:
        raise HTTPException(404, f"no event {event_id!r}")
    return schemas.event_detail(event)
