"""Silence rows: create, list, expire, and the ones that can still mute (for the in-memory SilenceSet)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from alerting_service.models import Silence, new_id
from alerting_service.silences import Matcher, SilenceRule


async def create(
    session: AsyncSession,
    *,
    matchers: list[dict[str, Any]],
    starts_at: datetime,
    ends_at: datetime,
    created_by: str,
    comment: str,
    now: datetime,
) -> Silence:
    silence = Silence(
        id=new_id(),
        matchers=matchers,
        starts_at=starts_at,
        ends_at=ends_at,
        created_by=created_by,
        comment=comment,
        created_at=now,
    )
    session.add(silence)
    await session.flush()
    return silence


async def list_all(session: AsyncSession, *, limit: int, offset: int) -> list[Silence]:
    rows = await session.scalars(
        select(Silence).order_by(Silence.created_at.desc(), Silence.id).limit(limit).offset(offset)
    )
    return list(rows)


async def count(session: AsyncSession) -> int:
    return await session.scalar(select(func.count()).select_from(Silence)) or 0


async def expire(session: AsyncSession, silence_id: str, *, now: datetime) -> Silence | None:
    """Expire the silence now (kept for the record); None if there is no such silence."""
    await session.execute(
        update(Silence)
        .where(Silence.id == silence_id, Silence.expired_at.is_(None))
        .values(expired_at=now)
        .execution_options(synchronize_session=False)
    )
    return await session.get(Silence, silence_id, populate_existing=True)


def delete_ended_before(connection: Connection, cutoff: datetime) -> int:
    """Delete the silences that ended (or were expired) before `cutoff`; how many."""
    ended = or_(Silence.ends_at < cutoff, Silence.expired_at < cutoff)
    return connection.execute(delete(Silence).where(ended)).rowcount


async def not_yet_ended(session: AsyncSession, *, now: datetime) -> list[SilenceRule]:
    """Every silence active now or starting later, as pure rules."""
    rows = await session.scalars(
        select(Silence).where(
            Silence.ends_at > now, or_(Silence.expired_at.is_(None), Silence.expired_at > now)
        )
    )
    return [
        SilenceRule(
            id=row.id,
            matchers=tuple(Matcher.from_json(matcher) for matcher in row.matchers),
            starts_at=row.starts_at,
            ends_at=row.ends_at,
            expired_at=row.expired_at,
        )
        for row in rows
    ]
