"""gRPC channel and server options, and grpc.aio constants, shared by all."""

from __future__ import annotations

import grpc

#: grpc.aio's end-of-stream sentinel (missing from grpc-stubs).
GRPC_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]

#: gRPC options for every virtwire channel and server: no BDP probing, so HTTP/2
#: windows stay small and link credits (not hidden buffers) bound what is in
#: flight; keepalives notice a dead peer within about 15 s.
GRPC_OPTIONS: list[tuple[str, int]] = [
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 1024 * 1024),
    ("grpc.http2.max_frame_size", 1024 * 1024),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 10000),
    ("grpc.keepalive_timeout_ms", 5000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ("grpc.http2.max_pings_without_data", 0),
]
