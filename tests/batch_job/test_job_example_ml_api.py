"""The example ML API, served by uvicorn on loopback: the /predict contract, determinism and the API key."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from batch_job_support import serve_app

from batch_job.example_ml_api import create_app

API_KEY = "example-api-key"


def transaction(transaction_id: str = "T-1", amount: str = "12.50", country: str = "DE") -> dict[str, str]:
    return {
        "transaction_id": transaction_id,
        "account_id": "ACC1",
        "merchant_id": "MER1",
        "amount": amount,
        "currency": "EUR",
        "timestamp": "2026-01-14T12:00:00Z",
        "country": country,
    }


def predict(url: str, *transactions: dict[str, str], headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{url}/predict", json={"transactions": list(transactions)}, headers=headers, timeout=5)


@pytest.fixture(scope="module")
def keyed_api_url() -> Iterator[str]:
    with serve_app(create_app(api_key=API_KEY)) as url:
        yield url


def test_healthz_answers_ok(example_ml_api_url: str) -> None:
    response = httpx.get(f"{example_ml_api_url}/healthz", timeout=5)
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_predict_answers_one_prediction_per_transaction(example_ml_api_url: str) -> None:
    body = predict(example_ml_api_url, transaction("T-1"), transaction("T-2")).json()
    assert [p["transaction_id"] for p in body["predictions"]] == ["T-1", "T-2"]
    assert body["model_version"] == "example-rules-1"


def test_the_same_transaction_always_gets_the_same_score(example_ml_api_url: str) -> None:
    first = predict(example_ml_api_url, transaction()).json()
    second = predict(example_ml_api_url, transaction()).json()
    assert first == second


def test_a_large_amount_in_a_risky_country_is_flagged(example_ml_api_url: str) -> None:
    [small, large] = predict(
        example_ml_api_url, transaction("T-1", "12.50", "DE"), transaction("T-2", "250000.00", "NG")
    ).json()["predictions"]
    assert small["is_fraud"] is False
    assert large["is_fraud"] is True
    assert large["fraud_score"] > small["fraud_score"]


def test_an_empty_batch_is_refused(example_ml_api_url: str) -> None:
    assert predict(example_ml_api_url).status_code == 422


def test_a_keyed_api_refuses_a_request_without_the_key(keyed_api_url: str) -> None:
    assert predict(keyed_api_url, transaction()).status_code == 401


def test_a_keyed_api_refuses_a_wrong_key(keyed_api_url: str) -> None:
    response = predict(keyed_api_url, transaction(), headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401


def test_a_keyed_api_answers_with_the_key(keyed_api_url: str) -> None:
    response = predict(keyed_api_url, transaction(), headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 200


def test_the_openapi_title_says_it_is_an_example(example_ml_api_url: str) -> None:
    title = httpx.get(f"{example_ml_api_url}/openapi.json", timeout=5).json()["info"]["title"]
    assert title.startswith("Example ML API")
