"""POST /v1/events (ingest scope) and the event log (admin scope)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from alerting_service import schemas
from alerting_service.api.deps import AUTH_ERRORS, AdminKey, IngestKey, ServicesDep, SessionDep
from alerting_service.ingest import IdempotencyConflict, IngestUnavailable
from alerting_service.models import EventType
from alerting_service.schemas import ErrorResponse, EventDetail, EventIn, EventList, IngestAccepted
from alerting_service.store import events as event_store

router = APIRouter(prefix="/v1/events", tags=["events"])

# The body is read and validated by hand (one pydantic-core pass over the raw bytes, the fastest way) so it is
# declared to OpenAPI here rather than through a parameter.
EVENT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EventIn"}}},
    }
}
INGEST_ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS,
    409: {"model": ErrorResponse, "description": "The idempotency_key was already used with another body."},
    413: {"model": ErrorResponse, "description": "The body is over ALERTING_MAX_BODY_BYTES."},
    422: {"model": ErrorResponse, "description": "Invalid JSON or fields; `detail` names each problem."},
    503: {"model": ErrorResponse, "description": "Not stored (database unavailable); send it again."},
}


def parse_event(body: bytes) -> EventIn:
    try:
        return EventIn.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in errors]
        ) from None


@router.post(
    "",
    status_code=202,
    response_model=IngestAccepted,
    responses=INGEST_ERRORS,
    openapi_extra=EVENT_BODY,
    summary="Accept an Airflow event",
    description="Answers after the event and its deliveries are committed. The same idempotency_key and body "
    "again answer the same id with duplicate=true and store nothing new.",
)
async def ingest_event(request: Request, _key: IngestKey, services: ServicesDep) -> Response:
    event = parse_event(await request.body())
    try:
        accepted = await services.ingestor.submit(event)
    except IdempotencyConflict as conflict:
        raise HTTPException(409, str(conflict)) from None
    except IngestUnavailable as unavailable:
        raise HTTPException(503, str(unavailable), headers={"Retry-After": "1"}) from None
    body = IngestAccepted(id=accepted.id, duplicate=accepted.duplicate).model_dump_json()
    return Response(body, status_code=202, media_type="application/json")


@router.get("", response_model=EventList, responses=AUTH_ERRORS, summary="List events, newest first")
async def list_events(
    _key: AdminKey,
    session: SessionDep,
    dag_id: Annotated[str | None, Query(max_length=250)] = None,
    type: Annotated[EventType | None, Query()] = None,
    since: Annotated[datetime | None, Query(description="received at or after (ISO 8601 with zone)")] = None,
    until: Annotated[datetime | None, Query(description="received before (ISO 8601 with zone)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> EventList:
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise RequestValidationError(
                [{"loc": ("query", name), "msg": "must include a timezone", "type": "timezone_aware"}]
            )
    rows, count = await event_store.list_events(
        session, dag_id=dag_id, event_type=type, since=since, until=until, limit=limit, offset=offset
    )
    return EventList(data=[schemas.event_out(row) for row in rows], count=count)


@router.get(
    "/{event_id}",
    response_model=EventDetail,
    responses={**AUTH_ERRORS, 404: {"model": ErrorResponse, "description": "No such event."}},
    summary="One event with the state of each of its deliveries",
)
async def get_event(event_id: str, _key: AdminKey, session: SessionDep) -> EventDetail:
    event = await event_store.get_with_deliveries(session, event_id)
    if event is None:
        raise HTTPException(404, f"no event {event_id!r}")
    return schemas.event_detail(event)
