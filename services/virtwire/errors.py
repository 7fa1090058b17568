"""Domain exceptions. Each wraps its cause (``raise ... from exc``)."""

from __future__ import annotations


class VirtwireError(Exception):
    """Base of every virtwire error."""


class ConfigError(VirtwireError, ValueError):
    """A bad address, option or argument; the message says which and why."""


class NotFoundError(VirtwireError, LookupError):
    """A named NetClient, port or backend does not exist."""


class ConflictError(VirtwireError):
    """The operation conflicts with the current state (name taken, already linked)."""


class BackendError(VirtwireError, OSError):
    """A host resource (TAP device, socket) could not be opened or used."""


class PermissionDeniedError(VirtwireError, PermissionError):
    """The caller may not do this: its role, or this host's configuration, forbids it."""


class LimitError(ConflictError):
    """A configured cap (ports, subscribers, sizes) is reached; the refusal is counted."""
