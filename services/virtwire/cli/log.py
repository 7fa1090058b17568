"""Logging of every `virtwire` command; a serving process names itself in each record.

``--log-format text`` (the default) is one line per record as before; ``json`` is
virtwire.logfmt's JSON lines.
"""

from __future__ import annotations

import logging

from virtwire.logfmt import JsonFormatter, identity, set_log_format


class _ServiceLabel(logging.Filter):
    """Puts "hub@127.0.0.1:5000" into every log record of a serving process."""

    label = "virtwire"

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.label
        return True


_label = _ServiceLabel()


def setup_logging(verbose: bool, fmt: str = "text") -> None:
    set_log_format(fmt)
    handler = logging.StreamHandler()
    handler.addFilter(_label)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(service)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


def name_service(kind: str, name: str) -> None:
    """JSON records name the service ``name`` of kind ``kind`` from now on."""
    identity.kind = kind
    identity.name = name


def label_records(label: str, address: str = "") -> None:
    """From now on, log records name the service as ``label`` (e.g. "hub@ADDR")
    and, as JSON, carry ``address``."""
    _label.label = label
    identity.address = address
