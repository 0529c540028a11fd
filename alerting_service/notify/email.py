"""Email notifications over SMTP (aiosmtplib): plain-text and HTML alternatives from the Jinja2 templates.

Retryability is decided here, where the SMTP reply is known (as Alertmanager's email notifier does):
a server that is down, slow or answers 4xx (including authentication, which an operator fixes by rotating a
secret) is retried; a permanent 5xx for the sender, the recipients or the message is not.
"""

from __future__ import annotations

import logging
from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib

from alerting_service.config import EmailReceiver
from alerting_service.notify.base import DeliveryError, Notification, Reason
from alerting_service.notify.templating import render, render_header_line

log = logging.getLogger(__name__)

_MAX_REPLY_CHARS = 200


class EmailNotifier:
    async def send(self, notification: Notification) -> None:
        receiver = notification.receiver
        if not isinstance(receiver, EmailReceiver):
            raise TypeError(f"receiver {receiver.name!r} is not an email receiver")
        message = build_message(notification, receiver)
        try:
            refused, _ = await aiosmtplib.send(message, **_connection_options(receiver))
        except aiosmtplib.SMTPException as exc:
            raise _classify_smtp_error(exc, receiver) from None
        except OSError as exc:  # DNS failures and resets that aiosmtplib does not wrap
            raise DeliveryError(
                Reason.CONNECTION, retryable=True, message=f"{_server(receiver)}: {type(exc).__name__}"
            ) from None
        if refused:
            # Others got the message, so the delivery counts as made; a retry would duplicate it for them.
            log.warning(
                "some recipients were refused",
                extra={"delivery_id": notification.delivery_id, "refused": sorted(refused)},
            )


def build_message(notification: Notification, receiver: EmailReceiver) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = render_header_line("email_subject.txt.j2", notification)
    message["From"] = receiver.email.from_
    message["To"] = ", ".join(receiver.email.to)
    message["Date"] = formatdate(usegmt=True)
    # Stable across retries, so a mail system that sees a retry of an accepted message can drop the copy.
    message["Message-ID"] = f"<{notification.delivery_id}@alerting-service>"
    message["X-Alerting-Event-Id"] = notification.event.id
    message.set_content(render("email_body.txt.j2", notification))
    message.add_alternative(render("email_body.html.j2", notification), subtype="html")
    return message


def _connection_options(receiver: EmailReceiver) -> dict[str, object]:
    config = receiver.email
    password = config.password.get_secret_value() if config.password is not None else None
    return {
        "hostname": config.smarthost.host,
        "port": config.smarthost.port,
        "use_tls": config.tls == "implicit",
        "start_tls": config.tls == "starttls",
        "username": config.username,
        "password": password,
        "timeout": config.timeout_seconds,
    }


def _classify_smtp_error(exc: aiosmtplib.SMTPException, receiver: EmailReceiver) -> DeliveryError:
    server = _server(receiver)
    if isinstance(exc, aiosmtplib.SMTPTimeoutError):
        return DeliveryError(Reason.TIMEOUT, retryable=True, message=f"{server}: timed out")
    if isinstance(exc, aiosmtplib.SMTPConnectError | aiosmtplib.SMTPServerDisconnected):
        return DeliveryError(Reason.CONNECTION, retryable=True, message=f"{server}: {type(exc).__name__}")
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = sorted({refusal.code for refusal in exc.recipients})
        permanent = all(code >= 500 for code in codes)
        reason = Reason.INVALID_RECIPIENT if permanent else Reason.SERVER_ERROR
        return DeliveryError(reason, retryable=not permanent, message=f"{server}: recipients refused {codes}")
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return DeliveryError(Reason.AUTH, retryable=True, message=f"{server}: {_reply(exc)}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        permanent = exc.code >= 500
        reason = Reason.CLIENT_ERROR if permanent else Reason.SERVER_ERROR
        return DeliveryError(reason, retryable=not permanent, message=f"{server}: {_reply(exc)}")
    # STARTTLS or AUTH unsupported by the server: its configuration, not this message, is at fault.
    return DeliveryError(Reason.CONNECTION, retryable=True, message=f"{server}: {type(exc).__name__}")


def _reply(exc: aiosmtplib.SMTPResponseException) -> str:
    return f"{exc.code} {exc.message[:_MAX_REPLY_CHARS]}"


def _server(receiver: EmailReceiver) -> str:
    return f"smtp://{receiver.email.smarthost.host}:{receiver.email.smarthost.port}"
