"""Receivers (admin scope): their state, re-enabling one the dispatcher disabled, replaying dead letters."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from fastapi import APIRouter, HTTPException
from sqlalchemy.ext.asyncio import AsyncSession

from alerting_service.api.deps import (
    ADMIN_ERRORS,
    AdminKey,
    PathText,
    ReasonFilter,
    Services,
    ServicesDep,
    SessionDep,
)
from alerting_service.config import EmailReceiver, WebhookReceiver
from alerting_service.models import DeliveryStatus, ReceiverState
from alerting_service.schemas import (
    DeadLettersReplayed,
    ErrorResponse,
    ReceiverEnabled,
    ReceiverList,
    ReceiverOut,
)
from alerting_service.store import deliveries as delivery_store

router = APIRouter(prefix="/v1/receivers", tags=["receivers"])


@router.get(
    "",
    response_model=ReceiverList,
    responses=ADMIN_ERRORS,
    summary="The configured receivers: where each sends, whether it is disabled, what it has not sent",
)
async def list_receivers(_key: AdminKey, session: SessionDep, services: ServicesDep) -> ReceiverList:
    states = await delivery_store.receiver_states(session)
    unsent = await delivery_store.unsent_by_receiver(session)
    return ReceiverList(
        data=[
            _receiver_out(receiver, states.get(receiver.name), unsent.get(receiver.name, Counter()))
            for receiver in services.config.receivers
        ]
    )


def _receiver_out(
    receiver: EmailReceiver | WebhookReceiver, state: ReceiverState | None, unsent: Counter[DeliveryStatus]
) -> ReceiverOut:
    return ReceiverOut(
        name=receiver.name,
        integration=receiver.integration,
        destination=_destination(receiver),
        disabled_at=state.disabled_at if state else None,
        disabled_reason=state.disabled_reason if state else None,
        unsent=dict(unsent),
    )


def _destination(receiver: EmailReceiver | WebhookReceiver) -> str:
    if isinstance(receiver, WebhookReceiver):
        return receiver.webhook.redacted_url
    smarthost = receiver.email.smarthost
    return f"{smarthost.host}:{smarthost.port}"


@router.post(
    "/{name}/enable",
    response_model=ReceiverEnabled,
    responses={**ADMIN_ERRORS, 404: {"model": ErrorResponse, "description": "No receiver of that name."}},
    summary="Re-enable a receiver the dispatcher disabled (e.g. after 410 Gone)",
)
async def enable_receiver(
    name: PathText, _key: AdminKey, session: SessionDep, services: ServicesDep
) -> ReceiverEnabled:
    _require_configured(name, services)
    was_disabled = await delivery_store.enable_receiver(session, name)
    await session.commit()
    return ReceiverEnabled(name=name, was_disabled=was_disabled)


@router.post(
    "/{name}/replay",
    response_model=DeadLettersReplayed,
    responses={
        **ADMIN_ERRORS,
        404: {"model": ErrorResponse, "description": "No receiver of that name."},
        409: {"model": ErrorResponse, "description": "The receiver is disabled: re-enable it first."},
    },
    summary="Send every dead delivery of a receiver again (e.g. after an outage longer than the horizon)",
    description="Each goes back to pending, due now, with a new retry horizon; its attempts are kept.",
)
async def replay_dead_letters(
    name: PathText, _key: AdminKey, session: SessionDep, services: ServicesDep, reason: ReasonFilter = None
) -> DeadLettersReplayed:
    _require_configured(name, services)
    await require_sendable(name, services, session)
    replayed = 0
    dead = await delivery_store.dead_letters(session, name, reason=reason)
    for some in delivery_store.chunks(dead, delivery_store.REPLAY_BATCH):
        replayed += await services.writer.transaction(
            delivery_store.replay_dead_letters, some, now=datetime.now(UTC)
        )
        services.wake_dispatcher()
    return DeadLettersReplayed(name=name, replayed=replayed)


def _require_configured(name: str, services: Services) -> None:
    if not _is_configured(name, services):
        raise HTTPException(404, f"no receiver {name!r} in the configuration")


def _is_configured(name: str, services: Services) -> bool:
    return name in {receiver.name for receiver in services.config.receivers}


async def require_sendable(name: str, services: Services, session: AsyncSession) -> None:
    """A 409 unless the receiver is configured and enabled: what is replayed to it would only die again."""
    if not _is_configured(name, services):
        raise HTTPException(
            409, f"receiver {name!r} is no longer in the configuration: nothing can be sent to it"
        )
    why = await delivery_store.disabled_reason(session, name)
    if why is not None:
        raise HTTPException(
            409, f"receiver {name!r} is disabled ({why}): POST /v1/receivers/{name}/enable first"
        )
