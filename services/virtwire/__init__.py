"""virtwire: QEMU's network data path as gRPC microservices."""

import os as _os

__version__ = "0.1.0"

# Every virtwire process forks children (services, QEMU, tap scripts) while
# grpc's threads run. With grpc's fork support on (grpcio's build default), its
# at-fork handler restarts the event engine's poller inside the child, where
# subprocess has just closed every descriptor: the poller hits EBADF and the
# child can die before it reaches exec. virtwire never uses grpc in a forked
# child, so it turns fork support off before grpc is imported (the setting is
# read at import, and children inherit it); set the variable to override.
_os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
