"""Schemathesis against the running service's own OpenAPI document: no generated request gets a 5xx.

The service runs as a real process (embedded SQLite), called with an admin key so the requests reach the
handlers instead of stopping at authentication.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from alerting_service.config import load_settings
from tests.alerting_service.conftest import ADMIN, API_KEYS, environment_of
from tests.alerting_service.delivery_fixtures import ServiceProcess


@pytest.fixture(scope="module")
async def running_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    data_dir = tmp_path_factory.mktemp("fuzzed-service")
    service_settings = load_settings(data_dir=data_dir, api_keys=API_KEYS, run_dispatcher=False)
    service = ServiceProcess("serve", environment_of(service_settings), data_dir / "serve.log")
    service.start()
    await service.until_ready()
    yield service
    service.stop()


def test_no_request_the_schema_allows_gets_a_server_error(running_service: ServiceProcess) -> None:
    schema = schemathesis.openapi.from_url(f"{running_service.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=ADMIN, checks=[not_a_server_error])

        call()
    # The generated requests got past validation to the handlers: events were stored.
    stored = httpx.get(f"{running_service.url}/v1/events", params={"limit": 1}, headers=ADMIN).json()["count"]
    assert [len(operations), stored > 0] == [14, True]
