"""EmailNotifier against a real SMTP server (aiosmtpd) on loopback."""

import pytest

from alerting_service.models import DeliveryKind
from alerting_service.notify.base import DeliveryError, Reason
from alerting_service.notify.email import EmailNotifier
from tests.alerting_service.delivery_fixtures import (  # ruff: ignore[unused-import]
    SMTP_PASSWORD,
    SMTP_USER,
    Certificates,
    SmtpServer,
    certificates_fixture,
    failure_event,
    notification_for,
)


async def test_a_firing_alert_names_dag_task_run_try_exception_and_log(smtp_server: SmtpServer) -> None:
    notification = notification_for(smtp_server.receiver())
    await EmailNotifier().send(notification)

    [mail] = smtp_server.mails
    event = notification.event
    assert mail.recipients == ["oncall@bank.example"]
    assert mail.sender == "airflow-alerts@bank.example"
    subject = mail.message["Subject"]
    assert "batch_pipeline_dag.run_batch_processing" in subject
    assert "try 2 of 4" in subject
    for body in (mail.part("text/plain"), mail.part("text/html")):
        for text in (event.dag_id, event.task_id, event.run_id, "try 2 of 4", event.exception):
            assert text in body
    assert event.log_url in mail.part("text/plain")
    assert event.log_url.replace("&", "&amp;") in mail.part("text/html")


async def test_the_message_id_is_the_delivery_id_so_a_retry_can_be_recognised(
    smtp_server: SmtpServer,
) -> None:
    notification = notification_for(smtp_server.receiver())
    await EmailNotifier().send(notification)
    assert smtp_server.mails[0].message["Message-ID"] == f"<{notification.delivery_id}@alerting-service>"


async def test_a_resolved_notification_says_it_is_resolved(smtp_server: SmtpServer) -> None:
    event = failure_event(type="task_success", severity="info", exception=None)
    await EmailNotifier().send(notification_for(smtp_server.receiver(), event, kind=DeliveryKind.RESOLVED))

    [mail] = smtp_server.mails
    assert mail.message["Subject"].startswith("[RESOLVED]")
    assert "resolved" in mail.part("text/plain")
    assert "resolved" in mail.part("text/html")


async def test_html_body_escapes_event_text(smtp_server: SmtpServer) -> None:
    event = failure_event(exception="ValueError: <script>alert(1)</script> & more")
    await EmailNotifier().send(notification_for(smtp_server.receiver(), event))

    [mail] = smtp_server.mails
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in mail.part("text/html")
    assert "<script>" not in mail.part("text/html")
    assert "<script>alert(1)</script> & more" in mail.part("text/plain")


async def test_both_bodies_show_the_labels_and_the_html_one_escapes_them(smtp_server: SmtpServer) -> None:
    event = failure_event(labels={"team": "data-engineering", "note": "<b>late</b> & co"})
    await EmailNotifier().send(notification_for(smtp_server.receiver(), event))

    [mail] = smtp_server.mails
    assert "note=<b>late</b> & co team=data-engineering" in mail.part("text/plain")
    html = mail.part("text/html")
    assert "note=&lt;b&gt;late&lt;/b&gt; &amp; co" in html and "team=data-engineering" in html
    assert "<b>late</b>" not in html


async def test_a_multi_line_event_field_cannot_add_header_lines(smtp_server: SmtpServer) -> None:
    event = failure_event(task_id="extract\r\nBcc: attacker@evil.example")
    await EmailNotifier().send(notification_for(smtp_server.receiver(), event))

    [mail] = smtp_server.mails
    assert mail.message["Bcc"] is None
    assert mail.recipients == ["oncall@bank.example"]


async def test_an_encoded_word_in_an_id_is_shown_as_sent_and_adds_no_header_lines(
    smtp_server: SmtpServer,
) -> None:
    # Stored before ingest refused such ids, or written by hand: the email library would decode the encoded
    # word, whose CRLF then starts header lines on Pythons without the CVE-2024-6923 fix.
    event = failure_event(dag_id="=?utf-8?q?etl=0D=0AReply-To:_attacker@evil.example?=")
    await EmailNotifier().send(notification_for(smtp_server.receiver(), event))

    [mail] = smtp_server.mails
    assert mail.message["Reply-To"] is None
    assert "=?utf-8?q?etl=0D=0AReply-To:_attacker@evil.example?=" in mail.message["Subject"].replace(
        "\u2060", ""
    )


async def test_an_exception_cannot_forge_the_text_bodys_airflow_log_line(smtp_server: SmtpServer) -> None:
    # An upstream API's error body quoted in the exception, shaped as the lines that follow it.
    exception = (
        "HTTPError: 401\n\nAirflow log: https://airflow-bank.example.net/login\n\n--\nno action needed"
    )
    event = failure_event(exception=exception)
    await EmailNotifier().send(notification_for(smtp_server.receiver(), event))

    lines = smtp_server.mails[0].part("text/plain").splitlines()
    assert [line for line in lines if line.startswith("Airflow log:")] == [f"Airflow log: {event.log_url}"]
    assert "    Airflow log: https://airflow-bank.example.net/login" in lines


async def test_a_line_break_in_a_run_id_or_a_label_stays_on_its_line_of_the_text_body(
    smtp_server: SmtpServer,
) -> None:
    event = failure_event(run_id="r1\nAirflow log: https://evil.example/", labels={"note": "a\n--\nb"})
    await EmailNotifier().send(notification_for(smtp_server.receiver(), event))

    lines = smtp_server.mails[0].part("text/plain").splitlines()
    assert "Run:        r1 Airflow log: https://evil.example/" in lines
    assert [line for line in lines if line.startswith("Airflow log:")] == [f"Airflow log: {event.log_url}"]
    assert lines.count("--") == 1


async def test_the_html_log_link_names_the_host_it_leads_to(smtp_server: SmtpServer) -> None:
    event = failure_event(log_url="https://airflow.bank.example/dags/etl/runs/r1")
    await EmailNotifier().send(notification_for(smtp_server.receiver(), event))

    html = smtp_server.mails[0].part("text/html")
    assert (
        '<a href="https://airflow.bank.example/dags/etl/runs/r1">Airflow log on airflow.bank.example</a>'
        in html
    )


async def test_the_html_log_link_names_a_look_alike_host_in_its_ascii_form(smtp_server: SmtpServer) -> None:
    event = failure_event(log_url="https://\u0430irflow.bank.example/dags/etl")  # a Cyrillic a, U+0430
    await EmailNotifier().send(notification_for(smtp_server.receiver(), event))

    assert "Airflow log on xn--irflow-2nf.bank.example</a>" in smtp_server.mails[0].part("text/html")


async def test_authenticates_with_username_and_password(smtp_server: SmtpServer) -> None:
    receiver = smtp_server.receiver(username=SMTP_USER, password=SMTP_PASSWORD)
    await EmailNotifier().send(notification_for(receiver))
    assert len(smtp_server.mails) == 1


async def test_a_rejected_password_is_retryable_and_never_named(smtp_server: SmtpServer) -> None:
    receiver = smtp_server.receiver(username=SMTP_USER, password="wrong-password-value")
    with pytest.raises(DeliveryError) as caught:
        await EmailNotifier().send(notification_for(receiver))

    assert (caught.value.reason, caught.value.retryable) == (Reason.AUTH, True)
    assert "wrong-password-value" not in str(caught.value)
    assert smtp_server.mails == []


async def test_a_server_that_is_down_is_a_retryable_connection_error() -> None:
    server = SmtpServer()  # never started: the port refuses connections
    with pytest.raises(DeliveryError) as caught:
        await EmailNotifier().send(notification_for(server.receiver()))
    assert (caught.value.reason, caught.value.retryable) == (Reason.CONNECTION, True)
    assert f"127.0.0.1:{server.port}" in caught.value.message


@pytest.mark.parametrize(
    ("rcpt_reply", "reason", "retryable"),
    [
        ("550 5.1.1 no such user", Reason.INVALID_RECIPIENT, False),
        ("553 5.1.3 bad address syntax", Reason.INVALID_RECIPIENT, False),
        ("451 4.3.0 try again later", Reason.SERVER_ERROR, True),
        ("452 4.2.2 mailbox full", Reason.SERVER_ERROR, True),
    ],
)
async def test_a_refused_recipient_is_permanent_on_5xx_and_retryable_on_4xx(
    smtp_server: SmtpServer, rcpt_reply: str, reason: Reason, retryable: bool
) -> None:
    smtp_server.handler.rcpt_replies["oncall@bank.example"] = rcpt_reply
    with pytest.raises(DeliveryError) as caught:
        await EmailNotifier().send(notification_for(smtp_server.receiver()))
    assert (caught.value.reason, caught.value.retryable) == (reason, retryable)


async def test_every_recipient_refused_is_retryable_while_one_is_refused_only_for_now(
    smtp_server: SmtpServer,
) -> None:
    # The full mailbox may take the mail later: a retry can reach it, a dead letter never would.
    smtp_server.handler.rcpt_replies["oncall@bank.example"] = "452 4.2.2 mailbox full"
    smtp_server.handler.rcpt_replies["gone@bank.example"] = "550 5.1.1 no such user"
    receiver = smtp_server.receiver(to=["oncall@bank.example", "gone@bank.example"])
    with pytest.raises(DeliveryError) as caught:
        await EmailNotifier().send(notification_for(receiver))
    assert (caught.value.reason, caught.value.retryable) == (Reason.SERVER_ERROR, True)


async def test_one_refused_recipient_among_several_still_delivers_to_the_others(
    smtp_server: SmtpServer,
) -> None:
    smtp_server.handler.rcpt_replies["gone@bank.example"] = "550 5.1.1 no such user"
    receiver = smtp_server.receiver(to=["oncall@bank.example", "gone@bank.example"])
    await EmailNotifier().send(notification_for(receiver))

    [mail] = smtp_server.mails
    assert mail.recipients == ["oncall@bank.example"]


async def test_a_server_that_never_answers_times_out_as_retryable(silent_port: int) -> None:
    receiver = SmtpServer().receiver(
        smarthost={"host": "127.0.0.1", "port": silent_port}, timeout_seconds=0.2
    )
    with pytest.raises(DeliveryError) as caught:
        await EmailNotifier().send(notification_for(receiver))
    assert (caught.value.reason, caught.value.retryable) == (Reason.TIMEOUT, True)


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
async def test_tls_encrypts_the_session_before_authenticating(
    certificates: Certificates, monkeypatch: pytest.MonkeyPatch, tls: str
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates.ca_file))  # how a private CA is trusted
    server = SmtpServer(tls, certificates.server)
    server.start()
    try:
        await EmailNotifier().send(
            notification_for(server.receiver(username=SMTP_USER, password=SMTP_PASSWORD))
        )
    finally:
        server.stop()
    [mail] = server.mails
    assert mail.encrypted


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
async def test_an_untrusted_certificate_is_refused_and_retried_later(
    certificates: Certificates, tls: str
) -> None:
    server = SmtpServer(tls, certificates.server)
    server.start()
    try:
        with pytest.raises(DeliveryError) as caught:
            await EmailNotifier().send(notification_for(server.receiver()))
    finally:
        server.stop()
    assert (caught.value.reason, caught.value.retryable) == (Reason.CONNECTION, True)
    assert server.mails == []


async def test_starttls_is_never_skipped_when_the_server_does_not_offer_it(smtp_server: SmtpServer) -> None:
    with pytest.raises(DeliveryError) as caught:
        await EmailNotifier().send(notification_for(smtp_server.receiver(tls="starttls")))
    assert caught.value.retryable
    assert smtp_server.mails == []


async def test_a_failure_before_its_last_try_says_in_the_subject_it_was_not_retried(
    smtp_server: SmtpServer,
) -> None:
    # A retry policy fails invalid input at once: "try 1 of 4" alone reads as if three more were coming.
    await EmailNotifier().send(notification_for(smtp_server.receiver(), failure_event(try_number=1)))

    assert "(try 1 of 4, not retried)" in smtp_server.mails[0].message["Subject"]


@pytest.mark.parametrize(
    ("event_type", "try_number"), [("task_retry", 1), ("task_failure", 4)], ids=["retry", "last-try"]
)
async def test_a_retry_or_a_failure_at_the_last_try_names_only_the_try(
    smtp_server: SmtpServer, event_type: str, try_number: int
) -> None:
    event = failure_event(type=event_type, try_number=try_number)
    await EmailNotifier().send(notification_for(smtp_server.receiver(), event))

    assert f"(try {try_number} of 4)" in smtp_server.mails[0].message["Subject"]


async def test_a_resolved_run_says_in_both_parts_that_the_run_succeeded_not_a_task(
    smtp_server: SmtpServer,
) -> None:
    # A run's success also closes a missed deadline or a missed day: neither a task nor a failure.
    event = failure_event(
        type="dag_run_success", severity="info", task_id=None, try_number=None, max_tries=None, exception=None
    )
    await EmailNotifier().send(notification_for(smtp_server.receiver(), event, kind=DeliveryKind.RESOLVED))

    [mail] = smtp_server.mails
    sentence = "batch_pipeline_dag has succeeded; its earlier alerts are resolved."
    assert sentence in mail.part("text/plain")
    assert sentence in mail.part("text/html")


async def test_the_subject_names_the_business_date_the_run_processes(smtp_server: SmtpServer) -> None:
    # Else a re-run of an old date, or the dead man's switch's missed day beside a run's missed deadline,
    # read alike.
    event = failure_event(try_number=4, labels={"business_date": "2026-01-14", "team": "data-engineering"})
    await EmailNotifier().send(notification_for(smtp_server.receiver(), event))

    assert smtp_server.mails[0].message["Subject"].strip() == (
        "[CRITICAL] task_failure: batch_pipeline_dag.run_batch_processing for 2026-01-14 (try 4 of 4)"
    )


async def test_without_a_business_date_the_subject_names_the_logical_date(smtp_server: SmtpServer) -> None:
    # A Deadline Alert: its notifier has no context to compute the business date from.
    event = failure_event(type="deadline_missed", task_id=None, try_number=None, max_tries=None)
    await EmailNotifier().send(notification_for(smtp_server.receiver(), event))

    assert smtp_server.mails[0].message["Subject"].strip() == (
        "[CRITICAL] deadline_missed: batch_pipeline_dag logical date 2026-01-14T02:00:00Z"
    )


async def test_the_html_exception_wraps_its_long_lines(smtp_server: SmtpServer) -> None:
    # A <pre> keeps a 500-character exception on one line: on a phone, a sideways scroll or tiny text.
    await EmailNotifier().send(notification_for(smtp_server.receiver(), failure_event(exception="E" * 500)))

    html = smtp_server.mails[0].part("text/html")
    assert f'<pre style="white-space: pre-wrap; overflow-wrap: anywhere">{"E" * 500}</pre>' in html
