"""API keys: who may call what, and the keys generated at first start of the embedded default."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from alerting_service.auth import load_key_ring
from alerting_service.config import ConfigError, load_settings
from tests.alerting_service.conftest import ADMIN, ADMIN_KEY, INGEST, Api, SettingsFactory, running_api
from tests.alerting_service.delivery_fixtures import Database

EVENT = {"idempotency_key": "auth", "type": "task_failure", "dag_id": "d"}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not-a-key-at-all"}, {"Authorization": f"Basic {ADMIN_KEY}"}],
    ids=["no key", "unknown key", "not a bearer token"],
)
async def test_an_event_without_a_valid_key_is_a_401_and_nothing_is_written(
    api: Api, headers: dict[str, str]
) -> None:
    answer = await api.client.post("/v1/events", json=EVENT, headers=headers)

    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert (await api.row_counts())["events"] == 0


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/events"),
        ("GET", "/v1/deliveries"),
        ("POST", "/v1/deliveries/some-id/replay"),
        ("POST", "/v1/receivers/hook/enable"),
        ("GET", "/v1/silences"),
        ("DELETE", "/v1/silences/some-id"),
    ],
)
async def test_an_ingest_key_on_an_admin_route_is_a_403(api: Api, method: str, path: str) -> None:
    answer = await api.client.request(method, path, headers=INGEST)

    assert answer.status_code == 403
    assert "admin" in answer.json()["detail"]


async def test_an_ingest_key_cannot_create_a_silence(api: Api) -> None:
    body = {"matchers": [{"name": "dag_id", "value": "d"}], "ends_at": "2999-01-01T00:00:00Z"}

    answer = await api.client.post("/v1/silences", json=body, headers=INGEST)

    assert answer.status_code == 403
    assert (await api.row_counts())["silences"] == 0


async def test_an_admin_key_may_also_ingest(api: Api) -> None:
    assert (await api.client.post("/v1/events", json=EVENT, headers=ADMIN)).status_code == 202


async def test_the_probes_need_no_key(api: Api) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await api.client.get(path)).status_code == 200, path


async def test_the_first_start_without_keys_generates_them_in_a_private_file_and_logs_only_its_path(
    make_settings: SettingsFactory, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(api_keys=None, database_url=None)
    caplog.set_level(logging.WARNING, logger="alerting_service.auth")

    async with running_api(settings, database) as api:
        key_file = settings.data_dir / "api-keys"
        keys = {line.split(":")[0]: line.split(":")[2] for line in key_file.read_text().split()}
        answer = await api.client.post(
            "/v1/events", json=EVENT, headers={"Authorization": f"Bearer {keys['airflow']}"}
        )

    assert answer.status_code == 202
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert str(key_file) in caplog.text
    assert all(key not in caplog.text for key in keys.values())


def test_a_later_start_reuses_the_generated_keys(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    load_key_ring(settings)
    first = (tmp_path / "api-keys").read_text()

    load_key_ring(settings)

    assert (tmp_path / "api-keys").read_text() == first


def test_an_external_database_without_keys_refuses_to_start(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, database_url="postgresql+asyncpg://alerts@db.internal/alerts")

    with pytest.raises(ConfigError, match="ALERTING_API_KEYS: no API key configured"):
        load_key_ring(settings)


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ("admin:root:0123456789abcdef0123", "entry 1: scope must be ingest or admin"),
        ("admin:admin:short", "entry 1: the key must be at least 16 characters"),
        ("0123456789abcdef0123:ingest:airflow", "entry 1: the key must be at least 16 characters"),
        ("a:admin:0123456789abcdef0123,a:ingest:0123456789abcdef9999", "key names must be unique"),
        ("0123456789abcdef0123", "entry 1: expected name:scope:key"),
        ("0123456789:abcdef0123", "entry 1: expected name:scope:key"),
        ("admin:admin:", "entry 1: expected name:scope:key"),
        ("0123456789abcdef/+=:admin:0123456789abcdef0123", "entry 1: the name must be 1-128 letters"),
        ("n" * 129 + ":admin:0123456789abcdef0123", "entry 1: the name must be 1-128 letters"),
    ],
)
def test_a_malformed_key_list_names_the_entry_but_never_the_key(
    keys: str, problem: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_key_ring(load_settings(data_dir=tmp_path, api_keys=keys))

    assert problem in str(raised.value)
    assert "0123456789abcdef" not in str(raised.value) and "short" not in str(raised.value)


@pytest.mark.parametrize("make_unusable", ["data_dir_under_a_file", "keys_file_is_a_directory"])
def test_a_data_dir_where_the_keys_cannot_be_generated_is_a_configuration_error(
    make_unusable: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    if make_unusable == "data_dir_under_a_file":
        (tmp_path / "file").write_text("")
        data_dir = tmp_path / "file" / "data"
    else:
        (data_dir / "api-keys").mkdir(parents=True)

    with pytest.raises(ConfigError, match="ALERTING_DATA_DIR: cannot use the generated API keys file"):
        load_key_ring(load_settings(data_dir=data_dir))


@pytest.mark.parametrize("body", [b"{not json", b""], ids=["malformed", "empty"])
async def test_a_silence_without_a_key_is_a_401_whatever_its_body(api: Api, body: bytes) -> None:
    answer = await api.client.post("/v1/silences", content=body, headers={"content-type": "application/json"})

    assert answer.status_code == 401
    assert (await api.row_counts())["silences"] == 0
