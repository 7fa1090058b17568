"""Domain exceptions: one tree under ``VirtwireError``.

Each wraps its cause (``raise ... from exc``). Layers raise these and nothing
else for errors a user or a peer can cause. ``virtwire.rpc.status`` holds the
one table that turns them into gRPC status codes (servers) and back (clients),
and the CLI's exit codes follow from the same types.
"""

from __future__ import annotations


class VirtwireError(Exception):
    """Base of every virtwire error."""


class ConfigError(VirtwireError, ValueError):
    """A bad address, option, argument or frame; the message says which and why."""


class OutOfRangeError(ConfigError, IndexError):
    """A well-formed value outside what the target accepts (an offset past a
    BAR or past guest RAM, a timeout over its limit)."""


class NotFoundError(VirtwireError, LookupError):
    """A named NetClient, port, node, service or LAN does not exist."""


class ConflictError(VirtwireError):
    """The operation conflicts with the current state (name taken, already linked)."""


class LimitError(ConflictError):
    """A configured cap (ports, subscribers, sizes) is reached; the refusal is counted."""


class BackendError(VirtwireError, OSError):
    """A host resource (TAP device, socket, process, container) could not be
    opened or used."""


class UnavailableError(BackendError):
    """A service cannot be reached, or is stopping."""


class DeadlineError(BackendError, TimeoutError):
    """A peer or a service did not answer in time."""


class PermissionDeniedError(VirtwireError, PermissionError):
    """The caller may not do this: its role, or this host's configuration, forbids it."""


class RemoteError(VirtwireError):
    """A service failed in a way that has no better type (gRPC INTERNAL, UNKNOWN)."""
