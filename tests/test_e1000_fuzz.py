"""Fuzz the e1000 model: at least 100k random register, descriptor and frame
operations from a hostile guest and its peer, in process, seeded.

Each operation must return without an exception, having used at most
``OP_BOUND_S`` of CPU (the NIC slices its work; see virtwire.hw.timer.SliceBudget)
and without hanging (``OP_HANG_S`` of wall time), and the register file must
stay well formed. CPU time, not wall time, is what an operation holds the loop
for; on a shared CI box wall time also counts the other processes.

The clock is real (``WallClockScheduler``) so the time budget works as in the
service; continuations run in ``turn`` operations, one pass of an event loop
each.

One known limit is kept out: with ``dma_error_policy="zero"`` (QEMU's reads of
zeros, which the conformance harness uses and the service never does) every
RX descriptor outside guest memory costs three failed DMA accesses, as in
QEMU, so those guests keep RDLEN at 256 descriptors or fewer.

``make fuzz`` runs a longer campaign: ``VIRTWIRE_FUZZ_SECONDS`` (time, instead
of an operation count), ``VIRTWIRE_FUZZ_OPS`` and ``VIRTWIRE_FUZZ_SEED``
override the defaults. It prints operations per second and the slowest op.
"""

from __future__ import annotations

import gc
import os
import random
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from virtwire.hw import e1000_regs as r
from virtwire.hw.dma import RamDma
from virtwire.hw.e1000 import COMPAT_VERSIONS, E1000, MODELS
from virtwire.net.net import NetClient

from support.wallclock import WallClockScheduler

OPS = int(os.environ.get("VIRTWIRE_FUZZ_OPS", "100000"))
SECONDS = float(os.environ.get("VIRTWIRE_FUZZ_SECONDS", "0"))
SEED = int(os.environ.get("VIRTWIRE_FUZZ_SEED", "7"))
#: Generous: the NIC aims at a few ms per operation (SLICE_NS).
OP_BOUND_S = 0.05
#: Wall time that means a hang rather than a busy machine.
OP_HANG_S = 2.0
#: Operations per guest before a fresh NIC (new model, memory, policies).
GUEST_OPS = 1500
#: The largest RDLEN a dma_error_policy="zero" guest gets (see above).
ZERO_POLICY_MAX_RDLEN = 256 * 16

MAC = bytes.fromhex("525400123456")
BCAST = b"\xff" * 6
MASK32 = 0xFFFFFFFF

TXD_DEXT = r.E1000_TXD_CMD_DEXT
TXD_DATA = r.E1000_TXD_CMD_DEXT | r.E1000_TXD_DTYP_D
TX_CMDS = (r.E1000_TXD_CMD_EOP, r.E1000_TXD_CMD_IFCS, r.E1000_TXD_CMD_RS,
           r.E1000_TXD_CMD_RPS, r.E1000_TXD_CMD_VLE, r.E1000_TXD_CMD_IDE,
           r.E1000_TXD_CMD_TSE, r.E1000_TXD_CMD_IP, r.E1000_TXD_CMD_TCP)
REGS = (r.E1000_CTRL, r.E1000_STATUS, r.E1000_EECD, r.E1000_EERD, r.E1000_MDIC, r.E1000_VET,
        r.E1000_ICR, r.E1000_ITR, r.E1000_ICS, r.E1000_IMS, r.E1000_IMC, r.E1000_RCTL,
        r.E1000_TCTL, r.E1000_RDBAL, r.E1000_RDBAH, r.E1000_RDLEN, r.E1000_RDH, r.E1000_RDT,
        r.E1000_RDTR, r.E1000_RADV, r.E1000_TDBAL, r.E1000_TDBAH, r.E1000_TDLEN, r.E1000_TDH,
        r.E1000_TDT, r.E1000_TADV, r.E1000_MTA, r.E1000_RA, r.E1000_RA + 4, r.E1000_VFTA,
        r.E1000_TXDCTL, 0x4000, 0x40C4)
RCTLS = (0, r.E1000_RCTL_EN | r.E1000_RCTL_BAM,
         r.E1000_RCTL_EN | r.E1000_RCTL_UPE | r.E1000_RCTL_MPE | r.E1000_RCTL_BAM,
         r.E1000_RCTL_EN | r.E1000_RCTL_UPE | r.E1000_RCTL_SBP | r.E1000_RCTL_LPE | 0x30000,
         r.E1000_RCTL_EN | r.E1000_RCTL_UPE | r.E1000_RCTL_SECRC | r.E1000_RCTL_VFE | 0x2010000)


class Wire(NetClient):
    """The NIC's peer: counts what it gets; may answer at once (a synchronous peer)."""

    def __init__(self) -> None:
        super().__init__("wire")
        self.frames = 0
        self.echo = False
        self.ready = True

    def receive(self, data: bytes) -> int:
        self.frames += 1
        if self.echo and self.frames % 3 == 0:
            self.send_packet(bytes(data[:80]))
        return len(data) or 1

    def can_receive(self) -> bool:
        return self.ready


@dataclass
class Guest:
    """One NIC with its memory, clock and peer, and what the fuzzer knows of its rings."""

    nic: E1000
    dma: RamDma
    sched: WallClockScheduler
    wire: Wire
    irqs: list[bool] = field(default_factory=list)

    def ring(self, tx: bool) -> tuple[int, int]:
        """(base, descriptors) of the TX or RX ring as the registers say."""
        mac = self.nic.mac_reg
        if tx:
            base, length = (mac[r.TDBAH] << 32) | mac[r.TDBAL], mac[r.TDLEN]
        else:
            base, length = (mac[r.RDBAH] << 32) | mac[r.RDBAL], mac[r.RDLEN]
        return base & ~0xF, max(1, length // 16)


def new_guest(rng: random.Random) -> Guest:
    ram = rng.choice([1 << 16, 1 << 20, 2 << 20])
    sched = WallClockScheduler()
    dma = RamDma(ram)
    dma.ram[:] = rng.randbytes(ram)
    irqs: list[bool] = []
    nic = E1000("e1000", MAC, dma, model=rng.choice(sorted(MODELS)),  # type: ignore[arg-type]
                set_irq=irqs.append, scheduler=sched,
                dma_error_policy=rng.choice(["stop", "stop", "zero"]),
                compat=rng.choice(COMPAT_VERSIONS))  # type: ignore[arg-type]
    wire = Wire()
    wire.echo = rng.random() < 0.3
    nic.peer = wire
    wire.peer = nic
    g = Guest(nic, dma, sched, wire, irqs)
    if rng.random() < 0.8:  # a driver brought it up: rings in RAM, RX and TX on
        nic.set_bus_master(True)
        n_rx = rng.choice([8, 64, 256, 4096]) if ram > 1 << 16 else 8
        n_tx = rng.choice([8, 64, 256, 4096]) if ram > 1 << 16 else 8
        if nic.dma_error_policy == "zero":
            n_rx = min(n_rx, ZERO_POLICY_MAX_RDLEN // 16)
        rdba, tdba = 0x1000, 0x1000 + 16 * n_rx
        for off, val in ((r.E1000_RDBAL, rdba), (r.E1000_RDLEN, 16 * n_rx),
                         (r.E1000_RDT, n_rx - 1), (r.E1000_TDBAL, tdba),
                         (r.E1000_TDLEN, 16 * n_tx), (r.E1000_RCTL, rng.choice(RCTLS[1:])),
                         (r.E1000_TCTL, r.E1000_TCTL_EN), (r.E1000_IMS, 0xFFFF)):
            nic.mmio_write(off, val)
        for i in range(n_rx):  # buffers mostly in RAM, some null
            addr = 0 if rng.random() < 0.2 else rng.randrange(ram // 2, ram - 0x4000)
            dma.ram[rdba + 16 * i:rdba + 16 * i + 16] = r.RX_DESC.pack(addr, 0, 0, 0, 0, 0)
        g.sched.advance(2 * 10**9)  # past the 1 s RX block
    return g


# -- operations --------------------------------------------------------------------------------

def tx_desc(rng: random.Random, ram: int) -> bytes:
    kind = rng.random()
    addr = rng.choice([rng.randrange(ram), 0, rng.randrange(1 << 64), ram - 8])
    length = rng.choice([rng.randrange(64), rng.randrange(1600), 0xFFFF, rng.randrange(1 << 16)])
    cmd = 0
    for bit in TX_CMDS:
        if rng.random() < 0.3:
            cmd |= bit
    if rng.random() < 0.6:
        cmd |= r.E1000_TXD_CMD_EOP
    if kind < 0.3:  # context: tiny mss and hdr_len past the data are the point
        hdr_len = rng.choice([0, 14, 54, rng.randrange(256)])
        mss = rng.choice([0, 1, 2, rng.randrange(64), rng.randrange(1 << 16)])
        return r.TX_CTX_DESC.pack(*(rng.randrange(256) for _ in range(3)),
                                  *(rng.randrange(256) for _ in range(2)),
                                  rng.randrange(1 << 16),
                                  TXD_DEXT | (cmd & ~r.E1000_TXD_DTYP_D) | rng.randrange(1 << 20),
                                  0, hdr_len, mss)
    upper = rng.randrange(1 << 32)
    if kind < 0.7:  # data descriptor
        return r.TX_DESC.pack(addr, TXD_DATA | cmd | length, upper)
    return r.TX_DESC.pack(addr, (cmd & ~TXD_DEXT) | length, upper)  # legacy


def rx_desc(rng: random.Random, ram: int) -> bytes:
    addr = rng.choice([0, 0, rng.randrange(ram), rng.randrange(1 << 64), ram - 100])
    return r.RX_DESC.pack(addr, rng.randrange(1 << 16), 0, rng.randrange(256), 0, 0)


def frame(rng: random.Random) -> bytes:
    size = rng.choice([0, 1, 13, 14, 17, 60, 64, 1514, 1518, 1522, rng.randrange(1600),
                       rng.randrange(20000), rng.randrange(69633)])
    dst = rng.choice([MAC, BCAST, bytes.fromhex("01005e000001"), rng.randbytes(6)])
    body = dst + bytes.fromhex("5254000abcde")
    if rng.random() < 0.3:
        body += struct.pack(">HH", 0x8100, rng.randrange(1 << 16))
    body += rng.randbytes(2)
    return (body + bytes(max(0, size - len(body))))[:size]


def write(g: Guest, off: int, val: int) -> None:
    """An MMIO write, keeping zero-policy guests to rings of 256 RX descriptors."""
    if g.nic.dma_error_policy == "zero" and (off & 0x1FFFC) == r.E1000_RDLEN:
        val = min(val & 0xFFF80, ZERO_POLICY_MAX_RDLEN)
    g.nic.mmio_write(off, val)


def op_write_reg(g: Guest, rng: random.Random) -> None:
    off = rng.choice(REGS)
    n = g.ring(off in (r.E1000_TDH, r.E1000_TDT))[1]
    val = rng.choice([rng.randrange(1 << 32), rng.randrange(0x800), 0, MASK32, 0xFFF80,
                      rng.randrange(n + 2), n - 1, rng.randrange(0x10000),
                      r.E1000_TCTL_EN, rng.choice(RCTLS), r.E1000_CTRL_VME | 0x40])
    write(g, off, val)


def op_write_any(g: Guest, rng: random.Random) -> None:
    write(g, rng.choice([rng.randrange(0x20000), rng.randrange(-(1 << 40), 1 << 40)]),
          rng.randrange(1 << 32))


def op_read(g: Guest, rng: random.Random) -> None:
    off = rng.choice([rng.choice(REGS), rng.randrange(0x20000), rng.randrange(1 << 40)])
    assert 0 <= g.nic.mmio_read(off) <= MASK32


def op_tx_desc(g: Guest, rng: random.Random) -> None:
    base, n = g.ring(True)
    slot = rng.randrange(min(n, 4096))
    addr = base + 16 * slot
    if addr + 16 <= len(g.dma.ram):
        g.dma.ram[addr:addr + 16] = tx_desc(rng, len(g.dma.ram))


def op_rx_desc(g: Guest, rng: random.Random) -> None:
    base, n = g.ring(False)
    slot = rng.randrange(min(n, 4096))
    addr = base + 16 * slot
    if addr + 16 <= len(g.dma.ram):
        g.dma.ram[addr:addr + 16] = rx_desc(rng, len(g.dma.ram))


def op_kick_tx(g: Guest, rng: random.Random) -> None:
    mac = g.nic.mac_reg
    n = g.ring(True)[1]
    tdt = rng.choice([(mac[r.TDH] + rng.randrange(1, 8)) % n, (mac[r.TDH] - 1) % n,
                      rng.randrange(n), rng.randrange(1 << 16)])
    g.nic.mmio_write(r.E1000_TDT, tdt)


def op_kick_rx(g: Guest, rng: random.Random) -> None:
    n = g.ring(False)[1]
    g.nic.mmio_write(r.E1000_RDT, rng.choice([rng.randrange(n), rng.randrange(1 << 16)]))


def op_inject(g: Guest, rng: random.Random) -> None:
    g.wire.send_packet(frame(rng))


def op_receive(g: Guest, rng: random.Random) -> None:
    g.nic.receive(frame(rng))


def op_batch(g: Guest, rng: random.Random) -> None:
    """What one AccessRegisters / Mmio request does: many writes in one slice."""
    with g.nic.budget_scope():
        for _ in range(rng.randrange(2, 24)):
            rng.choice([op_kick_tx, op_kick_rx, op_write_reg])(g, rng)


def op_poke(g: Guest, rng: random.Random) -> None:
    addr = rng.randrange(len(g.dma.ram))
    data = rng.randbytes(rng.randrange(1, 64))
    g.dma.ram[addr:addr + len(data)] = data[:len(g.dma.ram) - addr]


def op_turn(g: Guest, rng: random.Random) -> None:
    g.sched.turn()


def op_time(g: Guest, rng: random.Random) -> None:
    g.sched.advance(rng.choice([rng.randrange(10**6), rng.randrange(2 * 10**9)]))


def op_pci(g: Guest, rng: random.Random) -> None:
    g.nic.set_bus_master(rng.random() < 0.8)


def op_link(g: Guest, rng: random.Random) -> None:
    g.nic.set_link(rng.random() < 0.7)


def op_phy(g: Guest, rng: random.Random) -> None:
    reg = rng.choice([0, 0, 1, 4, 9, rng.randrange(32)])
    data = rng.choice([0x5140, 0x1140, 0x1340, rng.randrange(1 << 16)])  # 0x5140: loopback
    opcode = rng.choice([r.E1000_MDIC_OP_WRITE, r.E1000_MDIC_OP_READ])
    g.nic.mmio_write(r.E1000_MDIC, opcode | (1 << 21) | (reg << 16) | data
                     | rng.choice([0, r.E1000_MDIC_INT_EN]))


def op_wire_ready(g: Guest, rng: random.Random) -> None:
    g.wire.ready = rng.random() < 0.8
    if g.wire.ready:
        g.wire.flush_queued_packets()


def op_reset(g: Guest, rng: random.Random) -> None:
    g.nic.reset()


Op = Callable[[Guest, random.Random], None]
OPS_WEIGHTED: list[tuple[Op, int]] = [
    (op_write_reg, 12), (op_write_any, 4), (op_read, 8), (op_tx_desc, 14), (op_rx_desc, 6),
    (op_kick_tx, 8), (op_kick_rx, 5), (op_inject, 10), (op_receive, 4), (op_batch, 2),
    (op_poke, 4), (op_turn, 12), (op_time, 3), (op_pci, 1), (op_link, 1), (op_phy, 2),
    (op_wire_ready, 1), (op_reset, 1),
]


CHECKED = sorted({off >> 2 for off in REGS} | {r.TDH, r.RDH, r.TDT, r.RDT, r.ICR, r.ICS, r.IMS})


def check(g: Guest, full: bool = False) -> None:
    """The register file stays well formed (all of it with ``full``)."""
    nic = g.nic
    mac = nic.mac_reg
    regs = mac if full else [mac[i] for i in CHECKED]
    assert all(0 <= v <= MASK32 for v in regs)
    assert all(0 <= v <= 0xFFFF for v in nic.phy_reg)
    assert mac[r.TDH] <= 0xFFFF and mac[r.RDH] <= 0xFFFF
    assert len(nic.tx.data) == 0x10000 and 0 <= nic.tx.size <= 0xFFFF
    assert nic.incoming_queue.nq_count <= nic.incoming_queue.nq_maxlen
    assert nic.irq_level == bool(mac[r.IMS] & mac[r.ICR]) or nic.mit_timer_on


@dataclass
class Campaign:
    ops: int = 0
    seconds: float = 0.0
    #: (CPU seconds, op) of the op that used the most CPU, and the same in wall time.
    slowest: tuple[float, str] = (0.0, "")
    slowest_wall: tuple[float, str] = (0.0, "")
    kinds: Counter[str] = field(default_factory=Counter)
    counters: Counter[str] = field(default_factory=Counter)

    def report(self) -> str:
        slow_s, slow_kind = self.slowest
        wall_s, wall_kind = self.slowest_wall
        rate = self.ops / self.seconds if self.seconds else 0.0
        top = ", ".join(f"{k}={v}" for k, v in sorted(self.counters.items()) if v)
        return (f"e1000 fuzz: {self.ops} ops in {self.seconds:.1f} s ({rate:,.0f} ops/s); "
                f"slowest op {slow_kind} {slow_s * 1e3:.1f} ms CPU "
                f"(wall: {wall_kind} {wall_s * 1e3:.1f} ms); {top}")


def campaign(seed: int, n_ops: int, seconds: float = 0.0) -> Campaign:
    """Run ``n_ops`` operations (or, with ``seconds``, until that much time passed)."""
    rng = random.Random(seed)
    ops = [op for op, _ in OPS_WEIGHTED]
    weights = [w for _, w in OPS_WEIGHTED]
    result = Campaign()
    start = time.perf_counter()
    g = new_guest(rng)
    i = 0

    def retire(g: Guest) -> None:
        check(g, full=True)
        for name, value in {**g.nic.drop_counters(), **g.nic.deferred_counters()}.items():
            result.counters[name] += value
        result.counters["frames_out"] += g.wire.frames

    while (time.perf_counter() - start < seconds) if seconds else (i < n_ops):
        if i and i % GUEST_OPS == 0:
            retire(g)
            del g
            # A retired NIC is cyclic garbage (its op tables point back at it):
            # collect it here, not in the middle of a timed operation.
            gc.collect()
            g = new_guest(rng)
        op = rng.choices(ops, weights)[0]
        t0 = time.perf_counter()
        c0 = time.thread_time()
        try:
            op(g, rng)
        except Exception as exc:
            raise AssertionError(f"seed {seed}, op #{i} {op.__name__}: {exc!r}") from exc
        cpu = time.thread_time() - c0
        wall = time.perf_counter() - t0
        assert cpu < OP_BOUND_S, f"seed {seed}, op #{i} {op.__name__}: {cpu * 1e3:.1f} ms CPU"
        assert wall < OP_HANG_S, f"seed {seed}, op #{i} {op.__name__}: {wall:.1f} s"
        if cpu > result.slowest[0]:
            result.slowest = (cpu, op.__name__)
        if wall > result.slowest_wall[0]:
            result.slowest_wall = (wall, op.__name__)
        result.kinds[op.__name__] += 1
        check(g)
        i += 1
    retire(g)
    result.ops = i
    result.seconds = time.perf_counter() - start
    return result


def test_fuzz_e1000_model() -> None:
    result = campaign(SEED, OPS, SECONDS)
    print(result.report())
    assert result.ops >= (1 if SECONDS else OPS)
    # The campaign reaches the cases it is about.
    assert result.counters["tx_sliced"] > 0 and result.counters["frames_out"] > 0
    assert len(result.kinds) == len(OPS_WEIGHTED)
