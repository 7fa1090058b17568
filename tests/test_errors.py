"""The one error path: domain errors <-> gRPC statuses (virtwire.rpc.status).

Servers raise a ``VirtwireError`` and the interceptor every ServiceHost installs
answers with ``STATUS_OF``'s code and the error's message; clients turn the
status back into ``ERROR_OF``'s type. Both over real channels. And two rules of
the source: no server module aborts by hand, and every exception class defined
in virtwire is a VirtwireError.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

import virtwire
from virtwire import errors
from virtwire.errors import VirtwireError
from virtwire.guest.driver import DriverError
from virtwire.guest.responder import MalformedFrame
from virtwire.mem.guestmem import GuestMemClosedError, GuestMemRangeError
from virtwire.net.eth import FrameError
from virtwire.net.hub import HubError
from virtwire.rpc.status import (
    ERROR_OF,
    STATUS_OF,
    error_from_rpc,
    forwarded,
    status_for,
    translated,
)
from virtwire.server.hub import HubServer
from virtwire.topology import TopologyError
from virtwire.v1 import netclient_pb2, netclient_pb2_grpc

SERVICES = Path(virtwire.__file__).parent
MESSAGE = "port p0: the reason, as the user reads it"

#: Every domain error type of virtwire.errors.
DOMAIN_ERRORS = [cls for cls in vars(errors).values()
                 if isinstance(cls, type) and issubclass(cls, VirtwireError)]


# -- servers: a raised domain error is answered with its status -----------------------
def _raising(monkeypatch: pytest.MonkeyPatch, hub: HubServer, exc: Exception) -> None:
    """Make every NetClient lookup of ``hub``'s handlers raise ``exc``."""
    def get(name: str) -> None:
        raise exc
    monkeypatch.setattr(hub.registry, "get", get)


def test_every_domain_error_has_a_status() -> None:
    assert len(DOMAIN_ERRORS) >= 11
    assert set(DOMAIN_ERRORS) <= set(STATUS_OF)


@pytest.mark.parametrize("cls", DOMAIN_ERRORS, ids=lambda c: c.__name__)
async def test_a_handler_raising_it_answers_its_status(
        cls: type[VirtwireError], hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    _raising(monkeypatch, hub, cls(MESSAGE))
    async with grpc.aio.insecure_channel(hub.address) as channel:
        stub = netclient_pb2_grpc.NetClientServiceStub(channel)
        # A unary handler,
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await stub.GetNetClient(netclient_pb2.GetNetClientRequest(name="p0"))
        # and a server-streaming one (an async generator).
        with pytest.raises(grpc.aio.AioRpcError) as stream:
            async for _ in stub.Capture(netclient_pb2.CaptureRequest(name="p0")):
                pass
    for err in (unary.value, stream.value):
        assert (err.code(), err.details()) == (STATUS_OF[cls], MESSAGE)


@pytest.mark.parametrize(("exc", "code"), [
    (FrameError(MESSAGE), grpc.StatusCode.INVALID_ARGUMENT),
    (HubError(MESSAGE), grpc.StatusCode.INVALID_ARGUMENT),
    (MalformedFrame(MESSAGE), grpc.StatusCode.INVALID_ARGUMENT),
    (TopologyError("<t>", [MESSAGE]), grpc.StatusCode.INVALID_ARGUMENT),
    (GuestMemRangeError(MESSAGE), grpc.StatusCode.OUT_OF_RANGE),
    (GuestMemClosedError(MESSAGE), grpc.StatusCode.UNAVAILABLE),
    (DriverError(MESSAGE), grpc.StatusCode.FAILED_PRECONDITION),
], ids=lambda v: type(v).__name__ if isinstance(v, Exception) else v.name)
async def test_errors_of_the_layers_answer_their_domain_status(
        exc: VirtwireError, code: grpc.StatusCode, hub: HubServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _raising(monkeypatch, hub, exc)
    async with grpc.aio.insecure_channel(hub.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await netclient_pb2_grpc.NetClientServiceStub(channel).GetNetClient(
                netclient_pb2.GetNetClientRequest(name="p0"))
    assert (err.value.code(), err.value.details()) == (code, MESSAGE)
    assert status_for(exc) == code


async def test_an_exception_that_is_not_a_domain_error_is_a_bug(
        hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    _raising(monkeypatch, hub, KeyError("p0"))
    async with grpc.aio.insecure_channel(hub.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await netclient_pb2_grpc.NetClientServiceStub(channel).GetNetClient(
                netclient_pb2.GetNetClientRequest(name="p0"))
    assert err.value.code() == grpc.StatusCode.UNKNOWN


# -- clients: a status becomes ERROR_OF's type --------------------------------------
_CODES = [code for code in grpc.StatusCode if code is not grpc.StatusCode.OK]


def _failing(code: grpc.StatusCode) -> grpc.RpcMethodHandler[bytes, bytes]:
    async def fail(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        await context.abort(code, f"details of {code.name}")
        raise AssertionError("abort returned")
    return grpc.unary_unary_rpc_method_handler(fail)


@pytest.fixture
async def answering() -> AsyncIterator[str]:
    """A bare grpc.aio server: ``/test.Codes/NAME`` fails with status NAME."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "test.Codes", {code.name: _failing(code) for code in _CODES})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(0)


async def _failed_call(channel: grpc.aio.Channel, code: grpc.StatusCode) -> grpc.RpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await channel.unary_unary(f"/test.Codes/{code.name}")(b"", timeout=10)
    assert err.value.code() == code
    return err.value


@pytest.mark.parametrize("code", _CODES, ids=lambda c: c.name)
async def test_error_from_rpc_maps_each_code_to_its_type(code: grpc.StatusCode,
                                                        answering: str) -> None:
    async with grpc.aio.insecure_channel(answering) as channel:
        exc = await _failed_call(channel, code)
        error = error_from_rpc(exc, "hub 127.0.0.1:5000")
        assert type(error) is ERROR_OF.get(code, errors.RemoteError)
        assert error.status == code  # type: ignore[attr-defined]
        assert f"details of {code.name}" in str(error) and "hub 127.0.0.1:5000" in str(error)
        with pytest.raises(VirtwireError) as raised:
            with translated("hub 127.0.0.1:5000"):
                await channel.unary_unary(f"/test.Codes/{code.name}")(b"", timeout=10)
        assert type(raised.value) is type(error) and str(raised.value) == str(error)
        # Forwarded by a server: the callee's status and details, unchanged.
        with pytest.raises(VirtwireError) as passed_on:
            with forwarded():
                await channel.unary_unary(f"/test.Codes/{code.name}")(b"", timeout=10)
        assert isinstance(passed_on.value, ERROR_OF.get(code, errors.RemoteError))
        assert str(passed_on.value) == f"details of {code.name}"
        assert status_for(passed_on.value) == code


async def test_messages_name_the_peer_and_the_code(answering: str) -> None:
    async with grpc.aio.insecure_channel(answering) as channel:
        down = await _failed_call(channel, grpc.StatusCode.UNAVAILABLE)
        refused = await _failed_call(channel, grpc.StatusCode.NOT_FOUND)
        bug = await _failed_call(channel, grpc.StatusCode.INTERNAL)
    assert str(error_from_rpc(down, "hub X")) == "cannot reach hub X: details of UNAVAILABLE"
    assert str(error_from_rpc(refused, "hub X")) == "hub X: NOT_FOUND: details of NOT_FOUND"
    assert str(error_from_rpc(bug, "hub X")) == "hub X: INTERNAL: details of INTERNAL"
    # Without a peer to name: the details, and the code if it has no domain type.
    assert str(error_from_rpc(refused)) == "details of NOT_FOUND"
    assert str(error_from_rpc(bug)) == "details of INTERNAL (INTERNAL)"


# -- the source ----------------------------------------------------------------------
def test_no_server_module_aborts_by_hand() -> None:
    offenders = []
    for path in sorted((SERVICES / "server").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bcontext\.abort\(|\babort_for\(", line):
                offenders.append(f"{path.relative_to(SERVICES)}:{n}: {line.strip()}")
    assert not offenders, "raise a domain error instead:\n" + "\n".join(offenders)


def _modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages([str(SERVICES)], "virtwire."):
        if info.name.startswith("virtwire.v1") or info.name.rsplit(".", 1)[-1] == "__main__":
            continue
        names.append(info.name)
    return names


def test_every_exception_class_is_a_virtwire_error() -> None:
    modules = _modules()
    assert "virtwire.net.eth" in modules and "virtwire.server.base" in modules
    outside = []
    for name in modules:
        module = importlib.import_module(name)
        for cls in vars(module).values():
            if inspect.isclass(cls) and issubclass(cls, BaseException) \
                    and cls.__module__ == name and not issubclass(cls, VirtwireError):
                outside.append(f"{name}.{cls.__qualname__}")
    assert not outside, f"not VirtwireErrors: {outside}"
