"""`virtwire demo` (make run): the default LAN on loopback, with traffic.

It brings up a topology file (``examples/default.yaml``: two virtwire VMs on
a hub, plus a ``stream`` port a real QEMU VM can join) with the orchestrator's
process backend, exactly as ``virtwire up --detach`` does; pings the first VM
from the second through their built-in responders (guest -> e1000 -> hub ->
e1000 -> guest), prints the round-trip times and every NetClient's counters,
and shows how to inject and capture with grpcurl. It needs no root. It keeps
pinging until Ctrl-C (or once with ``--once``), then tears the LAN down.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
from pathlib import Path

from virtwire.errors import ConfigError
from virtwire.orchestrator.core import read_state
from virtwire.orchestrator.launch import VIRTWIRE_CMD
from virtwire.topology import load_topology

DEFAULT_TOPOLOGY = Path("examples/default.yaml")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser("demo", allow_abbrev=False,
                          help="bring up the default LAN on loopback (make run)")
    demo.set_defaults(verb=cmd_demo)
    demo.add_argument("file", nargs="?", help="topology file (default examples/default.yaml)")
    demo.add_argument("--once", action="store_true", help="show traffic once and exit")


async def cmd_demo(args: argparse.Namespace) -> int:
    return await run_demo(once=args.once, file=args.file or "")


def _cli(*args: str, check: bool = True) -> int:
    """Run one `virtwire` command, its output going to ours."""
    rc = subprocess.run([*VIRTWIRE_CMD, *args], check=False).returncode
    if check and rc != 0:
        raise ConfigError(f"`virtwire {' '.join(args)}` failed with exit code {rc}")
    return rc


async def run_demo(once: bool = False, file: str = "") -> int:
    path = Path(file) if file else DEFAULT_TOPOLOGY
    if not path.exists():
        raise ConfigError(f"{path}: no such topology file (run from the repository, or give "
                          "one: virtwire demo FILE)")
    topo = load_topology(path)
    vms = [node.name for node in topo.vms()]
    if len(vms) < 2:
        raise ConfigError(f"{path}: the demo needs two vm nodes to ping between")
    print(f"== virtwire up {path} --detach")
    _cli("up", str(path), "--detach")
    try:
        state = read_state(topo.name)
        print(f"\n== virtwire ping {vms[0]} {vms[1]}   (guest -> e1000 -> hub -> e1000 -> guest)")
        _cli("ping", vms[0], vms[1], "--count", "5", "--lan", topo.name, check=False)
        print("\n== virtwire status")
        _cli("status", topo.name)
        _print_recipes(state.orchestrator, {s.name: s.address for s in state.services},
                       topo.name)
        while not once:
            print("\n(pinging every 2 s; Ctrl-C stops the LAN)")
            await asyncio.sleep(2)
            _cli("ping", vms[0], vms[1], "--count", "1", "--lan", topo.name, check=False)
        return 0
    finally:
        print(f"\n== virtwire down {topo.name}")
        _cli("down", topo.name, check=False)


def _print_recipes(orchestrator: str, addresses: dict[str, str], lan: str) -> None:
    hub = next((a for n, a in addresses.items() if n.startswith("hub")), "HUB")
    print(f"""
== Try it while the LAN runs (grpcurl is in .venv/bin)
  grpcurl -plaintext {orchestrator} list                      # the orchestrator
  grpcurl -plaintext {hub} virtwire.v1.HubService/ListPorts
  grpcurl -plaintext -d '{{"name":"hub0port1","frame":"'$(printf '\\xff\\xff\\xff\\xff\\xff\\xff\\x02\\0\\0\\0\\0\\x01\\x88\\xb5hello' | base64)'"}}' \\
      {hub} virtwire.v1.NetClientService/Inject
  grpcurl -plaintext -d '{{"name":"hub0port2","count":3}}' {hub} virtwire.v1.NetClientService/Capture
  virtwire capture -s {hub} hub0port2 -w /tmp/vm2.pcap --count 10 && tshark -r /tmp/vm2.pcap
  virtwire link vm2 down --lan {lan}; virtwire ping vm1 vm2 --lan {lan}; virtwire link vm2 up --lan {lan}
Join a QEMU VM (see examples/default.yaml):
  qemu-system-x86_64 ... -netdev stream,id=n0,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port=10555 -device e1000,netdev=n0""")
