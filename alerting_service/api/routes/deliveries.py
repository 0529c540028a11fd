"""The delivery log: dead letters and replay (admin scope)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from alerting_service import schemas
from alerting_service.api.deps import (
    ADMIN_ERRORS,
    AdminKey,
    PageLimit,
    PageOffset,
    PathText,
    ReasonFilter,
    ReceiverFilter,
    ServicesDep,
    SessionDep,
)
from alerting_service.api.routes.receivers import require_sendable
from alerting_service.models import DeliveryStatus
from alerting_service.schemas import DeliveryList, DeliveryOut, ErrorResponse
from alerting_service.store import deliveries as delivery_store

router = APIRouter(prefix="/v1/deliveries", tags=["deliveries"])


@router.get("", response_model=DeliveryList, responses=ADMIN_ERRORS, summary="List deliveries")
async def list_deliveries(
    _key: AdminKey,
    session: SessionDep,
    status: Annotated[DeliveryStatus | None, Query(description="e.g. dead for the dead letters")] = None,
    receiver: ReceiverFilter = None,
    reason: ReasonFilter = None,
    limit: PageLimit = 100,
    offset: PageOffset = 0,
) -> DeliveryList:
    rows, count = await delivery_store.list_matching(
        session, status=status, receiver=receiver, reason=reason, limit=limit, offset=offset
    )
    return DeliveryList(data=[schemas.delivery_out(row) for row in rows], count=count)


@router.post(
    "/{delivery_id}/replay",
    response_model=DeliveryOut,
    responses={
        **ADMIN_ERRORS,
        404: {"model": ErrorResponse, "description": "No such delivery."},
        409: {
            "model": ErrorResponse,
            "description": "The delivery is not dead, or its receiver is disabled or no longer configured.",
        },
    },
    summary="Send a dead delivery again",
    description="Back to pending, due now, with a new retry horizon; its attempts are kept. A firing notice "
    "of an alert resolved meanwhile is followed by its resolved notice again.",
)
async def replay_delivery(
    delivery_id: PathText, _key: AdminKey, session: SessionDep, services: ServicesDep
) -> DeliveryOut:
    existing = await delivery_store.get(session, delivery_id)
    if existing is None:
        raise HTTPException(404, f"no delivery {delivery_id!r}")
    await require_sendable(existing.receiver, services, session)
    replayed = await services.writer.transaction(delivery_store.replay, delivery_id, now=datetime.now(UTC))
    if replayed is None:
        raise HTTPException(
            409, f"delivery {delivery_id!r} is {existing.status}, only dead ones are replayed"
        )
    services.wake_dispatcher()
    return schemas.delivery_out(replayed)
