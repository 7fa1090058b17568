"""`virtwire demo` (make run): the default LAN on loopback, with traffic.

It brings up a topology file (``examples/default.yaml``: two virtwire VMs on
a hub, plus a ``stream`` port a real QEMU VM can join) with the orchestrator's
process backend, exactly as ``virtwire up --detach`` does; pings the first VM
from the second through their built-in responders (guest -> e1000 -> hub ->
e1000 -> guest), and prints the round-trip times and every NetClient's
counters. It needs no root. Then it prints, once, what to try on the running
LAN (virtwire and grpcurl commands), and pings every 2 s, one line each,
until stopped; ``--once`` stops the LAN after the first round instead.

The commands it prints work as printed: they name ``virtwire`` when PATH
finds this very script by that name, else the script's absolute path (a
``.venv`` that is not activated).

SIGINT (Ctrl-C), SIGTERM and SIGHUP stop it: it tears the LAN down and exits
128 + the signal's number (130, 143, 129), without a traceback. The commands
it runs have their own process group, so a terminal's Ctrl-C reaches the demo
alone: it stops a running ping or status, and lets ``up`` finish so that the
LAN it made is torn down too. Signals during the teardown are ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from virtwire.address import parse_peer, parse_sockaddr
from virtwire.cli.format import LAN_ORCHESTRATOR
from virtwire.cli.lan import Stub, orchestrator_stub
from virtwire.errors import ConfigError, ConflictError, NotFoundError, VirtwireError
from virtwire.orchestrator import pids
from virtwire.orchestrator.core import STATE_FILE, lan_dir, read_state
from virtwire.orchestrator.launch import VIRTWIRE_CMD
from virtwire.rpc.status import translated
from virtwire.topology import Topology, load_topology
from virtwire.v1 import orchestrator_pb2

DEFAULT_TOPOLOGY = Path("examples/default.yaml")
PING_INTERVAL_S = 2.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser("demo", allow_abbrev=False,
                          help="bring up the default LAN on loopback (make run)")
    demo.set_defaults(verb=cmd_demo)
    demo.add_argument("file", nargs="?", help="topology file (default examples/default.yaml)")
    demo.add_argument("--once", action="store_true",
                      help="ping and show the counters once, then stop the LAN")


async def cmd_demo(args: argparse.Namespace) -> int:
    """``run_demo`` until it ends or a stop signal comes: then 128 + its number."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    stop = _Stop(task)
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop, sig)
    try:
        return await run_demo(once=args.once, file=args.file or "")
    except asyncio.CancelledError:
        if not stop.signum:
            raise
        task.uncancel()
        return 128 + stop.signum
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


class _Stop:
    """The first stop signal cancels the demo (which then tears its LAN down);
    later ones are ignored, so that the teardown completes."""

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task = task
        self.signum = 0

    def __call__(self, signum: int) -> None:
        if not self.signum:
            self.signum = signum
            self.task.cancel()


# -- the commands a user types ---------------------------------------------------------
def shell_command(name: str, path: Path) -> str:
    """``name`` when the shell's PATH finds ``path`` by it; else ``path``, quoted."""
    found = shutil.which(name)
    if found and path.exists() and os.path.samefile(found, path):
        return name
    return shlex.quote(str(path.absolute())) if path.exists() else name


def own_script() -> Path:
    """The `virtwire` console script running (or the one next to this Python)."""
    argv0 = Path(sys.argv[0])
    return argv0 if argv0.name == "virtwire" else Path(sys.executable).parent / "virtwire"


async def _cli(*args: str, stoppable: bool = True) -> int:
    """Run `virtwire ARGS` in a process group of its own, its output going to
    ours; its exit code. Cancelled, it stops the command if ``stoppable`` (else
    lets it finish), and waits for it before passing the cancellation on."""
    proc = await asyncio.create_subprocess_exec(*VIRTWIRE_CMD, *args, process_group=0,
                                                stdin=subprocess.DEVNULL)
    try:
        return await proc.wait()
    except asyncio.CancelledError:
        if stoppable:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        await proc.wait()
        raise


async def _step(vw: str, *args: str, note: str = "", stoppable: bool = True) -> int:
    """Show `virtwire ARGS` as a user would type it, then run it."""
    print(f"\n== {vw} {shlex.join(args)}{f'   # {note}' if note else ''}", flush=True)
    return await _cli(*args, stoppable=stoppable)


# -- the demo --------------------------------------------------------------------------
async def run_demo(once: bool = False, file: str = "") -> int:
    path = Path(file) if file else DEFAULT_TOPOLOGY
    if not path.exists():
        raise ConfigError(f"{path}: no such topology file (run from the repository, or give "
                          "one: virtwire demo FILE)")
    topo = load_topology(path)
    vms = [node.name for node in topo.vms()]
    if len(vms) < 2:
        raise ConfigError(f"{path}: the demo needs two vm nodes to ping between")
    script = own_script()
    vw = shell_command("virtwire", script)
    _refuse_running(topo.name, vw)
    try:
        rc = await _step(vw, "up", str(path), "--detach", stoppable=False)
        if rc:
            return rc
        await _step(vw, "ping", vms[0], vms[1], "--count", "5", "--lan", topo.name,
                    note="guest -> e1000 -> hub -> e1000 -> guest")
        rc = await _step(vw, "status", topo.name)
        if rc:
            return rc
        if once:
            print(f"\n(--once: the LAN stops now. Without --once the demo keeps it running "
                  f"and shows what to try on it; '{vw} up {shlex.quote(str(path))} --detach' "
                  f"runs it in the background, until '{vw} down {topo.name}'.)")
            return 0
        ch, stub = orchestrator_stub(topo.name)
        async with ch:
            print(_recipes(topo, vw, shell_command("grpcurl", script.parent / "grpcurl"),
                           read_state(topo.name).orchestrator, await _status(stub)))
            if vw != "virtwire":
                print(f"('virtwire' is not on PATH: "
                      f"'. {shlex.quote(str(script.parent.absolute()))}"
                      "/activate', or 'make install' links it into ~/.local/bin)")
            print(f"\n(pinging {vms[0]} -> {vms[1]} every {PING_INTERVAL_S:.0f} s; "
                  "Ctrl-C stops the LAN)", flush=True)
            return await _watch(stub, topo.name, vms[0], vms[1])
    finally:
        if (lan_dir(topo.name) / STATE_FILE).exists():
            await _step(vw, "down", topo.name, stoppable=False)


def _refuse_running(lan: str, vw: str) -> None:
    """ConflictError if LAN ``lan`` runs already: the demo would stop it at its end."""
    try:
        state = read_state(lan)
    except NotFoundError:
        return
    if pids.running(state.orchestrator_pid, state.orchestrator_start_time, state.boot_id):
        raise ConflictError(f"LAN {lan!r} is already running (orchestrator "
                            f"{state.orchestrator}); '{vw} down {lan}' stops it")


async def _status(stub: Stub) -> orchestrator_pb2.OrchestratorServiceGetStatusResponse:
    with translated(LAN_ORCHESTRATOR):
        resp: orchestrator_pb2.OrchestratorServiceGetStatusResponse = await stub.GetStatus(
            orchestrator_pb2.OrchestratorServiceGetStatusRequest(), timeout=10)
    return resp


async def _watch(stub: Stub, lan: str, src: str, dst: str) -> int:
    """Ping ``src`` -> ``dst`` every PING_INTERVAL_S, one line each, until
    cancelled; 0 when the LAN is stopped from elsewhere."""
    while True:
        try:
            line = await _traffic_line(stub, src, dst)
        except VirtwireError as exc:
            if not (lan_dir(lan) / STATE_FILE).exists():
                print(f"LAN {lan!r} was stopped", flush=True)
                return 0
            line = f"{time.strftime('%H:%M:%S')}  {exc}"
        print(line, flush=True)
        await asyncio.sleep(PING_INTERVAL_S)


async def _traffic_line(stub: Stub, src: str, dst: str) -> str:
    """One ping's round trip, and the frames through the LAN's hubs so far."""
    with translated(LAN_ORCHESTRATOR):
        ping = await stub.Ping(orchestrator_pb2.OrchestratorServicePingRequest(
            from_node=src, to=dst, count=1), timeout=10)
    status = await _status(stub)
    rtt = next((r.rtt_us / 1000 for r in ping.replies if r.HasField("rtt_us")), None)
    hubs = [n for n in status.nodes if n.kind == "hub"]
    through = sum(nc.info.counters.rx_frames for n in hubs for nc in n.netclients)
    dropped = sum(nc.info.counters.dropped_total for n in status.nodes for nc in n.netclients)
    return (f"{time.strftime('%H:%M:%S')}  ping {src} -> {dst} ({ping.address}): "
            + (f"time={rtt:.3f} ms" if rtt is not None else "no reply")
            + (f"   frames through {', '.join(n.name for n in hubs)}: {through}" if hubs
               else "")
            + f"   dropped: {dropped}")


def _hub_port(status: orchestrator_pb2.OrchestratorServiceGetStatusResponse,
              node: str) -> tuple[str, str]:
    """The server and NetClient that ``node``'s link dials (its hub port), or
    ("", "") when it dials none."""
    for n in status.nodes:
        if n.name == node:
            for nc in n.netclients:
                if "/" in nc.info.peer:
                    with contextlib.suppress(ConfigError):
                        peer = parse_peer(nc.info.peer)
                        return str(peer.addr), peer.netclient
    return "", ""


def _recipes(topo: Topology, vw: str, grpcurl: str, orchestrator: str,
             status: orchestrator_pb2.OrchestratorServiceGetStatusResponse) -> str:
    """What to try on the running LAN, each line as a shell runs it."""
    lan = topo.name
    src, dst = (node.name for node in topo.vms()[:2])
    hub, src_port = _hub_port(status, src)
    dst_hub, dst_port = _hub_port(status, dst)
    lines = ["", "== Try it while the LAN runs (in another shell; Ctrl-C here stops it)",
             f"  {vw} status {lan}",
             f"  {vw} link {dst} down --lan {lan}; {vw} ping {src} {dst} --lan {lan}; "
             f"{vw} link {dst} up --lan {lan}"]
    if dst_port:
        lines.append(f"  {vw} capture -s {dst_hub} {dst_port} -w /tmp/{dst}.pcap --count 10"
                     f" && tshark -r /tmp/{dst}.pcap")
    if topo.tls_dir is None:  # grpcurl without the LAN's certificates
        lines.append(f"  {grpcurl} -plaintext {orchestrator} list"
                     "                      # the orchestrator's services")
        if hub and src_port and dst_port:
            frame = r"\xff\xff\xff\xff\xff\xff\x02\0\0\0\0\x01\x88\xb5hello"
            lines += [
                f"  {grpcurl} -plaintext {hub} virtwire.v1.HubService/ListPorts",
                f"""  {grpcurl} -plaintext -d '{{"name":"{src_port}","frame":"'$(printf """
                f"""'{frame}' | base64)'"}}' \\""",
                f"      {hub} virtwire.v1.NetClientService/Inject",
                f"""  {grpcurl} -plaintext -d '{{"name":"{dst_port}","count":3}}' {dst_hub} """
                "virtwire.v1.NetClientService/Capture"]
    for tap in topo.taps():
        listen = tap.options.get("listen", "") if tap.backend == "stream" else ""
        addr = parse_sockaddr(listen) if listen else None
        if addr is not None and addr.port and not addr.is_unix:
            lines += [f"Join a QEMU VM to {tap.name} (see {topo.source}):",
                      "  qemu-system-x86_64 ... -netdev stream,id=n0,server=off,"
                      f"addr.type=inet,addr.host={addr.host},addr.port={addr.port} "
                      "-device e1000,netdev=n0"]
    return "\n".join(lines)
