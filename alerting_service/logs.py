"""The service's log lines: the standard prefix and message, then each `extra={...}` field as key=value.

The dispatcher and the notifiers pass what an operator needs (delivery id, receiver, reason, error) as
`extra` fields, which the standard format would drop: a "delivery failed" line without its receiver and
reason cannot be acted on. The values are the ones the API shows (redacted URLs, no secrets).
"""

from __future__ import annotations

import json
import logging

# What every LogRecord carries: anything else on a record came from `extra`.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
LINE_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class ExtrasFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        # Before the traceback, which format() appends after this.
        fields = " ".join(f"{name}={_value(value)}" for name, value in extra_fields(record).items())
        line = super().formatMessage(record)
        return f"{line} {fields}" if fields else line


def extra_fields(record: logging.LogRecord) -> dict[str, object]:
    return {
        name: value
        for name, value in vars(record).items()
        if name not in _STANDARD_ATTRIBUTES and not name.startswith("_")
    }


def _value(value: object) -> str:
    """logfmt: bare when it is one word, else a JSON string (quoted, escaped)."""
    text = value if isinstance(value, str) else str(value)
    if text and not any(character.isspace() or character in '"=\\' for character in text):
        return text
    return json.dumps(text, ensure_ascii=False)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(ExtrasFormatter(LINE_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
