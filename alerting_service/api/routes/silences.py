"""Silences (admin scope): mute matching events for a time; muted events are stored, not delivered."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from alerting_service import schemas
from alerting_service.api.deps import (
    ADMIN_ERRORS,
    AdminKey,
    PageLimit,
    PageOffset,
    PathText,
    ServicesDep,
    SessionDep,
    parse_body,
)
from alerting_service.schemas import ErrorResponse, SilenceIn, SilenceList, SilenceOut
from alerting_service.store import silences as silence_store

router = APIRouter(prefix="/v1/silences", tags=["silences"])

# Documented by hand (app.py adds them to the schema's components): see `_silence_in`.
BODY_MODELS: tuple[type[BaseModel], ...] = (SilenceIn,)
_SILENCE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SilenceIn"}}},
    }
}


async def _silence_in(_key: AdminKey, request: Request) -> SilenceIn:
    """The body, read once the key is checked. FastAPI parses a declared body before it runs any dependency:
    malformed JSON from a caller without a key was answered 422, not 401."""
    return parse_body(SilenceIn, await request.body())


@router.post(
    "",
    status_code=201,
    response_model=SilenceOut,
    responses={
        **ADMIN_ERRORS,
        413: {"model": ErrorResponse, "description": "The body is over ALERTING_MAX_BODY_BYTES."},
        422: {"model": ErrorResponse, "description": "Invalid matchers or times."},
    },
    summary="Create a silence",
    openapi_extra=_SILENCE_BODY,
)
async def create_silence(
    key: AdminKey,
    silence: Annotated[SilenceIn, Depends(_silence_in)],
    session: SessionDep,
    services: ServicesDep,
) -> SilenceOut:
    now = datetime.now(UTC)
    if silence.ends_at <= now:
        raise RequestValidationError(
            [{"loc": ("body", "ends_at"), "msg": "ends_at must be in the future", "type": "value_error"}]
        )
    row = await silence_store.create(
        session,
        matchers=[matcher.model_dump() for matcher in silence.matchers],
        starts_at=silence.starts_at or now,
        ends_at=silence.ends_at,
        created_by=key.name,
        comment=silence.comment,
        now=now,
    )
    await session.commit()
    await services.ingestor.reload_silences()
    return schemas.silence_out(row, now)


@router.get("", response_model=SilenceList, responses=ADMIN_ERRORS, summary="List silences, newest first")
async def list_silences(
    _key: AdminKey,
    session: SessionDep,
    limit: PageLimit = 100,
    offset: PageOffset = 0,
) -> SilenceList:
    now = datetime.now(UTC)
    rows = await silence_store.list_all(session, limit=limit, offset=offset)
    return SilenceList(
        data=[schemas.silence_out(row, now) for row in rows], count=await silence_store.count(session)
    )


@router.delete(
    "/{silence_id}",
    response_model=SilenceOut,
    responses={**ADMIN_ERRORS, 404: {"model": ErrorResponse, "description": "No such silence."}},
    summary="Expire a silence now (it stays listed, expired)",
)
async def expire_silence(
    silence_id: PathText, _key: AdminKey, session: SessionDep, services: ServicesDep
) -> SilenceOut:
    now = datetime.now(UTC)
    row = await silence_store.expire(session, silence_id, now=now)
    if row is None:
        raise HTTPException(404, f"no silence {silence_id!r}")
    await session.commit()
    await services.ingestor.reload_silences()
    return schemas.silence_out(row, now)
