"""What every gRPC client and server shares: channel options, status mapping.

Identity (TLS) lives in ``virtwire.tls``; this package holds no service logic.
"""
