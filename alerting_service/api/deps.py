"""Dependencies as `Annotated` aliases, so endpoint signatures read as what they need."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from alerting_service.auth import ApiKey, KeyRing, Scope
from alerting_service.config import AlertingConfig
from alerting_service.ingest import Ingestor
from alerting_service.notify.base import Reason
from alerting_service.schemas import ErrorResponse, Text
from alerting_service.store.writer import Writer

ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(frozen=True)
class Services:
    """What the lifespan opened; the endpoints reach it through the dependencies below."""

    config: AlertingConfig
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    ingestor: Ingestor
    writer: Writer
    wake_dispatcher: Callable[[], None]


# The dependencies are async although most await nothing: FastAPI would run sync ones in its thread pool, a
# thread hop each per request. Ingest uses none of them (routes/events.py's IngestEndpoint skips FastAPI).


async def _services(request: Request) -> Services:  # ruff: ignore[unused-async]
    return request.app.state.services


async def _session(services: Annotated[Services, Depends(_services)]) -> AsyncGenerator[AsyncSession]:
    async with services.sessions() as session:
        # FastAPI finishes this generator after the response, which closes the session.
        yield session  # ruff: ignore[yield-in-context-manager-in-async-generator]


_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


def authorize(request: Request, scope: Scope) -> ApiKey:
    """The API key of the request's bearer token, if it has `scope`; otherwise a 401 or 403."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    key_ring: KeyRing = request.app.state.key_ring
    key = key_ring.authenticate(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
    if key is None:
        raise HTTPException(401, "missing or unknown API key", headers={"WWW-Authenticate": "Bearer"})
    if not key.allows(scope):
        raise HTTPException(403, f"API key '{key.name}' lacks the {scope} scope")
    return key


def parse_body(model: type[ModelT], body: bytes) -> ModelT:
    """The request body as `model`, or the 422 a declared FastAPI body would give, naming each field: for the
    endpoints that read their body themselves, after `authorize` (routes/events.py, routes/silences.py)."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in errors]
        ) from None


def _require(scope: Scope) -> Callable[..., Coroutine[Any, Any, ApiKey]]:
    # `_bearer` is there for OpenAPI: it declares the security scheme; `authorize` does the checking.
    async def require_scope(  # ruff: ignore[unused-async]
        request: Request, _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> ApiKey:
        return authorize(request, scope)

    return require_scope


ServicesDep = Annotated[Services, Depends(_services)]
SessionDep = Annotated[AsyncSession, Depends(_session)]
AdminKey = Annotated[ApiKey, Depends(_require(Scope.ADMIN))]

PageLimit = Annotated[int, Query(ge=1, le=1000, description="At most this many items.")]
# Bounded so that it fits the databases' 64-bit integers (a larger one is a 422, not a database error).
PageOffset = Annotated[int, Query(ge=0, le=2**62, description="Skip this many items.")]

# Path and query strings are `Text`: a NUL (PostgreSQL refuses it in a query) is a 422 naming the parameter.
PathText = Annotated[Text, Path()]
ReceiverFilter = Annotated[
    Text | None, Query(max_length=128, description="Only deliveries to this receiver.")
]
ReasonFilter = Annotated[
    Reason | None, Query(description="Only deliveries that failed or were given up for this.")
]

# What every admin route may answer besides its own codes (app.py's handlers give the 503).
ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or unknown API key."},
    403: {"model": ErrorResponse, "description": "The API key lacks the scope."},
    503: {
        "model": ErrorResponse,
        "description": "The database is unavailable; try again after the Retry-After seconds.",
    },
}
