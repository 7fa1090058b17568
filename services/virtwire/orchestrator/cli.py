"""`virtwire up / down / status / link NODE`: clients of the OrchestratorService.

``up`` runs the orchestrator server in-process (until Ctrl-C or ``down``) or,
with ``--detach``, as a background ``virtwire serve orchestrator`` process;
either way it streams Up's progress. The others find the LAN's orchestrator
through its state file.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from virtwire import tls
from virtwire.errors import BackendError, NotFoundError
from virtwire.orchestrator import pids
from virtwire.orchestrator.core import LanState, lan_dir, read_state, remove_lan_dir, state_root
from virtwire.orchestrator.launch import VIRTWIRE_CMD, wait_ready
from virtwire.orchestrator.pki import LanPki, lan_identity, lan_tls_dir
from virtwire.orchestrator.statedir import private_dir
from virtwire.topology import load_topology
from virtwire.v1 import guest_pb2, netclient_pb2, orchestrator_pb2, orchestrator_pb2_grpc

_DONE = orchestrator_pb2.UP_EVENT_KIND_DONE
_ERROR = orchestrator_pb2.UP_EVENT_KIND_ERROR
RPC_TIMEOUT_S = 30.0


def _orchestrator_alive(state: LanState) -> bool:
    """The LAN's orchestrator still runs: its pid is still the process that
    wrote the state (same start time, same boot), and not a zombie."""
    return pids.running(state.orchestrator_pid, state.orchestrator_start_time, state.boot_id)


async def _wait_exit(state: LanState, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _orchestrator_alive(state):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def _clear_stale(name: str) -> None:
    """Remove the state of a LAN whose orchestrator is gone (and its leftovers)."""
    try:
        state = read_state(name)
    except NotFoundError:
        return
    if _orchestrator_alive(state):
        return
    await _kill_services(state)
    remove_lan_dir(name)


async def _kill_services(state: LanState) -> None:
    """Stop what a dead orchestrator left: processes, containers, other hosts' services.

    A recorded process group is killed only while its leader is still the
    service that was started (pid, start time and boot as recorded).
    """
    for rec in state.services:
        if rec.backend == "process" and rec.pid:
            pids.signal_process(rec.pid, rec.start_time, signal.SIGKILL, boot=state.boot_id,
                                group=True, what=f"service {rec.name}")
    if state.backend == "docker":
        from virtwire.orchestrator.runtime.docker import remove_lan

        try:
            await asyncio.to_thread(remove_lan, state.name)
        except BackendError as exc:
            print(f"virtwire: warning: {exc}", file=sys.stderr)
    from virtwire.orchestrator.runtime.remote import stop_remote_lan

    for agent in sorted({rec.agent for rec in state.services if rec.agent}):
        try:
            await stop_remote_lan(agent, state.name)
        except grpc.aio.AioRpcError as exc:
            print(f"virtwire: warning: the orchestrator at {agent} did not stop LAN "
                  f"{state.name!r}'s services there: {exc}", file=sys.stderr)


def _spawn_detached(ready: Path, log: Path, topology: Path) -> subprocess.Popen[bytes]:
    """`virtwire serve orchestrator --topology FILE` in its own session: it
    outlives this command, and reads the topology itself (trusted, as here)."""
    with open(log, "ab") as out:
        identity = tls.active()
        return subprocess.Popen([*VIRTWIRE_CMD, "serve", "orchestrator",
                                 "--topology", str(topology.resolve()),
                                 *(identity.args() if identity else []),
                                 "--ready-file", str(ready)],
                                stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


async def _stream_up(address: str, source: str, backend: str, subnet: str) -> bool:
    """Call Up and print its progress; True when the LAN came up.

    The topology field stays empty: the orchestrator runs the file it was
    given on this host (a topology sent as text is a remote caller's, with
    no scripts, paths or namespaces).
    """
    async with tls.aio_channel(address) as ch:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
        async for event in stub.Up(orchestrator_pb2.OrchestratorServiceUpRequest(
                source=source, backend=backend, subnet=subnet)):
            kind = orchestrator_pb2.UpEventKind.Name(event.kind).removeprefix(
                "UP_EVENT_KIND_").lower()
            print(f"{kind:16} {event.message}", flush=True)
            if event.kind == _ERROR:
                return False
            if event.kind == _DONE:
                return True
    return False


async def cmd_up(args: Any) -> int:
    from virtwire.server.orchestrator import OrchestratorServer

    topo = load_topology(args.file)  # TopologyError: exit 2 with FILE:LINE
    for warning in topo.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    root = private_dir(state_root())  # 0700 and ours, or PermissionDeniedError
    assert root is not None
    await _clear_stale(topo.name)
    if topo.tls_dir is not None:
        private_dir(root, topo.name)  # before the LAN's certificates go there
        # The LAN runs mutual TLS: this process (the orchestrator, and the CLI
        # that calls it) is the LAN's controller.
        tls.configure(LanPki(topo.tls_dir, lan_tls_dir(lan_dir(topo.name))).controller())
    if args.detach:
        # The ready and log files are in the private root: nobody else can
        # plant them or a symlink in their place.
        ready = root / f".{topo.name}.orchestrator.ready"
        ready.unlink(missing_ok=True)
        log = root / f"{topo.name}.orchestrator.log"
        proc = _spawn_detached(ready, log, Path(args.file))
        try:
            address = await wait_ready(ready, proc.poll, 20)
        except BackendError:
            proc.kill()
            raise BackendError(f"the orchestrator did not start; see {log}") from None
        ready.unlink()
        if await _stream_up(address, args.file, args.backend, args.subnet):
            print(f"LAN {topo.name!r} is up (orchestrator {address}, pid {proc.pid}); "
                  f"'virtwire down {topo.name}' stops it")
            return 0
        proc.terminate()
        proc.wait()
        return 1
    host = OrchestratorServer(local_topology=topo)
    await host.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        up = asyncio.create_task(_stream_up(host.address, args.file, args.backend,
                                             args.subnet))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({up, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not up.done():
            up.cancel()
            return 130
        if not up.result():
            return 1
        print(f"LAN {topo.name!r} is up (orchestrator {host.address}); Ctrl-C stops it",
              flush=True)
        down = asyncio.create_task(host.lan_down.wait())
        await asyncio.wait({stopper, down}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        down.cancel()
        return 0
    finally:
        await host.stop(grace=0.5)


def _stub(state: LanState
          ) -> tuple[grpc.aio.Channel, orchestrator_pb2_grpc.OrchestratorServiceStub]:
    if tls.active() is None:
        # No --tls-* flags nor VIRTWIRE_TLS_DIR: the identity the LAN's own
        # orchestrator made for its controller, if the LAN runs TLS.
        tls.configure(lan_identity(lan_dir(state.name)))
    ch = tls.aio_channel(state.orchestrator)
    return ch, orchestrator_pb2_grpc.OrchestratorServiceStub(ch)


def orchestrator_stub(lan: str | None
                      ) -> tuple[grpc.aio.Channel, orchestrator_pb2_grpc.OrchestratorServiceStub]:
    """A channel to the orchestrator of LAN (or of the only LAN running)."""
    return _stub(read_state(lan))


async def cmd_down(args: Any) -> int:
    state = read_state(args.name)
    ch, stub = _stub(state)
    try:
        async with ch:
            resp = await stub.Down(orchestrator_pb2.OrchestratorServiceDownRequest(),
                                   timeout=RPC_TIMEOUT_S)
        stopped = resp.stopped
    except grpc.aio.AioRpcError as exc:
        # The orchestrator is gone: kill what it left and forget the LAN.
        print(f"virtwire: warning: orchestrator at {state.orchestrator} did not answer "
              f"({exc.code().name}); killing the services it recorded", file=sys.stderr)
        await _kill_services(state)
        stopped = len(state.services)
    remove_lan_dir(state.name)
    if state.orchestrator_pid != os.getpid():
        # After Down the orchestrator exits by itself; SIGTERM it if it does not
        # (only if that pid is still the orchestrator that wrote the state).
        if not await _wait_exit(state, 5.0) and pids.signal_process(
                state.orchestrator_pid, state.orchestrator_start_time, signal.SIGTERM,
                boot=state.boot_id, what="the orchestrator"):
            await _wait_exit(state, 5.0)
    print(f"LAN {state.name!r} is down ({stopped} services stopped)")
    return 0


def _counters_dropped(c: netclient_pb2.NetClientCounters) -> int:
    return int(c.dropped_queue_full + c.dropped_link_down + c.dropped_refused
               + c.dropped_malformed + c.dropped_purged)


async def cmd_status(args: Any) -> int:
    from virtwire.cli import _format_table

    state = read_state(args.name)
    ch, stub = _stub(state)
    async with ch:
        resp = await stub.GetStatus(orchestrator_pb2.OrchestratorServiceGetStatusRequest(),
                                    timeout=RPC_TIMEOUT_S)
    if args.json:
        print(json_format.MessageToJson(resp, always_print_fields_with_no_presence=True,
                                        preserving_proto_field_name=True))
    else:
        print(f"LAN {resp.name!r}: {resp.state} (orchestrator {state.orchestrator})")
        rows = [("NODE", "KIND", "SERVICE", "RUNS AS", "ADDRESS", "PID", "HEALTH",
                 "RESTARTS")]
        for node in resp.nodes:
            for svc in node.services:
                runs = f"host {svc.host}" if svc.host else svc.backend
                rows.append((node.name, node.kind, svc.name, runs, svc.address, str(svc.pid),
                             "serving" if svc.healthy else "NOT SERVING", str(svc.restarts)))
        print(_format_table(rows))
        rows2: list[tuple[str, ...]] = [("NODE", "NETCLIENT", "LINK", "PEER", "RX FRAMES",
                                         "RX BYTES", "TX FRAMES", "TX BYTES", "DROPPED")]
        for node in resp.nodes:
            for nc in node.netclients:
                info = nc.info
                link = netclient_pb2.LinkState.Name(info.link_state).removeprefix(
                    "LINK_STATE_").lower()
                if info.admin_down:
                    link += " (set down)"
                elif info.link_down:
                    link += " (down)"
                c = info.counters
                rows2.append((node.name, nc.name, link, info.peer, str(c.rx_frames),
                             str(c.rx_bytes), str(c.tx_frames), str(c.tx_bytes),
                             str(_counters_dropped(c))))
        print()
        print(_format_table(rows2))
    unhealthy = any(not s.healthy for n in resp.nodes for s in n.services)
    return 1 if unhealthy else 0


async def cmd_link_node(args: Any) -> int:
    state = read_state(args.lan)
    ch, stub = _stub(state)
    async with ch:
        resp = await stub.SetLink(orchestrator_pb2.OrchestratorServiceSetLinkRequest(
            target=args.netclient, up=args.state == "up"), timeout=RPC_TIMEOUT_S)
    print(f"{args.netclient} ({resp.netclient.name}): link "
          f"{'down' if resp.netclient.link_down else 'up'}")
    return 0


async def cmd_ping_node(args: Any) -> int:
    """`virtwire ping FROM_VM TO`: through the orchestrator; 0 if any reply came."""
    state = read_state(args.lan)
    ch, stub = _stub(state)
    timeout_ms = max(1, round(args.wait * 1000))
    async with ch:
        resp = await stub.Ping(orchestrator_pb2.OrchestratorServicePingRequest(
            from_node=args.address, to=args.to, count=args.count, timeout_ms=timeout_ms),
            timeout=RPC_TIMEOUT_S + args.count * (timeout_ms + 100) / 1000)
    from virtwire.server.guest import format_ping

    print(format_ping(resp.address, args.address, guest_pb2.PingResponse(
        replies=resp.replies, transmitted=resp.transmitted, received=resp.received)))
    return 0 if resp.received else 1


def status_json(resp: orchestrator_pb2.OrchestratorServiceGetStatusResponse) -> Any:
    return json.loads(json_format.MessageToJson(resp, preserving_proto_field_name=True))
