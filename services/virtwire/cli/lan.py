"""`virtwire up / down / status / validate / render`, and link / ping of a LAN's nodes.

``up`` runs the orchestrator server in-process (until Ctrl-C or ``down``) or,
with ``--detach``, as a background ``virtwire serve orchestrator`` process;
either way it streams Up's progress. The others find the LAN's orchestrator
through its state file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from virtwire import tls
from virtwire.cli.exitcode import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK
from virtwire.cli.filtertable import format_filters as format_filter_infos
from virtwire.cli.format import (
    LAN_ORCHESTRATOR,
    format_json,
    format_ping,
    format_ports,
    format_schedule,
    format_status,
    link_up_down,
)
from virtwire.cli.log import name_service
from virtwire.cli.plantable import format_filters, format_plan
from virtwire.cli.plantable import format_schedule as format_schedule_plan
from virtwire.cli.serve import serving, until_stopped
from virtwire.errors import BackendError, ConfigError, NotFoundError, VirtwireError
from virtwire.logfmt import LOG_FORMATS, log_format
from virtwire.orchestrator import pids
from virtwire.orchestrator.core import LanState, lan_dir, read_state, remove_lan_dir, state_root
from virtwire.orchestrator.launch import VIRTWIRE_CMD, wait_ready
from virtwire.orchestrator.pki import LanPki, lan_identity, lan_tls_dir
from virtwire.orchestrator.render import NO_TRACE, TraceFlags
from virtwire.orchestrator.statedir import private_dir
from virtwire.rpc.status import translated
from virtwire.topology import DEFAULT_METRICS_PORT, Topology, load_topology
from virtwire.v1 import guest_pb2, orchestrator_pb2, orchestrator_pb2_grpc

_DONE = orchestrator_pb2.UP_EVENT_KIND_DONE
_ERROR = orchestrator_pb2.UP_EVENT_KIND_ERROR
RPC_TIMEOUT_S = 30.0
#: How long `up --detach` waits for its orchestrator to serve.
ORCHESTRATOR_START_S = 20.0

Stub = orchestrator_pb2_grpc.OrchestratorServiceStub


# -- a LAN's orchestrator --------------------------------------------------------------
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
    if any(rec.name != rec.node and rec.kind == "tap" for rec in state.services):
        # NODE-ethN: maybe a container node's interface; its container, by its labels.
        from virtwire.orchestrator.containers import remove_lan_containers

        try:
            await asyncio.to_thread(remove_lan_containers, state.name)
        except BackendError:
            pass  # no engine: no container node either
    from virtwire.orchestrator.runtime.remote import stop_remote_lan

    for agent in sorted({rec.agent for rec in state.services if rec.agent}):
        try:
            with translated(agent):
                await stop_remote_lan(agent, state.name)
        except VirtwireError as exc:
            print(f"virtwire: warning: the orchestrator at {agent} did not stop the "
                  f"services of LAN {state.name!r} there: {exc}", file=sys.stderr)


def _stub(state: LanState) -> tuple[grpc.aio.Channel, Stub]:
    if tls.active() is None:
        # No --tls-* flags nor VIRTWIRE_TLS_DIR: the identity the LAN's own
        # orchestrator made for its controller, if the LAN runs TLS.
        tls.configure(lan_identity(lan_dir(state.name)))
    ch = tls.aio_channel(state.orchestrator)
    return ch, Stub(ch)


def orchestrator_stub(lan: str | None) -> tuple[grpc.aio.Channel, Stub]:
    """A channel to the orchestrator of LAN (or of the only LAN running)."""
    return _stub(read_state(lan))


def _print_warnings(topo: Topology) -> None:
    """The topology's warnings on stderr (each reads FILE:LINE: warning: WHAT)."""
    for warning in topo.warnings:
        print(warning, file=sys.stderr)


# -- up ------------------------------------------------------------------------------
def _spawn_detached(ready: Path, log: Path, topology: Path) -> subprocess.Popen[bytes]:
    """`virtwire serve orchestrator --topology FILE` in its own session: it
    outlives this command, and reads the topology itself (trusted, as here).
    It logs in this command's ``--log-format`` and passes it to its services."""
    with open(log, "ab") as out:
        identity = tls.active()
        fmt = log_format()
        return subprocess.Popen([*VIRTWIRE_CMD, "serve", "orchestrator",
                                 "--topology", str(topology.resolve()),
                                 *(identity.args() if identity else []),
                                 *(["--log-format", fmt] if fmt != "text" else []),
                                 "--ready-file", str(ready)],
                                stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def _metrics_port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a port: {port} (1 to 65535)")
    return port


async def _stream_up(address: str, source: str, backend: str, subnet: str,
                     metrics_port: int = 0, trace: TraceFlags = NO_TRACE) -> bool:
    """Call Up and print its progress; True when the LAN came up.

    The topology field stays empty: the orchestrator runs the file it was
    given on this host (a topology sent as text is a remote caller's, with
    no scripts, paths or namespaces).
    """
    async with tls.aio_channel(address) as ch:
        stub = Stub(ch)
        async for event in stub.Up(orchestrator_pb2.OrchestratorServiceUpRequest(
                source=source, backend=backend, subnet=subnet,
                metrics_port=metrics_port, trace_sample=trace.sample,
                trace_otlp=trace.otlp, trace_file=bool(trace.file_dir))):
            kind = orchestrator_pb2.UpEventKind.Name(event.kind).removeprefix(
                "UP_EVENT_KIND_").lower()
            print(f"{kind:16} {event.message}", flush=True)
            if event.kind == _ERROR:
                return False
            if event.kind == _DONE:
                return True
    return False


async def cmd_up(args: argparse.Namespace) -> int:
    from virtwire.server.orchestrator import OrchestratorServer

    topo = load_topology(args.file)  # TopologyError: exit 2 with FILE:LINE
    trace = _trace_flags(args)  # a bad --trace-* before anything starts
    if trace.file_dir and args.backend != "process":
        raise ConfigError("--trace-file writes in the LAN's state dir on this machine: "
                          "it is for the process backend")
    _print_warnings(topo)
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
            address = await wait_ready(ready, proc.poll, ORCHESTRATOR_START_S)
        except BackendError:
            proc.kill()
            raise BackendError(f"the orchestrator did not start; see {log}") from None
        ready.unlink()
        if await _stream_up(address, args.file, args.backend, args.subnet, args.metrics,
                            trace):
            print(f"LAN {topo.name!r} is up (orchestrator {address}, pid {proc.pid}); "
                  f"'virtwire down {topo.name}' stops it")
            return EXIT_OK
        proc.terminate()
        proc.wait()
        return EXIT_ERROR
    if not args.verbose:
        # Up's events and the lines below say what happens: the in-process
        # server's log lines (listening, stopping) would only repeat them.
        logging.getLogger().setLevel(logging.WARNING)
    # Its JSON log lines name it as a detached one's do (docs/logs.md).
    name_service("orchestrator", "orchestrator")
    host = OrchestratorServer(local_topology=topo)
    async with serving(host, grace=0.5) as stopped:
        came_up = await until_stopped(stopped, _stream_up(host.address, args.file,
                                                          args.backend, args.subnet,
                                                          args.metrics, trace))
        if came_up:
            print(f"LAN {topo.name!r} is up (orchestrator {host.address}); Ctrl-C stops it",
                  flush=True)
            await until_stopped(stopped, host.lan_down.wait())
        if stopped.is_set():
            print(f"stopping LAN {topo.name!r}", flush=True)
    if came_up is None:
        return EXIT_INTERRUPTED
    return EXIT_OK if came_up else EXIT_ERROR


def _trace_flags(args: argparse.Namespace) -> TraceFlags:
    """``--trace-sample/--trace-otlp`` (and up's ``--trace-file``), checked."""
    return TraceFlags(sample=args.trace_sample or "", otlp=args.trace_otlp or "",
                      file_dir="traces" if getattr(args, "trace_file", False) else ""
                      ).checked()


def _add_trace_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--trace-sample", metavar="1/N", default="",
                    help="every service traces one frame in N where frames enter the "
                         "LAN, recording a span per hop (docs/tracing.md); off by default")
    sp.add_argument("--trace-otlp", metavar="ENDPOINT", default="",
                    help="every service exports its spans over OTLP to ENDPOINT "
                         "(HOST:PORT, http://HOST:PORT or https://HOST:PORT; no path)")


# -- down, status, link, ping ----------------------------------------------------------
async def cmd_down(args: argparse.Namespace) -> int:
    """Stop a LAN; with none running (or not the one named), say so: 0."""
    try:
        state = read_state(lan_name(args))
    except NotFoundError as exc:
        print(f"{exc}: nothing to stop")
        return EXIT_OK
    ch, stub = _stub(state)
    try:
        with translated(LAN_ORCHESTRATOR):
            async with ch:
                resp = await stub.Down(orchestrator_pb2.OrchestratorServiceDownRequest(),
                                       timeout=RPC_TIMEOUT_S)
        stopped = resp.stopped
    except VirtwireError as exc:
        # The orchestrator is gone: kill what it left and forget the LAN.
        status = getattr(exc, "status", None)
        print(f"virtwire: warning: orchestrator at {state.orchestrator} did not answer "
              f"({status.name if status else exc}); killing the services it recorded",
              file=sys.stderr)
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
    return EXIT_OK


async def cmd_status(args: argparse.Namespace) -> int:
    """A LAN's services and NetClients; 1 if a service is not serving."""
    state = read_state(lan_name(args))
    ch, stub = _stub(state)
    async with ch:
        resp = await stub.GetStatus(orchestrator_pb2.OrchestratorServiceGetStatusRequest(),
                                    timeout=RPC_TIMEOUT_S)
    if args.json:
        print(format_json(resp))
    else:
        parts = [format_status(resp, state.orchestrator), format_ports(resp),
                 _titled("SCHEDULE (seconds after the LAN was healthy)", format_schedule(resp)),
                 _titled("FILTERS", await _filters_table(state))]
        print("\n\n".join(part for part in parts if part))
    unhealthy = any(not s.healthy for n in resp.nodes for s in n.services)
    return EXIT_ERROR if unhealthy else EXIT_OK


def _titled(title: str, table: str) -> str:
    return f"{title}\n{table}" if table else ""


async def _filters_table(state: LanState) -> str:
    """The LAN's filters (the orchestrator's ListFilters, by node), as `filter ls`
    shows them; "" when there are none, or (with a note on stderr) when they
    could not be listed: status still shows the rest."""
    from virtwire.v1 import filter_pb2, filter_pb2_grpc

    ch, _ = _stub(state)
    try:
        async with ch:
            with translated(LAN_ORCHESTRATOR):
                got = await filter_pb2_grpc.FilterServiceStub(ch).ListFilters(
                    filter_pb2.ListFiltersRequest(), timeout=RPC_TIMEOUT_S)
    except VirtwireError as exc:
        print(f"status: filters not listed: {exc}", file=sys.stderr)
        return ""
    return format_filter_infos(got.filters) if got.filters else ""


async def cmd_link_node(args: argparse.Namespace) -> int:
    """`virtwire link NODE[:PORT] up|down`, through the LAN's orchestrator."""
    ch, stub = orchestrator_stub(args.lan)
    async with ch:
        resp = await stub.SetLink(orchestrator_pb2.OrchestratorServiceSetLinkRequest(
            target=args.netclient, up=args.state == "up"), timeout=RPC_TIMEOUT_S)
    print(f"{args.netclient} ({resp.netclient.name}): {link_up_down(resp.netclient)}")
    return EXIT_OK


async def cmd_ping_node(args: argparse.Namespace) -> int:
    """`virtwire ping FROM_VM TO`: through the orchestrator; 0 if any reply came."""
    ch, stub = orchestrator_stub(args.lan)
    timeout_ms = max(1, round(args.wait * 1000))
    async with ch:
        resp = await stub.Ping(orchestrator_pb2.OrchestratorServicePingRequest(
            from_node=args.address, to=args.to, count=args.count, timeout_ms=timeout_ms),
            timeout=RPC_TIMEOUT_S + args.count * (timeout_ms + 100) / 1000)
    print(format_ping(resp.address, args.address, guest_pb2.PingResponse(
        replies=resp.replies, transmitted=resp.transmitted, received=resp.received)))
    return EXIT_OK if resp.received else EXIT_ERROR


# -- validate, render ------------------------------------------------------------------
async def cmd_validate(args: argparse.Namespace) -> int:
    topo = load_topology(args.file)
    if args.json:
        print(json.dumps(topo.to_dict(), indent=1))
    else:
        print(f"{args.file}: LAN {topo.name!r}: {len(topo.nodes)} nodes, "
              f"{len(topo.links)} links, {len(topo.services)} services, in start order:\n\n"
              f"{format_plan(topo)}\n\n(a service's name stands for the address 'up' "
              "gives it; SERVICE/NETCLIENT is a link's peer)")
        filters, schedule = format_filters(topo), format_schedule_plan(topo)
        if filters:
            print(f"\n{len(topo.filters)} filters, put on at start:\n{filters}")
        if schedule:
            print(f"\n{len(topo.schedule)} schedule steps, in seconds after the LAN is "
                  f"healthy:\n{schedule}")
    _print_warnings(topo)
    return EXIT_OK


async def cmd_render(args: argparse.Namespace) -> int:
    from virtwire.orchestrator.render import holds_keys, render, write_output

    topo = load_topology(args.file)
    output = None if args.output in (None, "-") else Path(args.output)
    text = render(topo, args.format, args.subnet, output=output,
                  certs_dir=Path(args.certs_dir) if args.certs_dir else None,
                  log_format=args.log_format, trace=_trace_flags(args))
    _print_warnings(topo)
    if output is None:
        sys.stdout.write(text)
    else:
        write_output(output, text, holds_keys(topo, args.format))
    return EXIT_OK


# -- arguments ------------------------------------------------------------------------
_FILE_HELP = "the topology file (YAML: name, nodes, links; see examples/)"


def _add_lan_arguments(sp: argparse.ArgumentParser) -> None:
    """LAN as a positional or as --lan LAN, as the verbs on a LAN's nodes take it."""
    sp.add_argument("name", nargs="?", metavar="LAN",
                    help="the LAN (default: the only one running); or --lan LAN")
    sp.add_argument("--lan", help="the LAN, when several run")


def lan_name(args: argparse.Namespace) -> str | None:
    """The LAN a verb names, as LAN or --lan LAN (None: the only one running)."""
    if args.name and args.lan and args.name != args.lan:
        raise ConfigError(f"two LANs named: {args.name} and --lan {args.lan}")
    name: str | None = args.lan or args.name
    return name


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    val = sub.add_parser("validate", allow_abbrev=False,
                         help="check a topology file (YAML) and show its plan",
                         description="Check a topology file and print its plan: the "
                         "services 'up' starts, in order, where each runs, whom it dials "
                         "and its addresses. Errors read FILE:LINE: WHERE: WHAT (exit 2).")
    val.set_defaults(verb=cmd_validate)
    val.add_argument("file", metavar="FILE", help=_FILE_HELP)
    val.add_argument("--json", action="store_true",
                     help="print the resolved topology (nodes, services, links) as JSON")

    rnd = sub.add_parser("render", allow_abbrev=False,
                         help="render a topology as a compose file or "
                         "Kubernetes manifests")
    rnd.set_defaults(verb=cmd_render)
    rnd.add_argument("format", choices=["compose", "k8s"])
    rnd.add_argument("file", metavar="FILE", help=_FILE_HELP)
    rnd.add_argument("-o", "--output", help="write here instead of stdout")
    rnd.add_argument("--subnet", default="", help="compose: the network's subnet, inside "
                     "198.18.0.0/15 (default 198.18.20.0/24)")
    rnd.add_argument("--certs-dir", metavar="DIR",
                     help="with tls: in the topology, where the services' certificates "
                          "are issued (default: OUTPUT-STEM-certs next to -o)")
    rnd.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                     help="every service's --log-format: text (the default, adds nothing) "
                          "or json (docs/logs.md)")
    _add_trace_arguments(rnd)

    up = sub.add_parser("up", allow_abbrev=False, help="run a LAN from a topology file",
                        description="Run a LAN from a topology file: start its services "
                        "in order, wire their links, wait until every one is SERVING, "
                        "streaming the progress. In the foreground until Ctrl-C (which "
                        "stops the LAN), or with --detach in the background until "
                        "'virtwire down'.")
    up.set_defaults(verb=cmd_up)
    up.add_argument("file", metavar="FILE", help=_FILE_HELP + "; 'virtwire validate FILE' "
                    "shows what it starts")
    up.add_argument("--detach", "-d", action="store_true",
                    help="leave the LAN running in the background")
    up.add_argument("--backend", choices=["process", "docker"], default="process",
                    help="how this machine runs its services: local processes on "
                         "loopback (default) or a container each (image virtwire:VERSION, "
                         "'make image'); nodes with a host: run on that host")
    up.add_argument("--subnet", default="", help="docker: the LAN network's subnet, inside "
                    "198.18.0.0/15 (default: the highest free 198.19.N.0/24)")
    up.add_argument("--metrics", nargs="?", type=_metrics_port, const=DEFAULT_METRICS_PORT,
                    default=0, metavar="PORT",
                    help="every service serves Prometheus /metrics from PORT up in start "
                         "order, numbered per machine: this machine's on 127.0.0.1 (docker: "
                         "each container on PORT), those with a host: on that host's "
                         "address (default "
                         f"{DEFAULT_METRICS_PORT}; also the topology's metrics: {{port: N}}; "
                         "docs/metrics.md); 'status' lists them")
    up.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                    help="text (the default) or json (one object per line; docs/logs.md): "
                         "the orchestrator's log and those of the services it starts "
                         "(their NAME.log in the LAN's state dir, or the containers' logs)")
    _add_trace_arguments(up)
    up.add_argument("--trace-file", action="store_true",
                    help="process backend: each service also writes its spans as JSON "
                         "lines to traces/NAME.jsonl in the LAN's state dir")
    down = sub.add_parser("down", allow_abbrev=False, help="stop a running LAN",
                          description="Stop a LAN's services and remove its state (and, "
                          "with docker, its containers and network); also after its "
                          "orchestrator died. With no LAN running it says so, exit 0.")
    down.set_defaults(verb=cmd_down)
    tls.add_arguments(down, default_name=tls.DEFAULT_CLIENT_NAME)
    _add_lan_arguments(down)
    status = sub.add_parser("status", allow_abbrev=False,
                            help="nodes, health, links and counters of a LAN",
                            description="A LAN's services (where, address, pid, health, "
                            "restarts) and NetClients (link, rx/tx, drops); exit 1 if a "
                            "service is not SERVING.")
    status.set_defaults(verb=cmd_status)
    tls.add_arguments(status, default_name=tls.DEFAULT_CLIENT_NAME)
    _add_lan_arguments(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
