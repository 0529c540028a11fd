"""Receiver state (admin scope): re-enabling a receiver the dispatcher disabled."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from alerting_service.api.deps import AUTH_ERRORS, AdminKey, ServicesDep, SessionDep
from alerting_service.schemas import ErrorResponse, ReceiverEnabled
from alerting_service.store import deliveries as delivery_store

router = APIRouter(prefix="/v1/receivers", tags=["receivers"])


@router.post(
    "/{name}/enable",
    response_model=ReceiverEnabled,
    responses={**AUTH_ERRORS, 404: {"model": ErrorResponse, "description": "No receiver of that name."}},
    summary="Re-enable a receiver the dispatcher disabled (e.g. after 410 Gone)",
)
async def enable_receiver(
    name: str, _key: AdminKey, session: SessionDep, services: ServicesDep
) -> ReceiverEnabled:
    if name not in {receiver.name for receiver in services.config.receivers}:
        raise HTTPException(404, f"no receiver {name!r} in the configuration")
    was_disabled = await delivery_store.enable_receiver(session, name)
    await session.commit()
    return ReceiverEnabled(name=name, was_disabled=was_disabled)
