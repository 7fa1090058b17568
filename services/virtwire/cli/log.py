"""Logging of every `virtwire` command; a serving process names itself in each record."""

from __future__ import annotations

import logging


class _ServiceLabel(logging.Filter):
    """Puts "hub@127.0.0.1:5000" into every log record of a serving process."""

    label = "virtwire"

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.label
        return True


_label = _ServiceLabel()


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_label)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(service)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


def label_records(label: str) -> None:
    """From now on, log records name the service as ``label`` (e.g. "hub@ADDR")."""
    _label.label = label
