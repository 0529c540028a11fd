"""WebhookNotifier against a real HTTP receiver on loopback."""

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator

import pytest

from alerting_service.models import DeliveryKind
from alerting_service.notify.base import AlertEvent, DeliveryError, Notification, Reason
from alerting_service.notify.webhook import WebhookNotifier
from tests.alerting_service.delivery_fixtures import (
    HttpReceiver,
    Receipt,
    Reply,
    failure_event,
    free_port,
    new_whsec,
    notification_for,
)

SECRET_PATH = "/hooks/T000/B000/tok3n-in-the-path"


@pytest.fixture
async def notifier() -> AsyncIterator[WebhookNotifier]:
    notifier = WebhookNotifier()
    yield notifier
    await notifier.aclose()


def independent_signature(secret: str, receipt: Receipt) -> str:
    """Standard Webhooks v1 computed by hand (not with the library the notifier uses)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = (
        f"{receipt.headers['webhook-id']}.{receipt.headers['webhook-timestamp']}.".encode() + receipt.body
    )
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


async def send_again_after_a_500(
    http_receiver: HttpReceiver, notifier: WebhookNotifier
) -> tuple[Notification, list[Receipt]]:
    """One notification sent twice: the first try answered 500, the retry 200; returns both receipts."""
    http_receiver.script("/hook", Reply(500))
    notification = notification_for(http_receiver.receiver("/hook"))
    with pytest.raises(DeliveryError):
        await notifier.send(notification)
    await notifier.send(notification)
    return notification, http_receiver.received("/hook")


async def test_a_standard_webhook_carries_the_event_as_json(
    http_receiver: HttpReceiver, notifier: WebhookNotifier
) -> None:
    notification = notification_for(http_receiver.receiver("/hook"))
    await notifier.send(notification)

    [receipt] = http_receiver.received("/hook")
    assert receipt.headers["content-type"] == "application/json"
    payload = json.loads(receipt.body)
    assert payload["type"] == "alert.firing"
    assert payload["data"]["delivery_id"] == notification.delivery_id
    assert payload["data"]["event"] == notification.event.as_json()


async def test_the_signature_verifies_with_an_independent_hmac(
    http_receiver: HttpReceiver, notifier: WebhookNotifier
) -> None:
    secret = new_whsec()
    notification = notification_for(http_receiver.receiver("/hook", secrets=[secret]))
    await notifier.send(notification)

    [receipt] = http_receiver.received("/hook")
    assert receipt.headers["webhook-id"] == notification.webhook_id
    assert abs(int(receipt.headers["webhook-timestamp"]) - time.time()) < 60
    assert receipt.headers["webhook-signature"] == independent_signature(secret, receipt)


async def test_several_secrets_give_one_signature_each_for_rotation(
    http_receiver: HttpReceiver, notifier: WebhookNotifier
) -> None:
    old, new = new_whsec(), new_whsec()
    await notifier.send(notification_for(http_receiver.receiver("/hook", secrets=[old, new])))

    [receipt] = http_receiver.received("/hook")
    assert receipt.headers["webhook-signature"].split(" ") == [
        independent_signature(old, receipt),
        independent_signature(new, receipt),
    ]


async def test_the_webhook_id_is_the_same_on_every_attempt(
    http_receiver: HttpReceiver, notifier: WebhookNotifier
) -> None:
    notification, (first, second) = await send_again_after_a_500(http_receiver, notifier)

    assert first.headers["webhook-id"] == second.headers["webhook-id"] == notification.webhook_id


async def test_a_slack_webhook_sends_text_and_blocks_with_mrkdwn_escaped(
    http_receiver: HttpReceiver, notifier: WebhookNotifier
) -> None:
    event = failure_event(exception="KeyError: <missing> & gone")
    await notifier.send(notification_for(http_receiver.receiver("/slack", format="slack", secrets=[]), event))

    [receipt] = http_receiver.received("/slack")
    payload = json.loads(receipt.body)
    assert "batch_pipeline_dag.run_batch_processing" in payload["text"]
    assert "try 2 of 4" in payload["text"]
    assert "KeyError: &lt;missing&gt; &amp; gone" in payload["text"]
    assert payload["blocks"][0]["text"] == {"type": "mrkdwn", "text": payload["text"]}
    assert "webhook-signature" not in receipt.headers


async def test_a_pipe_in_the_log_url_cannot_change_the_slack_links_target_or_label(
    http_receiver: HttpReceiver, notifier: WebhookNotifier
) -> None:
    # Slack splits <url|label> at the first '|': the link went to https://airflow.bank.example/log, labelled
    # with the rest of the URL.
    event = failure_event(log_url="https://airflow.bank.example/log|Reset your password here")
    await notifier.send(notification_for(http_receiver.receiver("/slack", format="slack", secrets=[]), event))

    text = json.loads(http_receiver.received("/slack")[0].body)["text"]
    assert text.endswith(
        "<https://airflow.bank.example/log%7CReset your password here|Airflow log on airflow.bank.example>"
    )


async def slack_text_of(event: AlertEvent, http_receiver: HttpReceiver, notifier: WebhookNotifier) -> str:
    """The mrkdwn text of the Slack message the notifier sends for `event`."""
    receiver = http_receiver.receiver("/slack", format="slack", secrets=[])
    await notifier.send(notification_for(receiver, event))
    return json.loads(http_receiver.received("/slack")[0].body)["text"]


async def test_backticks_in_the_exception_cannot_end_the_slack_code_block(
    http_receiver: HttpReceiver, notifier: WebhookNotifier
) -> None:
    # An upstream error body quoted in the exception: after its ``` the rest would render as mrkdwn.
    exception = "HTTPError: 502: ```\n:white_check_mark: *RESOLVED*: no action needed\n`"

    text = await slack_text_of(failure_event(exception=exception), http_receiver, notifier)

    assert text.count("``") == 2  # the block's own ``` and ```, nothing in between
    assert exception in text.replace("\u200b", "")


async def test_a_backtick_or_line_break_in_a_run_id_cannot_end_its_slack_code_span(
    http_receiver: HttpReceiver, notifier: WebhookNotifier
) -> None:
    run_id = "r1`\n:white_check_mark: *RESOLVED* `x"

    text = await slack_text_of(failure_event(run_id=run_id), http_receiver, notifier)

    assert "Run: `r1\u02cb :white_check_mark: *RESOLVED* \u02cbx`" in text.splitlines()[1]


async def test_a_slack_message_cuts_a_long_exception_to_keep_its_section_within_slacks_limit(
    http_receiver: HttpReceiver, notifier: WebhookNotifier
) -> None:
    exception = ("ValueError: <boom> & more\n" * 1300)[:32768]  # the most the API takes, escaping adds more
    receiver = http_receiver.receiver("/slack", format="slack", secrets=[])
    await notifier.send(notification_for(receiver, failure_event(exception=exception)))

    payload = json.loads(http_receiver.received("/slack")[0].body)
    assert [len(block["text"]["text"]) <= 3000 for block in payload["blocks"]] == [True]
    assert "… (truncated: see the Airflow log)```" in payload["text"]
    assert payload["text"].endswith("|Airflow log on localhost>")


async def test_a_slack_message_whose_ids_and_log_url_alone_are_too_long_is_cut_to_slacks_limit(
    http_receiver: HttpReceiver, notifier: WebhookNotifier
) -> None:
    # Each of & < > becomes an entity of 4-5 characters: these fields alone pass 3,000 characters escaped.
    event = failure_event(
        run_id="&<>" * 83, task_id="t&" * 125, log_url="https://airflow.bank.example/log?" + "a=1&" * 500
    )
    receiver = http_receiver.receiver("/slack", format="slack", secrets=[])
    await notifier.send(notification_for(receiver, event))

    payload = json.loads(http_receiver.received("/slack")[0].body)
    assert 2900 < len(payload["blocks"][0]["text"]["text"]) <= 3000
    assert payload["text"].endswith("… (truncated: see the Airflow log)")


async def test_a_resolved_slack_message_says_resolved(
    http_receiver: HttpReceiver, notifier: WebhookNotifier
) -> None:
    receiver = http_receiver.receiver("/slack", format="slack", secrets=[])
    await notifier.send(notification_for(receiver, failure_event(type="task_success"), DeliveryKind.RESOLVED))
    assert "RESOLVED" in json.loads(http_receiver.received("/slack")[0].body)["text"]


@pytest.mark.parametrize(
    ("reply", "reason", "retryable", "retry_after"),
    [
        (Reply(500), Reason.SERVER_ERROR, True, None),
        (Reply(502), Reason.SERVER_ERROR, True, None),
        (Reply(503, {"Retry-After": "7"}), Reason.SERVER_ERROR, True, 7.0),
        (Reply(429, {"Retry-After": "3"}), Reason.RATE_LIMITED, True, 3.0),
        (Reply(408), Reason.TIMEOUT, True, None),
        (Reply(400), Reason.CLIENT_ERROR, False, None),
        (Reply(401), Reason.AUTH, False, None),
        (Reply(410), Reason.DESTINATION_DISABLED, False, None),
    ],
)
async def test_a_failure_reply_becomes_a_delivery_error(
    http_receiver: HttpReceiver,
    notifier: WebhookNotifier,
    reply: Reply,
    reason: Reason,
    retryable: bool,
    retry_after: float | None,
) -> None:
    http_receiver.script("/hook", reply)
    with pytest.raises(DeliveryError) as caught:
        await notifier.send(notification_for(http_receiver.receiver("/hook")))
    assert (caught.value.reason, caught.value.retryable, caught.value.retry_after) == (
        reason,
        retryable,
        retry_after,
    )


async def test_a_redirect_is_a_failure_and_never_followed(
    http_receiver: HttpReceiver, notifier: WebhookNotifier
) -> None:
    http_receiver.script("/hook", Reply(302, {"Location": http_receiver.url("/elsewhere")}))
    with pytest.raises(DeliveryError) as caught:
        await notifier.send(notification_for(http_receiver.receiver("/hook")))
    assert caught.value.reason is Reason.REDIRECT
    assert http_receiver.received("/elsewhere") == []


async def test_a_receiver_slower_than_its_timeout_is_a_retryable_timeout(
    http_receiver: HttpReceiver, notifier: WebhookNotifier
) -> None:
    http_receiver.script("/hook", Reply(200, delay=1.0))
    with pytest.raises(DeliveryError) as caught:
        await notifier.send(notification_for(http_receiver.receiver("/hook", timeout_seconds=0.2)))
    assert (caught.value.reason, caught.value.retryable) == (Reason.TIMEOUT, True)


async def test_a_refused_connection_is_retryable(notifier: WebhookNotifier) -> None:
    receiver = HttpReceiver().receiver("/hook", url=f"http://127.0.0.1:{free_port()}{SECRET_PATH}")
    with pytest.raises(DeliveryError) as caught:
        await notifier.send(notification_for(receiver))
    assert (caught.value.reason, caught.value.retryable) == (Reason.CONNECTION, True)


async def test_a_loopback_destination_is_refused_unless_allowed(
    http_receiver: HttpReceiver, notifier: WebhookNotifier
) -> None:
    receiver = http_receiver.receiver(SECRET_PATH, allow_private_network=False)
    with pytest.raises(DeliveryError) as caught:
        await notifier.send(notification_for(receiver))
    assert (caught.value.reason, caught.value.retryable) == (Reason.FORBIDDEN_DESTINATION, False)
    assert http_receiver.receipts == []


@pytest.mark.parametrize(
    "host",
    [
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "[::1]",
        "[fe80::1]",
        "localhost",
        "[64:ff9b::a00:1]",  # 10.0.0.1 through a NAT64 translator
        "[2002:a00:1::1]",  # 10.0.0.1 in 6to4
    ],
)
async def test_private_and_link_local_destinations_are_refused(notifier: WebhookNotifier, host: str) -> None:
    receiver = HttpReceiver().receiver("/hook", url=f"http://{host}/hook", allow_private_network=False)
    with pytest.raises(DeliveryError) as caught:
        await notifier.send(notification_for(receiver))
    assert caught.value.reason is Reason.FORBIDDEN_DESTINATION


@pytest.mark.parametrize(
    "reply", [Reply(500), Reply(410), Reply(302, {"Location": "/x"}), Reply(200, delay=1.0)]
)
async def test_errors_name_scheme_and_host_but_never_the_url_token(
    http_receiver: HttpReceiver, notifier: WebhookNotifier, reply: Reply
) -> None:
    http_receiver.script(SECRET_PATH, reply)
    with pytest.raises(DeliveryError) as caught:
        await notifier.send(notification_for(http_receiver.receiver(SECRET_PATH, timeout_seconds=0.2)))
    assert "http://127.0.0.1" in str(caught.value)
    assert "tok3n" not in str(caught.value)
    assert "tok3n" not in repr(caught.value)


async def test_a_retry_carries_the_same_body_as_the_first_try(
    http_receiver: HttpReceiver, notifier: WebhookNotifier
) -> None:
    notification, (first, second) = await send_again_after_a_500(http_receiver, notifier)

    assert first.body == second.body
    assert json.loads(first.body)["timestamp"] == notification.event.as_json()["occurred_at"]


async def test_consecutive_webhooks_to_one_receiver_reuse_its_connection(
    http_receiver: HttpReceiver, notifier: WebhookNotifier
) -> None:
    http_receiver.answer_by_default(
        "/hook", Reply(200, {"content-type": "application/json"}, body=b'{"ok": true}')
    )
    receiver = http_receiver.receiver("/hook")

    for _ in range(3):
        await notifier.send(notification_for(receiver))

    assert len({receipt.client_port for receipt in http_receiver.received("/hook")}) == 1


@pytest.fixture
def proxied_through(http_receiver: HttpReceiver, monkeypatch: pytest.MonkeyPatch) -> HttpReceiver:
    """HTTP_PROXY names the loopback receiver, which then gets each proxied request as an absolute URL.

    Set before the notifier's first send to a host, when it reads the environment."""
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", http_receiver.url(""))
    return http_receiver


async def test_a_webhook_goes_through_the_proxy_the_environment_names(
    proxied_through: HttpReceiver, notifier: WebhookNotifier
) -> None:
    hook = "http://alerts.example.invalid/hook"
    receiver = proxied_through.receiver("/unused", url=hook)

    await notifier.send(notification_for(receiver))

    [receipt] = proxied_through.receipts
    assert receipt.path == hook


async def test_a_host_no_proxy_names_is_called_directly_even_with_user_info_in_its_url(
    proxied_through: HttpReceiver, notifier: WebhookNotifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    hook = proxied_through.url("/hook").replace("http://", "http://user:t0ken@")
    receiver = proxied_through.receiver("/unused", url=hook)

    await notifier.send(notification_for(receiver))

    [receipt] = proxied_through.receipts
    assert receipt.path == "/hook"


async def test_a_proxied_webhook_to_a_private_destination_is_refused_before_it_is_sent(
    proxied_through: HttpReceiver, notifier: WebhookNotifier
) -> None:
    receiver = proxied_through.receiver("/unused", url="http://10.1.2.3/hook", allow_private_network=False)

    with pytest.raises(DeliveryError) as caught:
        await notifier.send(notification_for(receiver))

    assert (caught.value.reason, caught.value.retryable) == (Reason.FORBIDDEN_DESTINATION, False)
    assert proxied_through.receipts == []


async def test_a_webhook_limited_to_public_addresses_goes_through_a_proxy_on_a_private_address(
    proxied_through: HttpReceiver, notifier: WebhookNotifier
) -> None:
    # The proxy is the operator's own: only the destination must be public (the proxy answers for it here).
    hook = "http://1.1.1.1/hook"
    receiver = proxied_through.receiver("/unused", url=hook, allow_private_network=False)

    await notifier.send(notification_for(receiver))

    [receipt] = proxied_through.receipts
    assert receipt.path == hook


async def test_a_numeric_host_that_is_no_canonical_ipv4_address_fails_for_good(
    notifier: WebhookNotifier,
) -> None:
    receiver = HttpReceiver().receiver("/hook", url="http://2130706433/hook", allow_private_network=False)

    with pytest.raises(DeliveryError) as caught:
        await notifier.send(notification_for(receiver))

    assert (caught.value.reason, caught.value.retryable) == (Reason.CLIENT_ERROR, False)


async def test_the_slack_headline_names_the_business_date_and_the_try(
    http_receiver: HttpReceiver, notifier: WebhookNotifier
) -> None:
    # Slack shows no labels: the business date was nowhere in the message.
    event = failure_event(try_number=4, labels={"business_date": "2026-01-14"})

    text = await slack_text_of(event, http_receiver, notifier)

    assert text.splitlines()[0] == (
        ":rotating_light: *task_failure* (critical) `batch_pipeline_dag.run_batch_processing` for 2026-01-14"
        " (try 4 of 4)"
    )


async def test_a_missed_day_slack_message_names_its_day_and_has_no_empty_lines(
    http_receiver: HttpReceiver, notifier: WebhookNotifier
) -> None:
    # The dead man's switch's event: no run, no task, no log URL.
    exception = "no successful run of batch_pipeline_dag for business_date=2026-01-15 since 2026-01-15T04:00Z"
    event = failure_event(
        type="deadline_missed",
        task_id=None,
        run_id=None,
        try_number=None,
        max_tries=None,
        logical_date=None,
        log_url=None,
        exception=exception,
        labels={"business_date": "2026-01-15", "source": "expectation"},
    )

    text = await slack_text_of(event, http_receiver, notifier)

    assert text == (
        ":rotating_light: *deadline_missed* (critical) `batch_pipeline_dag` for 2026-01-15\n"
        f"```{exception}```"
    )
