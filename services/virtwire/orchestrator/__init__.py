"""The orchestrator: runs a LAN from a topology file (see ``Orchestrator``)."""

from virtwire.orchestrator.core import (
    LanState,
    Orchestrator,
    ProcessBackend,
    RunState,
    ServiceRecord,
    UpEvent,
    lan_dir,
    read_state,
    state_root,
)

__all__ = ["LanState", "Orchestrator", "ProcessBackend", "RunState", "ServiceRecord",
           "UpEvent", "lan_dir", "read_state", "state_root"]
