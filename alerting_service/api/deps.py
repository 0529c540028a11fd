"""Dependencies as `Annotated` aliases, so endpoint signatures read as what they need."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from alerting_service.auth import ApiKey, KeyRing, Scope
from alerting_service.config import AlertingConfig, Settings
from alerting_service.ingest import Ingestor
from alerting_service.schemas import ErrorResponse


@dataclass(frozen=True)
class Services:
    """What the lifespan opened; the endpoints reach it through the dependencies below."""

    settings: Settings
    config: AlertingConfig
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    ingestor: Ingestor
    wake_dispatcher: Callable[[], None]


def _services(request: Request) -> Services:
    return request.app.state.services


async def _session(services: Annotated[Services, Depends(_services)]) -> AsyncGenerator[AsyncSession]:
    async with services.sessions() as session:
        # FastAPI finishes this generator after the response, which closes the session.
        yield session  # ruff: ignore[yield-in-context-manager-in-async-generator]


_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


def _authenticated(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> ApiKey:
    key_ring: KeyRing = request.app.state.key_ring
    key = key_ring.authenticate(credentials.credentials) if credentials is not None else None
    if key is None:
        raise HTTPException(401, "missing or unknown API key", headers={"WWW-Authenticate": "Bearer"})
    return key


def _require(scope: Scope) -> Callable[..., Coroutine[Any, Any, ApiKey]]:
    # Async although it awaits nothing: FastAPI runs sync dependencies in its thread pool.
    async def require_scope(  # ruff: ignore[unused-async]
        key: Annotated[ApiKey, Depends(_authenticated)],
    ) -> ApiKey:
        if not key.allows(scope):
            raise HTTPException(403, f"API key '{key.name}' lacks the {scope} scope")
        return key

    return require_scope


ServicesDep = Annotated[Services, Depends(_services)]
SessionDep = Annotated[AsyncSession, Depends(_session)]
IngestKey = Annotated[ApiKey, Depends(_require(Scope.INGEST))]
AdminKey = Annotated[ApiKey, Depends(_require(Scope.ADMIN))]

AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or unknown API key."},
    403: {"model": ErrorResponse, "description": "The API key lacks the scope."},
}
