"""virtwire: QEMU's network data path as gRPC microservices."""

__version__ = "0.1.0"
