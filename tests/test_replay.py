"""`virtwire replay` (issue 11 item 6) and the pcap reader under it
(virtwire.net.pcap.iter_pcap): a capture written by `virtwire capture` sent
again into an in-process hub, at the file's spacing or as fast as possible;
the same file converted by editcap (microseconds, pcapng) and read by
tshark; frames refused and records skipped counted; bad files and options
exit 2."""

from __future__ import annotations

import asyncio
import io
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from virtwire.cli.exitcode import EXIT_ERROR, EXIT_OK, EXIT_USAGE
from virtwire.cli.replay import Replay
from virtwire.net.pcap import PcapWriter, iter_pcap
from virtwire.server.base import inject
from virtwire.server.hub import HubServer

from support.doubles import Sink, frame, until
from support.need import need

VIRTWIRE_SCRIPT = Path(sys.executable).parent / "virtwire"


@pytest.fixture(scope="module")
def script() -> Path:
    assert VIRTWIRE_SCRIPT.exists(), "pip install -e . makes the virtwire script"
    return VIRTWIRE_SCRIPT


async def _run(script: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(script), *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _tool(*argv: str) -> str:
    """A host tool's stdout; fails the test if it fails."""
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


@pytest.fixture
async def hub_sink(hub: HubServer) -> AsyncIterator[tuple[HubServer, Sink]]:
    """p0 -> hub -> p1 -> sink: what is injected into p0 reaches the sink."""
    hub.add_port("p0")
    p1 = hub.add_port("p1")
    sink = Sink("sink")
    p1.peer, sink.peer = sink, p1
    yield hub, sink


# -- the reader ----------------------------------------------------------------------------
def _usec_pcap(records: list[tuple[int, int, bytes]], order: str = "<",
               linktype: int = 1) -> bytes:
    out = struct.pack(f"{order}IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    for sec, usec, data in records:
        out += struct.pack(f"{order}IIII", sec, usec, len(data), len(data)) + data
    return out


def test_iter_pcap_reads_what_pcap_writer_wrote() -> None:
    buf = io.BytesIO()
    w = PcapWriter(buf)
    w.write(frame(1), 1_700_000_000_123_456_789)
    w.write(frame(2)[:20], 1_700_000_001_000_000_001, orig_len=64)
    got = list(iter_pcap(io.BytesIO(buf.getvalue())))
    assert [(r.frame, r.orig_len, r.timestamp_ns) for r in got] == [
        (frame(1), 64, 1_700_000_000_123_456_789),
        (frame(2)[:20], 64, 1_700_000_001_000_000_001)]


@pytest.mark.parametrize("order", ["<", ">"])
def test_iter_pcap_reads_microsecond_files_in_either_byte_order(order: str) -> None:
    data = _usec_pcap([(10, 5, frame(1)), (11, 999_999, frame(2))], order)
    got = list(iter_pcap(io.BytesIO(data)))
    assert [(r.frame, r.timestamp_ns) for r in got] == [
        (frame(1), 10_000_005_000), (frame(2), 11_999_999_000)]


@pytest.mark.parametrize(("data", "words"), [
    (b"", "not a pcap file"),
    (b"\x0a\x0d\x0d\x0a" + bytes(40), "a pcapng file"),
    (b"GIF89a" + bytes(30), "not a pcap file (magic"),
    (_usec_pcap([], linktype=105), "link type 105, not Ethernet"),
    (_usec_pcap([(1, 0, frame(1))])[:-3], "record 1: the file ends inside its 64 bytes"),
    (_usec_pcap([(1, 0, frame(1))]) + b"\x00\x00", "record 2: the file ends inside its header"),
    (_usec_pcap([(1, 0, frame(1))])[:20], "cut inside its header"),
])
def test_iter_pcap_refuses_other_files_with_a_reason(data: bytes, words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        list(iter_pcap(io.BytesIO(data)))


# -- Replay with a stand-in Inject -----------------------------------------------------------
class Recorder:
    def __init__(self, drop_every: int = 0) -> None:
        self.calls: list[tuple[bytes, int]] = []
        self.drop_every = drop_every

    async def __call__(self, data: bytes, repeat: int) -> tuple[int, int]:
        self.calls.append((data, repeat))
        dropped = repeat if self.drop_every and len(self.calls) % self.drop_every == 0 else 0
        return repeat - dropped, dropped


async def test_as_fast_as_possible_runs_of_one_frame_go_as_one_inject() -> None:
    a, b = frame(1), frame(2)
    data = _usec_pcap([(1, i, f) for i, f in enumerate([a] * 5 + [b] + [a] * 2)])
    rec = Recorder()
    replay = Replay(rec, None, 0)
    await replay.run(io.BytesIO(data))
    assert rec.calls == [(a, 5), (b, 1), (a, 2)]
    assert (replay.sent, replay.accepted, replay.refused) == (8, 8, 0)


async def test_at_a_speed_each_frame_goes_alone_no_sooner_than_its_time() -> None:
    # 0.3 s of file at speed 2: at least 0.15 s (a lower bound: sleeps never end early).
    data = _usec_pcap([(5, 0, frame(1)), (5, 100_000, frame(1)), (5, 300_000, frame(2))])
    rec = Recorder(drop_every=2)
    replay = Replay(rec, 2.0, 0)
    await replay.run(io.BytesIO(data))
    assert rec.calls == [(frame(1), 1), (frame(1), 1), (frame(2), 1)]
    assert (replay.sent, replay.accepted, replay.refused) == (3, 2, 1)
    assert replay.elapsed >= 0.15


async def test_count_empty_and_oversized_records() -> None:
    data = _usec_pcap([(1, 0, b""), (1, 1, frame(1)), (1, 2, bytes(70_000)), (1, 3, frame(2)),
                       (1, 4, frame(3))])
    rec = Recorder()
    replay = Replay(rec, None, 4)
    await replay.run(io.BytesIO(data))
    assert rec.calls == [(frame(1), 1), (frame(2), 1)]
    assert (replay.sent, replay.skipped) == (2, 2)
    assert "2 skipped (empty or over 69632 bytes)" in replay.summary("f.pcap", "p0")


# -- virtwire replay on a service -------------------------------------------------------------
async def _capture(script: Path, hub: HubServer, out: Path, frames: list[bytes],
                   gap: float) -> None:
    """`virtwire capture` of p1 while ``frames`` go into p0 ``gap`` seconds apart."""
    run = asyncio.ensure_future(_run(script, "capture", "-s", hub.address, "p1", "-w", str(out),
                                     "--count", str(len(frames)), "--direction", "tx"))
    p1 = hub.registry.get("p1")
    await until(lambda: len(p1.capture_hooks) == 1, what="the capture started")
    for i, f in enumerate(frames):
        if i:
            await asyncio.sleep(gap)
        inject(hub.registry.get("p0"), f)
    rc, _, err = await run
    assert rc == 0, err


async def test_a_capture_replays_in_order_at_its_spacing(
        script: Path, hub_sink: tuple[HubServer, Sink], tmp_path: Path) -> None:
    hub, sink = hub_sink
    frames = [frame(i, size=60 + i) for i in range(5)]
    pcap = tmp_path / "p1.pcap"
    await _capture(script, hub, pcap, frames, gap=0.1)
    stamps = [r.timestamp_ns for r in iter_pcap(pcap.open("rb"))]
    span = (stamps[-1] - stamps[0]) / 1e9
    assert span >= 0.4
    sink.frames.clear()

    rc, out, err = await _run(script, "replay", "-s", hub.address, "p0", "-r", str(pcap),
                              "--speed", "2")
    assert rc == EXIT_OK, (out, err)
    await until(lambda: len(sink.frames) == 5, what="5 replayed frames")
    assert sink.frames == frames
    m = re.fullmatch(rf"replayed {re.escape(str(pcap))} into p0: 5 frames sent, 5 accepted, "
                     r"0 refused, in (\d+\.\d+) s \(at speed 2, at most \d+\.\d ms late\)\n", out)
    assert m, out
    assert float(m.group(1)) >= span / 2  # no sooner than the file's pace allows

    sink.frames.clear()
    rc, out, err = await _run(script, "replay", f"{hub.address}/p0", "-r", str(pcap),
                              "--speed", "max", "--count", "3")
    assert rc == EXIT_OK, (out, err)
    assert "3 frames sent, 3 accepted, 0 refused" in out and "as fast as possible" in out
    await until(lambda: len(sink.frames) == 3, what="3 replayed frames")
    assert sink.frames == frames[:3]


async def test_tshark_and_editcap_files_replay_too(
        script: Path, hub_sink: tuple[HubServer, Sink], tmp_path: Path) -> None:
    need(shutil.which("tshark") is not None and shutil.which("editcap") is not None,
         "tshark/editcap not installed (Debian package tshark)")
    hub, sink = hub_sink
    frames = [frame(i) for i in range(3)]
    ns = tmp_path / "ns.pcap"
    await _capture(script, hub, ns, frames, gap=0.01)
    shown = await _tool("tshark", "-r", str(ns), "-T", "fields", "-e", "frame.len")
    assert shown.split() == ["64", "64", "64"]
    usec, pcapng = tmp_path / "us.pcap", tmp_path / "f.pcapng"
    for fmt, dest in (("pcap", usec), ("pcapng", pcapng)):
        await _tool("editcap", "-F", fmt, str(ns), str(dest))
    sink.frames.clear()
    rc, out, err = await _run(script, "replay", "-s", hub.address, "p0", "-r", str(usec),
                              "--speed", "max")
    assert rc == EXIT_OK, (out, err)
    await until(lambda: len(sink.frames) == 3, what="3 replayed frames")
    assert sink.frames == frames
    rc, out, err = await _run(script, "replay", "-s", hub.address, "p0", "-r", str(pcapng))
    assert rc == EXIT_USAGE, (out, err)
    assert "a pcapng file: convert it to pcap (editcap -F pcap IN OUT)" in err


async def test_frames_the_netclient_drops_are_refused_and_exit_1(
        script: Path, hub_sink: tuple[HubServer, Sink], tmp_path: Path) -> None:
    hub, sink = hub_sink
    pcap = tmp_path / "two.pcap"
    pcap.write_bytes(_usec_pcap([(1, 0, frame(1)), (1, 1, frame(1))]))
    hub.registry.get("p0").set_link(False)
    rc, out, err = await _run(script, "replay", "-s", hub.address, "p0", "-r", str(pcap),
                              "--speed", "max")
    assert rc == EXIT_ERROR, (out, err)
    assert "2 frames sent, 0 accepted, 2 refused" in out, out
    assert sink.frames == []
    assert hub.registry.get("p0").dropped_total == 2


@pytest.mark.parametrize(("args", "words"), [
    (("-r", "/nonexistent/x.pcap"), "cannot read /nonexistent/x.pcap"),
    (("-r", "{garbage}"), "not a pcap file (magic"),
    (("-r", "{garbage}", "--speed", "0"), "a speed is 0.001 to 1000"),
    (("-r", "{garbage}", "--speed", "fast"), "'fast' is not a number or 'max'"),
])
async def test_bad_files_and_options_exit_2(script: Path, hub_sink: tuple[HubServer, Sink],
                                            tmp_path: Path, args: tuple[str, ...],
                                            words: str) -> None:
    garbage = tmp_path / "garbage.pcap"
    garbage.write_bytes(b"not a capture at all, just text\n")
    args = tuple(a.replace("{garbage}", str(garbage)) for a in args)
    rc, out, err = await _run(script, "replay", "-s", hub_sink[0].address, "p0", *args)
    assert rc == EXIT_USAGE, (out, err)
    assert words in err and "Traceback" not in err, err


async def test_replay_into_an_unknown_netclient_exits_2(
        script: Path, hub_sink: tuple[HubServer, Sink], tmp_path: Path) -> None:
    pcap = tmp_path / "one.pcap"
    pcap.write_bytes(_usec_pcap([(1, 0, frame(1))]))
    rc, out, err = await _run(script, "replay", "-s", hub_sink[0].address, "p9", "-r", str(pcap))
    assert rc == EXIT_USAGE, (out, err)
    assert "no NetClient named 'p9'" in err
