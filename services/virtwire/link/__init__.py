"""Links: a NetClient's peer in another process, container or host.

- ``peer``: the protocol core (LinkPeer: batching, credits, completions).
- ``codec``: a batch as bytes, for transports other than the Connect stream.
- ``unix``: the same-host transport, a unix socket announced in the hello.

The Connect stream itself (gRPC) is in ``virtwire.server.link``.
"""

from virtwire.link.peer import (
    DEFAULT_WINDOW,
    HELLO_TIMEOUT_S,
    MAX_BATCH_BYTES,
    MAX_BATCH_FRAMES,
    READY_POLL_S,
    Batch,
    LinkPeer,
    LinkRunState,
)

__all__ = [
    "DEFAULT_WINDOW",
    "HELLO_TIMEOUT_S",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_FRAMES",
    "READY_POLL_S",
    "Batch",
    "LinkPeer",
    "LinkRunState",
]
