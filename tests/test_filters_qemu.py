"""QEMU's filters (dump, buffer, mirror, redirector) and their socket chardevs
(issue 11): a dump opens in tshark, buffer releases in batches, a raw client
reads a mirror socket, a redirector round-trips through another process, and
bad input is refused and changes nothing."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from virtwire.errors import BackendError, ConfigError, NotFoundError
from virtwire.net import filter_buffer, filter_dump, filter_mirror, filter_redirector
from virtwire.net.chardev import (
    WRITE_BUFFER_MAX,
    Chardev,
    ChardevSpec,
    close_chardevs,
    open_chardevs,
)
from virtwire.net.eth import NET_BUFSIZE
from virtwire.net.filter import FilterContext, FilterDirection, NetFilter
from virtwire.net.filter_types import new_filter
from virtwire.net.net import NetClient
from virtwire.net.pcap import read_pcap_records

from support.doubles import until

pytestmark = pytest.mark.timeout(60)

# The modules register their types on import (new_filter loads them only when
# no type is registered yet).
assert {m.__name__ for m in (filter_buffer, filter_dump, filter_mirror, filter_redirector)}

LEN = struct.Struct(">I")


class Sink(NetClient):
    def __init__(self, name: str, accept: bool = True) -> None:
        super().__init__(name)
        self.got: list[bytes] = []
        self.accept = accept

    def receive(self, data: bytes) -> int:
        if not self.accept:
            return 0
        self.got.append(data)
        return len(data)

    def can_receive(self) -> bool:
        return self.accept


class Log(NetFilter):
    kind = "log"

    def __init__(self, fid: str, log: list[bytes], **kw: Any) -> None:
        super().__init__(fid, **kw)
        self.log = log

    def filter_receive(self, direction: FilterDirection, sender: NetClient, flags: int,
                       data: bytes) -> int:
        self.log.append(data)
        return 0


class _Timer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A Scheduler whose time moves only in ``advance``."""

    def __init__(self) -> None:
        self.t = 100.0
        self._heap: list[tuple[float, int, _Timer, Callable[[], None]]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.t

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Timer:
        handle = _Timer()
        heapq.heappush(self._heap, (self.t + delay, next(self._seq), handle, callback))
        return handle

    def pending(self) -> int:
        return sum(1 for *_, h, _cb in self._heap if not h.cancelled)

    def advance(self, dt: float) -> None:
        target = self.t + dt
        while self._heap and self._heap[0][0] <= target + 1e-12:
            when, _, handle, callback = heapq.heappop(self._heap)
            self.t = max(self.t, when)
            if not handle.cancelled:
                callback()
        self.t = target


def pair() -> tuple[Sink, Sink]:
    a, b = Sink("a"), Sink("b")
    a.peer, b.peer = b, a
    return a, b


def frames(n: int, size: int = 60) -> list[bytes]:
    return [bytes([i % 256]) * size for i in range(n)]


def make(kind: str, fid: str, props: Mapping[str, str], ctx: FilterContext,
         direction: str = "all") -> NetFilter:
    return new_filter(kind, fid, props, ctx, direction=direction)


# -- dump ----------------------------------------------------------------------------------

def tshark_fields(path: Path, *fields: str) -> list[list[str]]:
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed (make debs installs it)")
    out = subprocess.run([tshark, "-r", str(path), "-T", "fields",
                          *itertools.chain.from_iterable(("-e", f) for f in fields)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [line.split("\t") for line in out.splitlines()]


def test_dump_writes_a_pcap_tshark_reads_and_packets_pass(tmp_path: Path) -> None:
    a, b = pair()
    dump = make("dump", "d0", {"file": "out.pcap"}, FilterContext(dump_dir=tmp_path))
    a.add_filter(dump)
    sent = [b"\x02" * 12 + b"\x08\x00" + bytes(range(46)), b"\xff" * 1514, b"\x11" * 9000]
    for frame in sent:
        a.send_packet(frame)
    b.send_packet(b"\x33" * 70)  # rx of a: a queue=all dump sees it too
    assert b.got == sent and a.got == [b"\x33" * 70]
    a.remove_filter("d0")  # flushes and closes
    path = tmp_path / "out.pcap"
    assert tshark_fields(path, "frame.len") == [["60"], ["1514"], ["9000"], ["70"]]
    records = read_pcap_records(path.read_bytes())
    assert records == [(f, len(f)) for f in [*sent, b"\x33" * 70]]
    assert dump.counters()["written"] == 4 and dump.counters()["not_written"] == 0
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_dump_maxlen_truncates_and_keeps_the_real_length(tmp_path: Path) -> None:
    a, _ = pair()
    a.add_filter(make("dump", "d0", {"file": "cut.pcap", "maxlen": "100"},
                      FilterContext(dump_dir=tmp_path)))
    a.send_packet(b"\xab" * 1000)
    a.send_packet(b"\xcd" * 64)
    a.remove_filter("d0")
    path = tmp_path / "cut.pcap"
    assert tshark_fields(path, "frame.len", "frame.cap_len") == [["1000", "100"], ["64", "64"]]
    assert read_pcap_records(path.read_bytes()) == [(b"\xab" * 100, 1000), (b"\xcd" * 64, 64)]


def test_dump_writes_are_buffered_and_flushed_by_the_timer(tmp_path: Path) -> None:
    clock = ManualClock()
    a, _ = pair()
    dump = make("dump", "d0", {"file": "t.pcap"}, FilterContext(dump_dir=tmp_path,
                                                                  scheduler=clock))
    a.add_filter(dump)
    path = tmp_path / "t.pcap"
    assert path.stat().st_size == 24  # the header at once: a valid empty capture
    a.send_packet(b"\x01" * 60)
    a.send_packet(b"\x02" * 60)
    assert path.stat().st_size == 24  # buffered
    clock.advance(filter_dump.FLUSH_INTERVAL_S)
    assert path.stat().st_size == 24 + 2 * (16 + 60)
    assert dump.counters()["flushes"] == 2 and clock.pending() == 0  # the header, then these
    # A full buffer goes out without waiting for the timer.
    for _ in range(filter_dump.FLUSH_BYTES // 1000 + 1):
        a.send_packet(b"\x03" * 984)
    assert path.stat().st_size > 24 + filter_dump.FLUSH_BYTES


def test_dump_stops_writing_at_maxsize_and_frames_still_pass(tmp_path: Path) -> None:
    a, b = pair()
    dump = make("dump", "d0", {"file": "cap.pcap", "maxsize": "1K"},
                FilterContext(dump_dir=tmp_path))
    a.add_filter(dump)
    for frame in frames(20, 100):
        a.send_packet(frame)
    a.remove_filter("d0")
    fit = (1024 - 24) // (16 + 100)
    assert len(b.got) == 20
    assert dump.counters()["written"] == fit and dump.counters()["not_written"] == 20 - fit
    assert (tmp_path / "cap.pcap").stat().st_size == 24 + fit * 116 <= 1024
    assert len(tshark_fields(tmp_path / "cap.pcap", "frame.len")) == fit


def test_dump_update_to_a_new_file_and_a_refused_update_changes_nothing(tmp_path: Path) -> None:
    a, _ = pair()
    dump = make("dump", "d0", {"file": "one.pcap", "maxlen": "200"},
                FilterContext(dump_dir=tmp_path))
    a.add_filter(dump)
    a.send_packet(b"\x01" * 60)
    with pytest.raises(ConfigError, match="snaplen"):
        dump.configure({"maxlen": "300"})  # above the open file's header
    with pytest.raises(ConfigError, match="plain file name"):
        dump.configure({"file": "../two.pcap", "maxlen": "100"})
    assert dump.properties()["file"] == "one.pcap" and dump.maxlen == 200
    dump.configure({"file": "two.pcap", "maxlen": "300"})
    a.send_packet(b"\x02" * 60)
    a.remove_filter("d0")
    assert read_pcap_records((tmp_path / "one.pcap").read_bytes()) == [(b"\x01" * 60, 60)]
    assert read_pcap_records((tmp_path / "two.pcap").read_bytes()) == [(b"\x02" * 60, 60)]


def test_dump_write_error_stops_writing_and_counts_what_it_lost(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = pair()
    dump = make("dump", "d0", {"file": "full.pcap"}, FilterContext(dump_dir=tmp_path))
    a.add_filter(dump)
    a.send_packet(b"\x01" * 60)

    def enospc(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(filter_dump.os, "write", enospc)
    dump.flush()
    a.send_packet(b"\x02" * 60)
    monkeypatch.undo()
    a.remove_filter("d0")
    assert dump.counters()["write_errors"] == 1 and dump.counters()["not_written"] == 2
    assert len(b.got) == 2 and (tmp_path / "full.pcap").stat().st_size == 24


@pytest.mark.parametrize("name", ["../x.pcap", "a/b.pcap", "/etc/passwd", ".hidden", "..",
                                  "", "x\0y", "a" * 200])
def test_dump_refuses_a_path_as_its_file(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="plain file name"):
        make("dump", "d0", {"file": name}, FilterContext(dump_dir=tmp_path / "d"))
    assert not (tmp_path / "x.pcap").exists()


def test_dump_bad_input(tmp_path: Path) -> None:
    ctx = FilterContext(dump_dir=tmp_path)
    with pytest.raises(ConfigError, match="started without --dump-dir"):
        make("dump", "d0", {"file": "x.pcap"}, FilterContext())
    with pytest.raises(ConfigError, match="file= is required"):
        make("dump", "d0", {}, ctx)
    for props, match in [({"maxlen": "0"}, "out of range"), ({"maxlen": "ten"}, "whole"),
                         ({"maxsize": "1"}, "out of range"), ({"maxsize": "1P"}, "not a size"),
                         ({"maxsize": "64G"}, "out of range"), ({"bogus": "1"}, "unknown")]:
        with pytest.raises(ConfigError, match=match):
            make("dump", "d0", {"file": "x.pcap", **props}, ctx)
    assert list(tmp_path.iterdir()) == []  # nothing was created


def test_dump_refuses_links_special_files_and_a_file_in_use(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    dump_dir = tmp_path / "dumps"
    dump_dir.mkdir()
    ctx = FilterContext(dump_dir=dump_dir)
    (dump_dir / "link.pcap").symlink_to(victim)
    with pytest.raises(ConfigError, match="symbolic link"):
        make("dump", "d0", {"file": "link.pcap"}, ctx)
    os.link(victim, dump_dir / "hard.pcap")
    with pytest.raises(ConfigError, match="hard links"):
        make("dump", "d0", {"file": "hard.pcap"}, ctx)
    assert victim.read_bytes() == b"keep me"
    os.mkfifo(dump_dir / "fifo.pcap")
    with pytest.raises(ConfigError, match="not a regular file"):  # and does not block
        make("dump", "d0", {"file": "fifo.pcap"}, ctx)
    (dump_dir / "dir.pcap").mkdir()
    with pytest.raises(ConfigError, match="not a regular file"):
        make("dump", "d0", {"file": "dir.pcap"}, ctx)
    first = make("dump", "d1", {"file": "busy.pcap"}, ctx)
    with pytest.raises(ConfigError, match="another dump filter"):
        make("dump", "d2", {"file": "busy.pcap"}, ctx)
    first.cleanup()
    make("dump", "d3", {"file": "busy.pcap"}, ctx).cleanup()  # free again once closed


# -- buffer --------------------------------------------------------------------------------

def test_buffer_releases_the_whole_queue_each_interval_on_its_grid() -> None:
    clock = ManualClock()
    a, b = pair()
    buf = make("buffer", "b0", {"interval": "10000"}, FilterContext(scheduler=clock))
    a.add_filter(buf)
    sent = frames(3)
    clock.advance(0.002)
    for frame in sent:
        assert a.send_packet(frame) == 60  # taken: counts as sent
    assert b.got == [] and a.stats.tx_frames == 3
    clock.advance(0.0079)
    assert b.got == []
    clock.advance(0.0001)  # 10 ms after the interval was set: one batch
    assert b.got == sent
    clock.advance(0.002)  # t = 12 ms: the next release is at 20 ms, not 22
    a.send_packet(b"\x09" * 60)
    clock.advance(0.0079)
    assert len(b.got) == 3
    clock.advance(0.0001)
    assert b.got[3:] == [b"\x09" * 60]
    assert buf.stats.taken == 4 and buf.stats.released == 4
    assert buf.counters() == {"held": 0, "held_bytes": 0, "releases": 2}
    assert clock.pending() == 0  # idle: no timer


def test_buffer_direction_and_release_through_the_rest_of_the_chain() -> None:
    clock = ManualClock()
    a, b = pair()
    log: list[bytes] = []
    b.add_filter(Log("b-rx", log, direction="rx"))
    a.add_filter(make("buffer", "b0", {"interval": "1000"}, FilterContext(scheduler=clock),
                      direction="tx"))
    a.add_filter(Log("after", log, direction="tx"))
    a.send_packet(b"\x01" * 60)
    b.send_packet(b"\x02" * 60)  # rx of a: a tx buffer does not hold it
    assert a.got == [b"\x02" * 60] and log == []
    clock.advance(0.001)
    assert log == [b"\x01" * 60, b"\x01" * 60] and b.got == [b"\x01" * 60]


def test_buffer_status_off_and_removal_release_everything_at_once() -> None:
    clock = ManualClock()
    a, b = pair()
    buf = make("buffer", "b0", {"interval": "60000000"}, FilterContext(scheduler=clock))
    a.add_filter(buf)
    a.send_packet(b"\x01" * 60)
    buf.configure({"status": "off"})
    assert b.got == [b"\x01" * 60] and clock.pending() == 0
    a.send_packet(b"\x02" * 60)  # off: passes
    assert b.got[-1] == b"\x02" * 60
    buf.configure({"status": "on"})
    a.send_packet(b"\x03" * 60)
    a.remove_filter("b0")
    assert b.got[-1] == b"\x03" * 60 and clock.pending() == 0


def test_buffer_queue_cap_is_counted_and_released_frames_queue_at_a_busy_receiver(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(filter_buffer, "MAX_PACKETS", 5)
    clock = ManualClock()
    a, b = pair()
    buf = make("buffer", "b0", {"interval": "1000"}, FilterContext(scheduler=clock))
    a.add_filter(buf)
    for frame in frames(8):
        a.send_packet(frame)
    assert buf.stats.dropped == {"queue_full": 3} and a.stats.dropped_filter == 3
    b.accept = False
    clock.advance(0.001)
    assert b.got == [] and len(b.incoming_queue) == 5  # the receiver's queue has them
    b.accept = True
    b.flush_queued_packets()
    assert b.got == frames(5)


def test_buffer_release_is_sliced_and_keeps_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(filter_buffer, "RELEASE_SLICE", 2)
    clock = ManualClock()
    a, b = pair()
    a.add_filter(make("buffer", "b0", {"interval": "1000"}, FilterContext(scheduler=clock)))
    for frame in frames(5):
        a.send_packet(frame)
    clock.advance(0.001)  # the tick and the slices due at the same time
    assert b.got == frames(5)


def test_buffer_bad_input_changes_nothing() -> None:
    clock = ManualClock()
    ctx = FilterContext(scheduler=clock)
    for props, match in [({}, "interval= is required"), ({"interval": "0"}, "out of range"),
                         ({"interval": "-5"}, "out of range"),
                         ({"interval": "60000001"}, "out of range"),
                         ({"interval": "1ms"}, "whole number")]:
        with pytest.raises(ConfigError, match=match):
            make("buffer", "b0", props, ctx)
    buf = make("buffer", "b0", {"interval": "500"}, ctx)
    with pytest.raises(ConfigError, match="out of range"):
        buf.configure({"interval": "0", "status": "off"})
    assert buf.properties() == {"interval": "500"} and buf.status


async def test_buffer_releases_in_batches_on_a_real_loop() -> None:
    loop = asyncio.get_running_loop()
    a, b = pair()
    arrivals: list[tuple[float, int]] = []
    receive = b.receive

    def timed(data: bytes) -> int:
        arrivals.append((loop.time(), len(b.got)))
        return receive(data)

    b.receive = timed  # type: ignore[method-assign]
    interval_s = 0.05
    buf = make("buffer", "b0", {"interval": str(int(interval_s * 1e6))},
               FilterContext(scheduler=loop))
    a.add_filter(buf)
    epoch = loop.time()
    for batch in range(3):
        for frame in frames(4):
            a.send_packet(frame)
        await asyncio.sleep(0)
        assert len(b.got) == batch * 4  # held, not trickled
        await until(lambda n=batch: len(b.got) == (n + 1) * 4)
    # Each batch arrived whole, in one release, never before its tick.
    assert buf.counters()["releases"] == 3
    assert all(t >= epoch + interval_s - 0.001 for t, _ in arrivals)
    a.remove_filter("b0")


# -- chardevs ------------------------------------------------------------------------------

def test_chardev_spec_parse_and_format() -> None:
    spec = ChardevSpec.parse("socket,id=c0,host=127.0.0.1,port=0,server=on,wait=off")
    assert (spec.id, spec.addr.host, spec.addr.port, spec.server, spec.wait) == (
        "c0", "127.0.0.1", 0, True, False)
    assert ChardevSpec.parse(spec.format()) == spec
    unix = ChardevSpec.parse("socket,id=u,path=/tmp/u.sock,reconnect=0.5")
    assert unix.addr.path == "/tmp/u.sock" and not unix.server and unix.reconnect == 0.5
    assert ChardevSpec.parse(unix.format()) == unix
    legacy = ChardevSpec.parse("socket,id=l,host=::1,port=4444,server,nowait")
    assert legacy.server and not legacy.wait and legacy.addr.host == "::1"
    assert ChardevSpec.parse("socket,id=s,path=/x,server=on").wait  # QEMU's default


@pytest.mark.parametrize("text,match", [
    ("file,id=c0,path=/x", "backend must be socket"),
    ("socket,host=127.0.0.1,port=1", "id= is required"),
    ("socket,id=0bad,path=/x", "id= is required"),
    ("socket,id=c0,port=1", "host= and port="),
    ("socket,id=c0,host=127.0.0.1", "host= and port="),
    ("socket,id=c0,path=/x,host=127.0.0.1", "not both"),
    ("socket,id=c0,host=127.0.0.1,port=0", "out of range"),  # a client needs a port
    ("socket,id=c0,host=127.0.0.1,port=70000,server=on", "out of range"),
    ("socket,id=c0,host=bad!host,port=1", "not a host"),
    ("socket,id=c0,path=/x,wait=off", "server=on only"),
    ("socket,id=c0,path=/x,server=on,reconnect=1", "server=off only"),
    ("socket,id=c0,path=/x,reconnect=-1", "out of range"),
    ("socket,id=c0,path=/x,server=maybe", "not on or off"),
    ("socket,id=c0,path=/x,telnet=on", "unknown option"),
    ("socket,id=c0,path=/x,path=/y", "given twice"),
    ("socket,id=c0,path=" + "p" * 200, "unix socket path"),
    ("socket,id=c0,path=/x,junk", "not KEY=VALUE"),
])
def test_chardev_spec_refuses_bad_text(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ChardevSpec.parse(text)


async def test_open_chardevs_refuses_a_bad_set_and_closes_what_it_opened(tmp_path: Path) -> None:
    spec = ChardevSpec.parse("socket,id=a,host=127.0.0.1,port=0,server=on,wait=off")
    with pytest.raises(ConfigError, match="given twice"):
        await open_chardevs([spec, spec])
    opened = await open_chardevs([spec])
    port = opened["a"].local_address.port
    busy = ChardevSpec.parse(f"socket,id=b,host=127.0.0.1,port={port},server=on,wait=off")
    unix = ChardevSpec.parse(f"socket,id=u,path={tmp_path}/u.sock,server=on,wait=off")
    with pytest.raises(BackendError, match="cannot listen"):
        await open_chardevs([unix, busy])
    assert not (tmp_path / "u.sock").exists()  # the first was closed again
    await close_chardevs(opened)
    refused = ChardevSpec.parse(f"socket,id=c,host=127.0.0.1,port={port},reconnect=0")
    with pytest.raises(BackendError, match="cannot connect"):
        await open_chardevs([refused])  # reconnect=0: one dial, at open


async def test_chardev_server_wait_on_waits_for_its_first_client(tmp_path: Path) -> None:
    path = tmp_path / "w.sock"
    opening = asyncio.ensure_future(open_chardevs(
        [ChardevSpec.parse(f"socket,id=w,path={path},server=on")]))
    await until(path.exists)
    await asyncio.sleep(0.02)
    assert not opening.done()
    _, writer = await asyncio.open_unix_connection(str(path))
    chardevs = await opening
    assert chardevs["w"].stats.connects == 1
    writer.close()
    await close_chardevs(chardevs)
    assert not path.exists()  # a server removes its socket


async def test_chardev_client_reconnects_after_the_server_drops_it() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def on_client(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.append(w)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    chardevs = await open_chardevs([ChardevSpec.parse(
        f"socket,id=c,host=127.0.0.1,port={port},reconnect=0.02")])
    chardev = chardevs["c"]
    chardev.claim(object(), "writer", reads=False)  # a writer's chardev sees the hangup
    await until(lambda: len(accepted) == 1 and chardev.conn is not None)
    assert chardev.write_frame(b"\x01" * 60) is None
    accepted[0].close()
    await until(lambda: len(accepted) == 2 and chardev.conn is not None)
    assert chardev.stats.connects == 2 and chardev.stats.disconnects == 1
    await close_chardevs(chardevs)
    for w in accepted:
        w.close()
    server.close()
    await server.wait_closed()


@pytest.fixture
async def chardevs(tmp_path: Path) -> AsyncIterator[dict[str, Chardev]]:
    """Three TCP servers and one unix server on loopback, none waiting."""
    specs = [ChardevSpec.parse(f"socket,id={cid},host=127.0.0.1,port=0,server=on,wait=off")
             for cid in ("c0", "c1", "c2")]
    specs.append(ChardevSpec.parse(f"socket,id=u0,path={tmp_path}/u0.sock,server=on,wait=off"))
    opened = await open_chardevs(specs)
    yield opened
    await close_chardevs(opened)


async def connect(chardev: Chardev) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    addr = chardev.local_address
    if addr.is_unix:
        conn = await asyncio.open_unix_connection(addr.path)
    else:
        conn = await asyncio.open_connection(addr.host, addr.port)
    await until(lambda: chardev.conn is not None)
    return conn


async def read_frames(reader: asyncio.StreamReader, n: int, vnet: bool = False) -> list[bytes]:
    out = []
    async with asyncio.timeout(10):
        for _ in range(n):
            (length,) = LEN.unpack(await reader.readexactly(4))
            if vnet:
                assert LEN.unpack(await reader.readexactly(4)) == (0,)
            out.append(await reader.readexactly(length))
    return out


def encode(frames_: list[bytes]) -> bytes:
    return b"".join(LEN.pack(len(f)) + f for f in frames_)


async def test_chardev_reader_takes_the_largest_frame_and_closes_on_a_bad_length(
        chardevs: dict[str, Chardev]) -> None:
    chardev = chardevs["c0"]
    got: list[bytes] = []
    chardev.claim(object(), "test")
    chardev.set_frame_handler(got.append)
    _, writer = await connect(chardev)
    big = b"\x5a" * NET_BUFSIZE
    tiny = frames(1000, 1)  # many in one read: handed on slice by slice, in order
    writer.write(encode([big, *tiny]))
    await until(lambda: len(got) == 1001)
    assert got[0] == big and got[1:] == tiny
    writer.write(LEN.pack(NET_BUFSIZE + 1) + b"\x00" * 16)
    await until(lambda: chardev.stats.bad_frames == 1 and chardev.conn is None)
    writer.close()
    _, writer = await connect(chardev)  # the next client is taken
    writer.write(LEN.pack(0))
    await until(lambda: chardev.stats.bad_frames == 2 and chardev.conn is None)
    writer.close()
    assert len(got) == 1001


# -- mirror --------------------------------------------------------------------------------

async def test_a_raw_client_reads_exact_copies_from_a_mirror_socket(
        chardevs: dict[str, Chardev]) -> None:
    a, b = pair()
    mirror = make("mirror", "m0", {"outdev": "c0"}, FilterContext(chardevs=chardevs))
    a.add_filter(mirror)
    reader, writer = await connect(chardevs["c0"])
    sent = [bytes([i]) * (60 + 37 * i) for i in range(40)] + [b"\x7e" * NET_BUFSIZE]
    for frame in sent:
        a.send_packet(frame)
    b.send_packet(b"\x42" * 64)  # queue=all: what a receives is mirrored too
    assert await read_frames(reader, len(sent) + 1) == [*sent, b"\x42" * 64]
    assert b.got == sent and a.got == [b"\x42" * 64]  # originals pass on
    assert mirror.stats.added == len(sent) + 1 and mirror.counters()["copies_dropped"] == 0
    writer.close()


async def test_mirror_with_vnet_hdr_support_over_a_unix_chardev(
        chardevs: dict[str, Chardev]) -> None:
    a, _ = pair()
    a.add_filter(make("mirror", "m0", {"outdev": "u0", "vnet_hdr_support": "on"},
                      FilterContext(chardevs=chardevs), direction="tx"))
    reader, writer = await connect(chardevs["u0"])
    a.send_packet(b"\x01" * 60)
    assert await read_frames(reader, 1, vnet=True) == [b"\x01" * 60]
    writer.close()


async def test_mirror_counts_copies_it_cannot_write(chardevs: dict[str, Chardev]) -> None:
    a, b = pair()
    mirror = make("mirror", "m0", {"outdev": "c0"}, FilterContext(chardevs=chardevs))
    a.add_filter(mirror)
    a.send_packet(b"\x01" * 60)  # nobody connected
    assert mirror.counters() == {"copies_dropped_not_connected": 1, "copies_dropped": 1}
    assert b.got == [b"\x01" * 60] and a.stats.dropped_filter == 0
    _reader, writer = await connect(chardevs["c0"])  # connects, never reads
    n = 2000
    for frame in frames(n, 9000):
        a.send_packet(frame)
    conn = chardevs["c0"].conn
    assert conn is not None and conn.buffered() <= WRITE_BUFFER_MAX
    slow = mirror.counters()["copies_dropped_slow_reader"]
    assert slow > 0 and mirror.stats.added + slow == n
    assert chardevs["c0"].stats.dropped_slow_reader == slow
    assert len(b.got) == n + 1
    writer.close()


async def test_a_mirror_chardev_drops_what_its_reader_sends_and_sees_it_hang_up(
        chardevs: dict[str, Chardev]) -> None:
    a, _ = pair()
    a.add_filter(make("mirror", "m0", {"outdev": "c0"}, FilterContext(chardevs=chardevs)))
    chardev = chardevs["c0"]
    _, writer = await connect(chardev)
    writer.write(b"\x00" * 1000)  # not even frames: a mirror never reads them
    await until(lambda: chardev.stats.bytes_discarded == 1000)
    writer.close()
    await until(lambda: chardev.conn is None)  # no traffic needed to see the hangup
    reader, writer = await connect(chardev)  # and the next client is served
    a.send_packet(b"\x05" * 60)
    assert await read_frames(reader, 1) == [b"\x05" * 60]
    writer.close()


def test_mirror_to_another_netclient_sends_the_copy_as_that_netclient() -> None:
    a, b = pair()
    c, d = Sink("c"), Sink("d")
    c.peer, d.peer = d, c
    names = {"a": a, "b": b, "c": c}

    def lookup(name: str) -> NetClient:
        try:
            return names[name]
        except KeyError:
            raise NotFoundError(f"no NetClient {name!r}") from None

    ctx = FilterContext(netclient=lookup)
    log: list[bytes] = []
    c.add_filter(Log("c-tx", log, direction="tx"))
    mirror = make("mirror", "m0", {"netdev_out": "c"}, ctx, direction="tx")
    a.add_filter(mirror)
    a.send_packet(b"\x01" * 60)
    assert b.got == [b"\x01" * 60] and d.got == [b"\x01" * 60] and log == [b"\x01" * 60]
    assert c.got == [] and mirror.stats.added == 1
    c.set_link(False)
    a.send_packet(b"\x02" * 60)
    assert mirror.counters()["copies_dropped_link_down"] == 1 and len(d.got) == 1
    # Mirrored back through itself: the copy is not copied again.
    loop_mirror = make("mirror", "m1", {"netdev_out": "b"}, ctx)
    a.remove_filter("m0")
    a.add_filter(loop_mirror)
    a.send_packet(b"\x03" * 60)
    assert a.got == [b"\x03" * 60] and b.got[-1] == b"\x03" * 60
    assert loop_mirror.counters()["copies_dropped_loop"] == 1 and loop_mirror.stats.added == 1


async def test_mirror_bad_input_changes_nothing(chardevs: dict[str, Chardev]) -> None:
    a, _ = pair()
    ctx = FilterContext(chardevs=chardevs,
                        netclient=lambda name: (a if name == "a" else _missing(name)))
    for props, exc, match in [
            ({}, ConfigError, "is required"),
            ({"outdev": "nope"}, ConfigError, "no chardev 'nope'"),
            ({"outdev": "c0", "netdev_out": "a"}, ConfigError, "not both"),
            ({"netdev_out": "ghost"}, NotFoundError, "ghost"),
            ({"outdev": "c0", "vnet_hdr_support": "maybe"}, ConfigError, "on or off"),
            ({"outdev": "c0", "bogus": "1"}, ConfigError, "unknown")]:
        with pytest.raises(exc, match=match):
            make("mirror", "m0", props, ctx)
    assert all(cd.user == "" for cd in chardevs.values())
    mirror = make("mirror", "m0", {"outdev": "c0"}, ctx)
    a.add_filter(mirror)
    with pytest.raises(ConfigError, match="in use by filter m0"):
        make("mirror", "m1", {"outdev": "c0"}, ctx)
    with pytest.raises(ConfigError, match="is the NetClient the filter is on"):
        mirror.configure({"outdev": "", "netdev_out": "a"})
    with pytest.raises(ConfigError, match="no chardev"):
        mirror.configure({"outdev": "c9"})
    assert mirror.properties() == {"outdev": "c0", "vnet_hdr_support": "off"}
    assert chardevs["c0"].user == "m0"
    mirror.configure({"outdev": "c1"})  # a good update moves the claim
    assert chardevs["c0"].user == "" and chardevs["c1"].user == "m0"
    a.remove_filter("m0")
    assert chardevs["c1"].user == ""


def _missing(name: str) -> NetClient:
    raise NotFoundError(f"no NetClient {name!r}")


# -- redirector ----------------------------------------------------------------------------

ECHO = textwrap.dedent("""
    import socket, struct, sys
    out = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    back = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
    def exact(n):
        data = b""
        while len(data) < n:
            chunk = out.recv(n - len(data))
            if not chunk:
                sys.exit(0)
            data += chunk
        return data
    while True:
        head = exact(4)
        frame = exact(struct.unpack(">I", head)[0])
        back.sendall(head + frame[::-1])  # reversed, so a copy cannot pass for it
""")


async def test_redirector_round_trips_through_an_external_process(
        chardevs: dict[str, Chardev]) -> None:
    a, b = pair()
    log: list[bytes] = []
    a.add_filter(Log("before", log, direction="tx"))
    red = make("redirector", "r0", {"outdev": "c0", "indev": "c1"},
               FilterContext(chardevs=chardevs), direction="tx")
    a.add_filter(red)
    after: list[bytes] = []
    a.add_filter(Log("after", after, direction="tx"))
    rx: list[bytes] = []
    b.add_filter(Log("b-rx", rx, direction="rx"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ECHO, str(chardevs["c0"].local_address.port),
        str(chardevs["c1"].local_address.port))
    try:
        await until(lambda: chardevs["c0"].conn is not None and chardevs["c1"].conn is not None)
        sent = [bytes(range(i, i + 60 + i)) for i in range(50)]
        for frame in sent:
            assert a.send_packet(frame) == len(frame)  # taken
        await until(lambda: len(b.got) == len(sent))
        back = [f[::-1] for f in sent]
        assert b.got == back  # in order, through the process
        assert log == sent and after == back and rx == back
        assert red.counters() == {"redirected": 50} and red.stats.added == 50
        assert red.stats.taken == 50 and red.stats.dropped_total == 0
    finally:
        a.remove_filter("r0")
        await close_chardevs({k: chardevs[k] for k in ("c0", "c1")})
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0  # it saw the end of outdev and left


async def test_redirector_injects_in_its_direction_and_both_ways_for_all(
        chardevs: dict[str, Chardev]) -> None:
    a, b = pair()
    ctx = FilterContext(chardevs=chardevs)
    red = make("redirector", "r0", {"indev": "c0"}, ctx, direction="rx")
    b.add_filter(red)
    _, w0 = await connect(chardevs["c0"])
    w0.write(encode([b"\x01" * 60]))
    await until(lambda: len(b.got) == 1)  # rx of b: as if a (b's peer) sent it to b
    assert b.got == [b"\x01" * 60] and a.got == []
    a.send_packet(b"\x02" * 60)  # no outdev: packets pass
    assert b.got[-1] == b"\x02" * 60
    red_all = make("redirector", "r1", {"indev": "c1"}, ctx)
    a.add_filter(red_all)
    _, w1 = await connect(chardevs["c1"])
    w1.write(encode([b"\x03" * 60]))
    await until(lambda: len(a.got) == 1)
    await until(lambda: len(b.got) == 3)
    assert a.got == [b"\x03" * 60] and b.got[-1] == b"\x03" * 60
    assert red_all.stats.added == 2
    for w in (w0, w1):
        w.close()


async def test_redirector_status_off_stops_reading_indev(chardevs: dict[str, Chardev]) -> None:
    a, b = pair()
    red = make("redirector", "r0", {"indev": "c0"}, FilterContext(chardevs=chardevs),
               direction="tx")
    a.add_filter(red)
    red.configure({"status": "off"})
    _, writer = await connect(chardevs["c0"])
    writer.write(encode([b"\x01" * 60]))
    await asyncio.sleep(0.1)
    assert b.got == [] and chardevs["c0"].stats.frames_in == 0  # waits in the socket
    red.configure({"status": "on"})
    await until(lambda: len(b.got) == 1)
    writer.close()


async def test_redirector_counts_what_outdev_cannot_take(chardevs: dict[str, Chardev]) -> None:
    a, b = pair()
    red = make("redirector", "r0", {"outdev": "c0"}, FilterContext(chardevs=chardevs),
               direction="tx")
    a.add_filter(red)
    assert a.send_packet(b"\x01" * 60) == 60
    assert b.got == [] and red.stats.dropped == {"outdev_not_connected": 1}
    assert a.stats.dropped_filter == 1
    b.send_packet(b"\x02" * 60)  # rx of a: not its direction
    assert a.got == [b"\x02" * 60]


async def test_redirector_bad_input_changes_nothing(chardevs: dict[str, Chardev]) -> None:
    ctx = FilterContext(chardevs=chardevs)
    for props, match in [({}, "indev=CHARDEV, outdev=CHARDEV or both"),
                         ({"indev": "c0", "outdev": "c0"}, "must be different"),
                         ({"indev": "c0", "outdev": "zz"}, "no chardev 'zz'"),
                         ({"indev": "c0", "vnet_hdr_support": "2"}, "on or off")]:
        with pytest.raises(ConfigError, match=match):
            make("redirector", "r0", props, ctx)
    assert all(cd.user == "" and cd.handler is None for cd in chardevs.values())
    with pytest.raises(ConfigError, match="no chardev"):
        make("redirector", "r0", {"indev": "c0"}, FilterContext())
    a, _ = pair()
    red = make("redirector", "r0", {"indev": "c0", "outdev": "c1"}, ctx)
    a.add_filter(red)
    with pytest.raises(ConfigError, match="in use"):
        make("mirror", "m0", {"outdev": "c1"}, ctx)
    with pytest.raises(ConfigError, match="must be different"):
        red.configure({"outdev": "c0"})
    assert red.properties() == {"indev": "c0", "outdev": "c1", "vnet_hdr_support": "off"}
    red.configure({"indev": "c1", "outdev": "c0"})  # swapped
    assert chardevs["c1"].handler is not None and chardevs["c0"].handler is None
    a.remove_filter("r0")
    assert all(cd.user == "" and cd.handler is None for cd in chardevs.values())


def test_every_builtin_type_is_found_whatever_was_imported_first() -> None:
    """A fresh process that imported one type's module still finds the others."""
    code = textwrap.dedent("""
        import virtwire.net.filter_dump
        from virtwire.net.filter import FilterContext
        from virtwire.net.filter_types import new_filter
        import asyncio
        ctx = FilterContext(scheduler=asyncio.new_event_loop())
        print(new_filter("buffer", "b0", {"interval": "5"}, ctx).kind)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.split() == ["buffer"]
