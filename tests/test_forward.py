"""The docker runtime's publish: relay (orchestrator/forward.py), on loopback."""

from __future__ import annotations

import asyncio

import pytest

from virtwire.address import SockAddr
from virtwire.errors import BackendError
from virtwire.orchestrator import forward
from virtwire.orchestrator.forward import PortForwarder


async def _echo_server() -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
        writer.close()
    return await asyncio.start_server(echo, "127.0.0.1", 0)


async def test_relays_both_ways_and_half_closes() -> None:
    echo = await _echo_server()
    port = echo.sockets[0].getsockname()[1]
    fwd = PortForwarder(SockAddr("127.0.0.1", 0), SockAddr("127.0.0.1", port))
    await fwd.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", fwd.bound.port)
        payload = bytes(range(256)) * 1024
        writer.write(payload)
        writer.write_eof()
        got = await asyncio.wait_for(reader.read(-1), 10)
        assert got == payload
        writer.close()
        assert fwd.accepted == 1 and fwd.refused == 0 and fwd.target_failed == 0
    finally:
        await fwd.close()
        echo.close()


async def test_connections_over_the_cap_are_refused_and_counted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forward, "MAX_CONNECTIONS", 2)
    echo = await _echo_server()
    fwd = PortForwarder(SockAddr("127.0.0.1", 0),
                        SockAddr("127.0.0.1", echo.sockets[0].getsockname()[1]))
    await fwd.start()
    try:
        held = [await asyncio.open_connection("127.0.0.1", fwd.bound.port) for _ in range(2)]
        for _, w in held:
            w.write(b"x")
        for r, _ in held:
            assert await asyncio.wait_for(r.readexactly(1), 10) == b"x"
        reader, _ = await asyncio.open_connection("127.0.0.1", fwd.bound.port)
        assert await asyncio.wait_for(reader.read(-1), 10) == b""
        assert fwd.refused == 1 and fwd.accepted == 2
    finally:
        await fwd.close()
        echo.close()


async def test_an_unreachable_target_is_counted_and_closes() -> None:
    echo = await _echo_server()
    dead = echo.sockets[0].getsockname()[1]
    echo.close()
    await echo.wait_closed()
    fwd = PortForwarder(SockAddr("127.0.0.1", 0), SockAddr("127.0.0.1", dead))
    await fwd.start()
    try:
        reader, _ = await asyncio.open_connection("127.0.0.1", fwd.bound.port)
        assert await asyncio.wait_for(reader.read(-1), 10) == b""
        assert fwd.target_failed == 1
    finally:
        await fwd.close()


async def test_a_taken_address_is_a_backend_error() -> None:
    echo = await _echo_server()
    taken = echo.sockets[0].getsockname()[1]
    try:
        with pytest.raises(BackendError, match=r"cannot publish on 127\.0\.0\.1"):
            await PortForwarder(SockAddr("127.0.0.1", taken), SockAddr("127.0.0.1", 1)).start()
    finally:
        echo.close()
