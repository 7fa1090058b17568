"""The orchestrator: runs a LAN from a topology file (see ``Orchestrator``)."""

from virtwire.orchestrator.backend import Backend, ProcessBackend
from virtwire.orchestrator.core import (
    LanState,
    Orchestrator,
    RunState,
    ServiceRecord,
    UpEvent,
    lan_dir,
    read_state,
    state_root,
)

__all__ = ["Backend", "LanState", "Orchestrator", "ProcessBackend", "RunState", "ServiceRecord",
           "UpEvent", "lan_dir", "read_state", "state_root"]
