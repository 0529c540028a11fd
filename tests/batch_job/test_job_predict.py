"""MLApiClient against real HTTP servers on loopback: batching, the bearer token, what is retried."""

from __future__ import annotations

import datetime as dt
import json
import logging
from decimal import Decimal

import pytest
from batch_job_support import (
    Body,
    Delay,
    EchoAuthorization,
    Predict,
    ScriptedMLApi,
    Status,
    Trickle,
    refused_url,
)
from pydantic import SecretStr

from batch_job.errors import ConfigError, TransientError
from batch_job.predict import MLApiClient
from batch_job.validate import Transaction

API_KEY = "ml-api-key-that-must-not-leak"
TIMEOUT_SECONDS = 0.3
MAX_RETRIES = 2


def transactions(count: int) -> list[Transaction]:
    return [
        Transaction(
            transaction_id=f"T-{index}",
            account_id="ACC1",
            merchant_id="MER1",
            amount=Decimal("12.50"),
            currency="EUR",
            occurred_at=dt.datetime(2026, 1, 14, 9, 30, tzinfo=dt.UTC),
            country="DE",
            source_file="file:///a.csv",
            line_number=index + 2,
            raw_record="",
        )
        for index in range(count)
    ]


def client(url: str, api_key: str | None = None, backoff_seconds: float = 0.0) -> MLApiClient:
    return MLApiClient(
        predict_url=f"{url}/predict",
        api_key=SecretStr(api_key) if api_key else None,
        timeout_seconds=TIMEOUT_SECONDS,
        max_retries=MAX_RETRIES,
        backoff_seconds=backoff_seconds,
    )


def score(url: str, count: int = 3, batch_size: int = 100, api_key: str | None = None) -> list:
    with client(url, api_key) as ml_api:
        return ml_api.score(transactions(count), batch_size)


def test_every_transaction_gets_its_score(example_ml_api_url: str) -> None:
    scored = score(example_ml_api_url, count=3)
    assert [s.transaction.transaction_id for s in scored] == ["T-0", "T-1", "T-2"]
    assert all(0.0 <= s.fraud_score <= 1.0 for s in scored)
    assert {s.model_version for s in scored} == {"example-rules-1"}


def test_transactions_are_posted_in_batches_of_the_configured_size(scripted_ml_api: ScriptedMLApi) -> None:
    score(scripted_ml_api.url, count=5, batch_size=2)
    assert [r.transaction_ids for r in scripted_ml_api.requests] == [["T-0", "T-1"], ["T-2", "T-3"], ["T-4"]]
    assert {r.path for r in scripted_ml_api.requests} == {"/predict"}


def test_predictions_are_matched_by_transaction_id_not_position(scripted_ml_api: ScriptedMLApi) -> None:
    scripted_ml_api.script(Predict(reverse=True))
    scored = score(scripted_ml_api.url, count=3)
    expected = score(scripted_ml_api.url, count=3)  # answered in order
    assert [s.fraud_score for s in scored] == [s.fraud_score for s in expected]


def test_the_api_key_is_sent_as_a_bearer_token(scripted_ml_api: ScriptedMLApi) -> None:
    score(scripted_ml_api.url, api_key=API_KEY)
    assert scripted_ml_api.requests[0].headers["Authorization"] == f"Bearer {API_KEY}"


def test_no_authorization_header_is_sent_without_an_api_key(scripted_ml_api: ScriptedMLApi) -> None:
    score(scripted_ml_api.url)
    assert "Authorization" not in scripted_ml_api.requests[0].headers


def test_server_errors_are_retried_until_the_api_answers(scripted_ml_api: ScriptedMLApi) -> None:
    scripted_ml_api.script(Status(500), Status(503))
    assert len(score(scripted_ml_api.url)) == 3
    assert len(scripted_ml_api.requests) == 3


def test_timeouts_are_retried_until_the_api_answers(scripted_ml_api: ScriptedMLApi) -> None:
    scripted_ml_api.script(Delay(TIMEOUT_SECONDS * 2), Delay(TIMEOUT_SECONDS * 2))
    assert len(score(scripted_ml_api.url)) == 3
    assert len(scripted_ml_api.requests) == 3


def test_too_many_requests_is_retried(scripted_ml_api: ScriptedMLApi) -> None:
    scripted_ml_api.script(Status(429, headers={"Retry-After": "0"}))
    assert len(score(scripted_ml_api.url)) == 3
    assert len(scripted_ml_api.requests) == 2


def test_the_wait_before_a_retry_is_at_least_the_retry_after(
    scripted_ml_api: ScriptedMLApi, caplog: pytest.LogCaptureFixture
) -> None:
    scripted_ml_api.script(Status(503, headers={"Retry-After": "1"}))
    with caplog.at_level(logging.WARNING, logger="batch_job.predict"):
        score(scripted_ml_api.url)
    assert "attempt 1/3 failed (HTTP 503); retrying in 1.0 s" in caplog.text


def test_a_retry_after_shorter_than_the_backoff_waits_the_backoff(
    scripted_ml_api: ScriptedMLApi, caplog: pytest.LogCaptureFixture
) -> None:
    # An API answering every try "Retry-After: 0" must not get the retries at once, spending them in no time.
    scripted_ml_api.script(Status(429, headers={"Retry-After": "0"}))
    ml_api = client(scripted_ml_api.url, backoff_seconds=0.2)
    with caplog.at_level(logging.WARNING, logger="batch_job.predict"), ml_api:
        ml_api.score(transactions(3), 100)
    [retry] = [record for record in caplog.records if "retrying in" in record.getMessage()]
    assert retry.args[-1] >= 0.2


def test_a_retry_after_longer_than_the_cap_waits_only_the_cap(
    scripted_ml_api: ScriptedMLApi, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server asking for a day must not hold the task past its timeout: the wait is capped (lowered here so
    # that the test does not sleep the real cap).
    monkeypatch.setattr("batch_job.predict.MAX_RETRY_AFTER_SECONDS", 0.2)
    scripted_ml_api.script(Status(503, headers={"Retry-After": "86400"}))
    with caplog.at_level(logging.WARNING, logger="batch_job.predict"):
        assert len(score(scripted_ml_api.url)) == 3
    assert "attempt 1/3 failed (HTTP 503); retrying in 0.2 s" in caplog.text


def test_a_server_error_that_persists_is_transient_after_the_retries(scripted_ml_api: ScriptedMLApi) -> None:
    scripted_ml_api.script(*[Status(502)] * (MAX_RETRIES + 1))
    with pytest.raises(TransientError, match=f"unavailable after {MAX_RETRIES + 1} attempts: HTTP 502"):
        score(scripted_ml_api.url)
    assert len(scripted_ml_api.requests) == MAX_RETRIES + 1


def test_timeouts_that_persist_are_transient_after_the_retries(scripted_ml_api: ScriptedMLApi) -> None:
    scripted_ml_api.script(*[Delay(TIMEOUT_SECONDS * 2)] * (MAX_RETRIES + 1))
    with pytest.raises(TransientError, match="ReadTimeout"):
        score(scripted_ml_api.url)
    assert len(scripted_ml_api.requests) == MAX_RETRIES + 1


def test_an_answer_trickling_in_for_longer_than_the_timeout_is_a_timeout(
    scripted_ml_api: ScriptedMLApi,
) -> None:
    # Each byte within the timeout: a timeout per read alone waited for the whole answer, however long.
    scripted_ml_api.script(*[Trickle(TIMEOUT_SECONDS / 3)] * (MAX_RETRIES + 1))
    with pytest.raises(TransientError, match="ReadTimeout"):
        score(scripted_ml_api.url, count=1)
    assert len(scripted_ml_api.requests) == MAX_RETRIES + 1


def test_a_refused_connection_is_transient_after_the_retries() -> None:
    with pytest.raises(TransientError, match=f"unavailable after {MAX_RETRIES + 1} attempts: ConnectError"):
        score(refused_url())


def test_a_client_error_is_not_retried(scripted_ml_api: ScriptedMLApi) -> None:
    scripted_ml_api.script(Status(422, '{"detail": "transactions: field required"}'))
    with pytest.raises(ConfigError, match="refused the request with HTTP 422"):
        score(scripted_ml_api.url)
    assert len(scripted_ml_api.requests) == 1


def test_a_wrong_api_key_is_a_config_error_that_does_not_repeat_the_key(
    scripted_ml_api: ScriptedMLApi,
) -> None:
    scripted_ml_api.script(EchoAuthorization())
    with pytest.raises(ConfigError, match="HTTP 401") as raised:
        score(scripted_ml_api.url, api_key=API_KEY)
    assert API_KEY not in str(raised.value)


def test_a_key_echoed_where_the_quoted_body_is_cut_leaks_no_part_of_it(
    scripted_ml_api: ScriptedMLApi, caplog: pytest.LogCaptureFixture
) -> None:
    # The body is cut to its first 200 characters: redacted after the cut, a key straddling it no longer
    # matched and its first characters reached the job's log.
    scripted_ml_api.script(Status(401, "x" * 190 + f"Bearer {API_KEY}"))
    with caplog.at_level(logging.ERROR, logger="batch_job.predict"), pytest.raises(ConfigError) as raised:
        score(scripted_ml_api.url, api_key=API_KEY)
    assert "x" * 190 in caplog.text
    assert API_KEY[:3] not in caplog.text and API_KEY[:3] not in str(raised.value)


def test_a_refusal_quoting_the_transaction_keeps_it_out_of_the_failure_line_and_in_the_log(
    scripted_ml_api: ScriptedMLApi, caplog: pytest.LogCaptureFixture
) -> None:
    # A FastAPI ML API answers a request missing a field it now requires with the transaction as "input": the
    # failure line is quoted by run_batch_processing's exception, hence by the alerts (email, Slack, webhook).
    answer = (
        '{"detail":[{"type":"missing","loc":["body","transactions",0,"channel"],'
        '"input":{"account_id":"DE89370400440532013000"}}]}'
    )
    scripted_ml_api.script(Status(422, answer))

    with caplog.at_level(logging.ERROR, logger="batch_job.predict"), pytest.raises(ConfigError) as raised:
        score(scripted_ml_api.url)

    assert "refused the request with HTTP 422" in str(raised.value)
    assert "DE89370400440532013000" not in str(raised.value)
    assert "DE89370400440532013000" in caplog.text, "the answer is still there to diagnose, in the task log"


def test_an_answer_missing_a_prediction_is_transient(scripted_ml_api: ScriptedMLApi) -> None:
    scripted_ml_api.script(Predict(drop_last=True))
    with pytest.raises(TransientError, match="broke the contract: 2 predictions for 3 transactions"):
        score(scripted_ml_api.url)


def test_an_answer_that_is_not_json_is_transient(scripted_ml_api: ScriptedMLApi) -> None:
    scripted_ml_api.script(Body("<html>maintenance</html>"))
    with pytest.raises(TransientError, match="answered a body that breaks the contract"):
        score(scripted_ml_api.url)


def test_an_empty_list_of_transactions_sends_nothing(scripted_ml_api: ScriptedMLApi) -> None:
    assert score(scripted_ml_api.url, count=0) == []
    assert scripted_ml_api.requests == []


@pytest.mark.parametrize("code", [301, 307, 308])
def test_a_redirect_is_a_config_error_naming_where_it_points(
    scripted_ml_api: ScriptedMLApi, code: int
) -> None:
    # e.g. http:// configured where the API redirects to https://: retrying (the job's, then Airflow's three
    # with backoff) cannot help, and "a body that breaks the contract" sent the operator the wrong way.
    scripted_ml_api.script(
        Status(code, "", {"Location": "https://svc:pw@ml-api.internal:8443/predict?token=abc"})
    )
    with pytest.raises(
        ConfigError, match=f"redirect \\(HTTP {code}\\) to https://ml-api.internal:8443/predict"
    ) as raised:
        score(scripted_ml_api.url)
    assert "token=abc" not in str(raised.value) and "pw@" not in str(raised.value)
    assert len(scripted_ml_api.requests) == 1


def test_a_request_timeout_answer_is_retried(scripted_ml_api: ScriptedMLApi) -> None:
    # 408 from the API or a proxy in front of it: transient, as the contract says, not a refused request (78).
    scripted_ml_api.script(Status(408))
    assert len(score(scripted_ml_api.url)) == 3
    assert len(scripted_ml_api.requests) == 2


def answer_of(predictions: list[dict[str, object]]) -> Body:
    """The ML API's answer carrying `predictions` as they are, from model m1."""
    return Body(json.dumps({"model_version": "m1", "predictions": predictions}))


def test_the_apis_fraud_decision_is_kept_not_worked_out_from_the_score(
    scripted_ml_api: ScriptedMLApi,
) -> None:
    # The model's threshold is the API's: a low score it flags is fraud, a high score it clears is not.
    predictions = [
        {"transaction_id": "T-0", "fraud_score": 0.1, "is_fraud": True},
        {"transaction_id": "T-1", "fraud_score": 0.9, "is_fraud": False},
    ]
    scripted_ml_api.script(answer_of(predictions))
    scored = score(scripted_ml_api.url, count=2)
    assert [(s.fraud_score, s.is_fraud) for s in scored] == [(0.1, True), (0.9, False)]


def test_an_answer_with_two_predictions_for_one_transaction_is_transient(
    scripted_ml_api: ScriptedMLApi,
) -> None:
    # Which of the two scores is the model's is not the job's guess to make.
    predictions = [
        {"transaction_id": "T-0", "fraud_score": 0.1, "is_fraud": False},
        {"transaction_id": "T-0", "fraud_score": 0.9, "is_fraud": True},
        {"transaction_id": "T-1", "fraud_score": 0.2, "is_fraud": False},
    ]
    scripted_ml_api.script(answer_of(predictions))
    with pytest.raises(TransientError, match="broke the contract: 3 predictions for 2 transactions"):
        score(scripted_ml_api.url, count=2)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("fraud_score", True),
        ("fraud_score", "0.9"),
        ("is_fraud", 1),
        ("is_fraud", "no"),
        ("model_version", ""),
    ],
    ids=["score-true", "score-text", "is-fraud-1", "is-fraud-text", "no-model-version"],
)
def test_an_answer_whose_values_are_not_of_the_contracts_types_is_transient(
    scripted_ml_api: ScriptedMLApi, field: str, value: object
) -> None:
    # Read laxly, `"fraud_score": true` was loaded as 1.0: the highest score, from a broken model server.
    prediction = {"transaction_id": "T-0", "fraud_score": 0.5, "is_fraud": False}
    answer: dict[str, object] = {"model_version": "m1", "predictions": [prediction]}
    if field == "model_version":
        answer[field] = value
    else:
        prediction[field] = value
    scripted_ml_api.script(Body(json.dumps(answer)))
    with pytest.raises(TransientError, match="answered a body that breaks the contract"):
        score(scripted_ml_api.url, count=1)
