"""Predict: score valid transactions with the ML API, `POST <BATCH_ML_API_URL>/predict`, in batches.

Each batch is retried with exponential backoff (plus jitter, and at least the server's `Retry-After`) on
timeouts (an answer, body included, not there within `BATCH_ML_TIMEOUT_SECONDS`), connection errors, HTTP 408,
429 and 5xx, at most `BATCH_ML_MAX_RETRIES` times; if the API is still unavailable the job fails with a
`TransientError` (exit 1) so the DAG retries it later. Any other 4xx is not retried: it is a `ConfigError`
(exit 78), since a wrong URL or API key will not fix itself; so is a redirect (not followed). The wire format
is in `batch_job.ml_contract`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import SecretStr, ValidationError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from batch_job.errors import ConfigError, TransientError
from batch_job.ml_contract import PredictRequest, PredictResponse, TransactionFeatures
from batch_job.validate import Transaction

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 30.0
MAX_RETRY_AFTER_SECONDS = 60.0
RETRYABLE_STATUS_CODES = frozenset({408, 429})
MAX_ERROR_BODY_CHARS = 200


@dataclass(frozen=True, slots=True)
class ScoredTransaction:
    transaction: Transaction
    fraud_score: float
    is_fraud: bool
    model_version: str


class RetryableResponseError(Exception):
    """The API answered with a status worth retrying (408, 429, 5xx)."""

    def __init__(self, status_code: int, retry_after_seconds: float | None) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        self.retry_after_seconds = retry_after_seconds


# httpx.TransportError covers timeouts, refused connections and connections dropped mid-answer.
RETRYABLE_ERRORS = (httpx.TransportError, RetryableResponseError)


class MLApiClient:
    """A client for the ML API; use it as a context manager so its connection pool is closed."""

    def __init__(
        self,
        *,
        predict_url: str,
        api_key: SecretStr | None,
        timeout_seconds: float,
        max_retries: int,
        backoff_seconds: float,
    ) -> None:
        self._predict_url = predict_url
        self._api_key = api_key
        self._max_attempts = max_retries + 1
        self._timeout_seconds = timeout_seconds
        self._backoff = wait_exponential_jitter(
            multiplier=backoff_seconds, max=MAX_BACKOFF_SECONDS, jitter=backoff_seconds
        )
        headers = {"Authorization": f"Bearer {api_key.get_secret_value()}"} if api_key else {}
        self._http = httpx.Client(timeout=httpx.Timeout(timeout_seconds), headers=headers)

    def __enter__(self) -> MLApiClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._http.close()

    def score(self, transactions: Sequence[Transaction], batch_size: int) -> list[ScoredTransaction]:
        """Score every transaction, `batch_size` per request, in order."""
        scored: list[ScoredTransaction] = []
        for start in range(0, len(transactions), batch_size):
            scored += self._score_batch(transactions[start : start + batch_size])
        return scored

    def _score_batch(self, batch: Sequence[Transaction]) -> list[ScoredTransaction]:
        body = PredictRequest(transactions=[_features(transaction) for transaction in batch])
        response = self._post_with_retries(body.model_dump_json().encode())
        predictions = {prediction.transaction_id: prediction for prediction in response.predictions}
        sent_ids = [transaction.transaction_id for transaction in batch]
        if len(response.predictions) != len(sent_ids) or predictions.keys() != set(sent_ids):
            raise TransientError(
                f"ML API at {self._predict_url} broke the contract: {len(response.predictions)} predictions "
                f"for {len(sent_ids)} transactions, or for other transaction ids"
            )
        return [
            ScoredTransaction(
                transaction=transaction,
                fraud_score=predictions[transaction.transaction_id].fraud_score,
                is_fraud=predictions[transaction.transaction_id].is_fraud,
                model_version=response.model_version,
            )
            for transaction in batch
        ]

    def _post_with_retries(self, body: bytes) -> PredictResponse:
        retrying = Retrying(
            retry=retry_if_exception_type(RETRYABLE_ERRORS),
            stop=stop_after_attempt(self._max_attempts),
            wait=self._wait_before_retry,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            answer = retrying(self._post_once, body)
        except RETRYABLE_ERRORS as exc:
            raise TransientError(
                f"ML API at {self._predict_url} is unavailable after {self._max_attempts} attempts: "
                f"{_describe(exc)}"
            ) from exc
        try:
            return PredictResponse.model_validate_json(answer)
        except ValidationError as exc:
            raise TransientError(
                f"ML API at {self._predict_url} answered a body that breaks the contract: "
                f"{exc.error_count()} errors, first: {exc.errors(include_input=False)[0]['msg']}"
            ) from None

    def _post_once(self, body: bytes) -> bytes:
        """POST one batch; returns the body of the API's answer."""
        # httpx's timeout bounds each read, not the whole answer: one trickling in a byte at a time (an
        # overloaded server or proxy) held the job until the task's execution timeout.
        deadline = time.monotonic() + self._timeout_seconds
        with self._http.stream(
            "POST", self._predict_url, content=body, headers={"Content-Type": "application/json"}
        ) as response:
            answer = _read_before(response, deadline)
        if response.status_code in RETRYABLE_STATUS_CODES or response.is_server_error:
            raise RetryableResponseError(response.status_code, _retry_after_seconds(response))
        if response.is_redirect:
            # Not followed: a POST with the key is not resent to wherever a server points (http -> https
            # means the URL is wrong). Its empty body is no "broken contract" to retry: the URL must change.
            raise ConfigError(
                f"ML API at {self._predict_url} answered a redirect (HTTP {response.status_code}) to "
                f"{_without_query(response.headers['Location'])}; retrying cannot help: set BATCH_ML_API_URL "
                "(host of ml_api_default) to the API's own URL"
            )
        if response.is_error:
            # The answer goes to the log only: a validation error echoes the request (a 422 from FastAPI
            # quotes the transaction, account id and amount included), and the failure line below is quoted
            # by the task's exception, hence by every alert channel.
            log.error(
                "ML API answered HTTP %d: %s",
                response.status_code,
                self._redacted(answer.decode(errors="replace"))[:MAX_ERROR_BODY_CHARS],
            )
            raise ConfigError(
                f"ML API at {self._predict_url} refused the request with HTTP {response.status_code} (its "
                "answer is in the log above); retrying cannot help: check BATCH_ML_API_URL and "
                "BATCH_ML_API_KEY"
            )
        return answer

    def _wait_before_retry(self, state: RetryCallState) -> float:
        backoff = self._backoff(state)
        error = state.outcome.exception() if state.outcome else None
        retry_after = error.retry_after_seconds if isinstance(error, RetryableResponseError) else None
        return max(backoff, min(retry_after or 0.0, MAX_RETRY_AFTER_SECONDS))

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "predict: attempt %d/%d failed (%s); retrying in %.1f s",
            state.attempt_number,
            self._max_attempts,
            _describe(error),
            wait,
        )

    def _redacted(self, text: str) -> str:
        # A misbehaving server might echo the request headers back; the key must not reach the logs that way.
        return text.replace(self._api_key.get_secret_value(), "***") if self._api_key else text


def _features(transaction: Transaction) -> TransactionFeatures:
    return TransactionFeatures(
        transaction_id=transaction.transaction_id,
        account_id=transaction.account_id,
        merchant_id=transaction.merchant_id,
        amount=transaction.amount,
        currency=transaction.currency,
        timestamp=transaction.occurred_at,
        country=transaction.country,
    )


def _read_before(response: httpx.Response, deadline: float) -> bytes:
    """The answer's body, or a ReadTimeout (retried as any timeout) once `deadline` has passed."""
    chunks = []
    for chunk in response.iter_bytes():
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout("the answer did not arrive within the timeout", request=response.request)
        chunks.append(chunk)
    return b"".join(chunks)


def _without_query(url: str) -> str:
    """A URL to quote in an error: no user info, query or fragment, where a token could be."""
    parts = urlsplit(url)
    host_and_port = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host_and_port, parts.path, "", ""))


def _retry_after_seconds(response: httpx.Response) -> float | None:
    # Only the delta-seconds form; an HTTP date is rare from APIs and the backoff covers it.
    try:
        return max(0.0, float(response.headers["Retry-After"]))
    except (KeyError, ValueError):
        return None


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "no error"
    if isinstance(error, RetryableResponseError):
        return str(error)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
