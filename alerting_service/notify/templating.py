"""Renders the notification texts from the Jinja2 templates shipped in `notify/templates/`.

One environment, built once: HTML templates are autoescaped (event fields come from Airflow, including
exception text), undefined names fail loudly instead of rendering blanks.
"""

from __future__ import annotations

import re
from functools import cache

import jinja2

from alerting_service.models import DeliveryKind
from alerting_service.notify.base import Notification, iso_utc

_SLACK_CONTROL = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def render(template_name: str, notification: Notification) -> str:
    return (
        _environment()
        .get_template(template_name)
        .render(
            event=notification.event,
            resolved=notification.kind == DeliveryKind.RESOLVED,
            delivery_id=notification.delivery_id,
        )
    )


def render_header_line(template_name: str, notification: Notification) -> str:
    """A single line (e.g. a subject): event text must not be able to inject header lines."""
    return re.sub(r"\s+", " ", render(template_name, notification)).strip()


def _slack_escape(value: object) -> str:
    """Slack mrkdwn treats only &, < and > as control characters."""
    return str(value).translate(_SLACK_CONTROL)


@cache
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("alerting_service.notify", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
    )
    environment.filters["iso"] = iso_utc
    environment.filters["slack"] = _slack_escape
    return environment
