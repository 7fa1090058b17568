"""Log records as text (the default) or as JSON lines (``--log-format json``).

A JSON record is one object per line: ``ts`` (RFC 3339, UTC), ``level``, ``logger``,
``service`` and ``kind`` (the serving process), ``address`` once it listens, ``msg``;
``netclient``, ``trace_id`` and ``span_id`` when the log call passes them with
``extra=`` (``netclient_extra``); ``exc`` with the traceback of an exception. The one
mechanism for per-event fields is ``extra=``: code that logs about a NetClient passes
``extra=netclient_extra(name)``.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

__all__ = ["EVENT_FIELDS", "LOG_FORMATS", "JsonFormatter", "ServiceIdentity", "identity",
           "log_format", "netclient_extra", "set_log_format"]

LOG_FORMATS = ("text", "json")
#: Per-event fields a log call may carry with ``extra=``, copied when present.
EVENT_FIELDS = ("netclient", "trace_id", "span_id")


class ServiceIdentity:
    """Who this process is, for every record: kind, name, address (set as known)."""

    def __init__(self) -> None:
        self.kind = ""
        self.name = ""
        self.address = ""


identity = ServiceIdentity()
_format = "text"


def set_log_format(fmt: str) -> None:
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r}: expected one of {', '.join(LOG_FORMATS)}")
    global _format
    _format = fmt


def log_format() -> str:
    """This process's log format: what an orchestrator passes to the services it starts."""
    return _format


def netclient_extra(name: str) -> dict[str, str]:
    """``extra=`` for a log call about NetClient ``name``."""
    return {"netclient": name}


def _rfc3339(created: float) -> str:
    when = datetime.fromtimestamp(created, UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (json.dumps escapes newlines)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, str] = {
            "ts": _rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "service": identity.name or identity.kind or "virtwire",
            "kind": identity.kind,
            "msg": record.getMessage(),
        }
        if identity.address:
            out["address"] = identity.address
        for field in EVENT_FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                out[field] = str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False)
