"""classify_http_status: how a webhook reply is judged (Alertmanager's Retrier.Check plus Svix's rules)."""

from datetime import UTC, datetime

import pytest

from alerting_service.notify.base import Reason, classify_http_status, parse_retry_after

NOW = datetime(2026, 1, 14, 2, 0, tzinfo=UTC)


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_success(status: int) -> None:
    assert classify_http_status(status, {}, NOW) is None


@pytest.mark.parametrize(
    ("status", "reason", "retryable"),
    [
        (301, Reason.REDIRECT, False),
        (302, Reason.REDIRECT, False),
        (307, Reason.REDIRECT, False),
        (400, Reason.CLIENT_ERROR, False),
        (401, Reason.AUTH, False),
        (403, Reason.AUTH, False),
        (404, Reason.CLIENT_ERROR, False),
        (408, Reason.TIMEOUT, True),
        (410, Reason.DESTINATION_DISABLED, False),
        (413, Reason.CLIENT_ERROR, False),
        (422, Reason.CLIENT_ERROR, False),
        (429, Reason.RATE_LIMITED, True),
        (500, Reason.SERVER_ERROR, True),
        (502, Reason.SERVER_ERROR, True),
        (503, Reason.SERVER_ERROR, True),
        (504, Reason.SERVER_ERROR, True),
    ],
)
def test_failure_status_maps_to_reason_and_retryability(status: int, reason: Reason, retryable: bool) -> None:
    error = classify_http_status(status, {}, NOW)
    assert error is not None
    assert (error.reason, error.retryable) == (reason, retryable)


def test_only_410_disables_the_receiver() -> None:
    disabling = [
        s for s in range(300, 600) if (e := classify_http_status(s, {}, NOW)) and e.disables_receiver
    ]
    assert disabling == [410]


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        ("0", 0.0),
        ("Wed, 14 Jan 2026 02:02:00 GMT", 120.0),
        ("Wed, 14 Jan 2026 01:00:00 GMT", 0.0),
    ],
)
def test_retry_after_is_honoured_on_429_and_503(status: int, header: str, seconds: float) -> None:
    error = classify_http_status(status, {"retry-after": header}, NOW)
    assert error is not None
    assert error.retry_after == seconds


@pytest.mark.parametrize("status", [500, 502, 504])
def test_retry_after_is_ignored_on_other_statuses(status: int) -> None:
    error = classify_http_status(status, {"retry-after": "30"}, NOW)
    assert error is not None
    assert error.retry_after is None


@pytest.mark.parametrize("header", [None, "", "soon", "-5", "1.5e3", "²", "٣"])
def test_an_absent_or_invalid_retry_after_is_none(header: str | None) -> None:
    assert parse_retry_after(header, NOW) is None
