"""netem: Linux's netem qdisc as a NetFilter (kind ``netem``; docs/filters.md).

Per frame, in Linux's netem_enqueue order: duplicate? lost? (a duplicate
makes its own way through netem, duplicating no further) corrupt? over the
limit? reorder? then the frame is held until its time and handed on with
``pass_to_next``, or handed on now if that time is now and nothing is held.

- delay ``delay`` plus ``jitter`` times a sample of ``distribution``:
  ``uniform`` in [-1, 1) (Linux without a table; the default), ``normal``
  (sd 1, cut at +-4 as Linux's table), ``pareto`` (shape 3 as Linux's table:
  (X - 1.5) * 4/3 cut at 4, so in [-2/3, 4], mean -0.033, sd 0.82) or
  ``paretonormal`` (Linux's: 1/4 normal + 3/4 pareto at the same quantile, in
  [-1.5, 4], mean -0.025, sd 0.83). A delay below 0 is 0.
- ``rate``: a token bucket filled at ``rate`` bit/s that holds no more than the
  frame being sent, i.e. a link of that rate: a frame leaves once
  (length + ``overhead``) * 8 / rate seconds after the previous one left, or
  after its own delay ended if that is later (Linux's netem rate).
- order: a frame never leaves before the one held before it (jitter does not
  reorder; Linux's does without a rate). Only ``reorder`` sends frames ahead:
  with gap 0 or 1 each frame goes at once (no delay, no rate) with
  probability ``reorder``; with gap N the N-1 frames after a reordered one
  are always delayed, and the next ones each go at once with that
  probability (tc-netem(8): ``reorder 100% gap 5`` sends every 5th at once).
- loss ``loss_model``: ``random`` (``loss``, ``loss_corr``), ``gemodel``
  (Gilbert-Elliott: ``ge_p`` good->bad, ``ge_r`` bad->good, ``ge_1h`` loss in
  the bad state, ``ge_1k`` loss in the good state, as ``loss gemodel P R 1-H
  1-K`` with its defaults r = 1 - p, 1-h = 100%, 1-k = 0%) or ``state``
  (the 4-state Markov model, ``state_p13`` ... ``state_p14``). Giving a model's
  properties selects it, and switching models clears the old one's.
- ``corrupt`` flips one random bit of the frame (Linux flips one bit of a
  random byte); ``duplicate`` sends a second copy (counted in stats.added).
- correlations (``*_corr``): each decision's uniform draw comes from a
  Gaussian AR(1) process with lag-1 correlation ``corr``, mapped through the
  normal CDF, so a probability stays what it was set to (Linux's blend of
  uniforms skews it) while decisions come in runs.
- ``seed``: each decision kind draws from its own ``random.Random`` seeded
  from ``seed``; the same seed and the same frames give the same decisions.
  Without one a random seed is chosen and ``properties()`` reports it.

A netem with ``queue=all`` is two netems, one each way, sharing settings and
seed: each direction has its own held frames, limit, rate and gap count.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import random
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

from virtwire.errors import ConfigError
from virtwire.net import units
from virtwire.net.filter import FilterBatch, FilterDirection, NetFilter, TimerHandle
from virtwire.net.filter_types import register_filter_type

if TYPE_CHECKING:
    from virtwire.net.net import NetClient

__all__ = ["DISTRIBUTIONS", "LOSS_MODELS", "Netem", "NetemConfig"]

#: Longest delay or jitter taken.
MAX_DELAY = 60.0
#: Highest rate taken, bit/s.
MAX_RATE = 100e9
#: Most frames one direction of a netem holds; and Linux's default.
MAX_LIMIT = 100_000
DEFAULT_LIMIT = 1000
#: Largest reorder gap (Linux's is a u32), per-frame overhead (bytes) and seed.
MAX_GAP = 2**32 - 1
MAX_OVERHEAD = 1024
MAX_SEED = 2**64 - 1
#: Frames one timer callback hands on at most; it re-arms for 0 if more are due.
RELEASE_BATCH = 256
#: A timer may fire this much early (the loop's clock resolution) and still
#: release the frames due at its time.
_EARLY = 1e-6

DISTRIBUTIONS = ("uniform", "normal", "pareto", "paretonormal")
LOSS_MODELS = ("random", "gemodel", "state")

_GE_PROPS = ("ge_p", "ge_r", "ge_1h", "ge_1k")
_STATE_PROPS = ("state_p13", "state_p31", "state_p32", "state_p23", "state_p14")
_PERCENT_PROPS = ("delay_corr", "loss", "loss_corr", *_GE_PROPS, *_STATE_PROPS, "duplicate",
                  "duplicate_corr", "corrupt", "corrupt_corr", "reorder", "reorder_corr")
_SQRT1_2 = math.sqrt(0.5)
#: Below 1 by one float step: (1 - u) ** (-1/3) stays finite.
_U_MAX = 1.0 - 2.0**-53


@dataclass(frozen=True)
class NetemConfig:
    """A netem's settings; times in seconds, probabilities as fractions. The
    optional gemodel and state probabilities are None until given (their
    defaults follow from ge_p / state_p13, as in tc)."""

    delay: float = 0.0
    jitter: float = 0.0
    delay_corr: float = 0.0
    distribution: str = "uniform"
    loss_model: str = "random"
    loss: float = 0.0
    loss_corr: float = 0.0
    ge_p: float | None = None
    ge_r: float | None = None
    ge_1h: float | None = None
    ge_1k: float | None = None
    state_p13: float | None = None
    state_p31: float | None = None
    state_p32: float | None = None
    state_p23: float | None = None
    state_p14: float | None = None
    duplicate: float = 0.0
    duplicate_corr: float = 0.0
    corrupt: float = 0.0
    corrupt_corr: float = 0.0
    reorder: float = 0.0
    reorder_corr: float = 0.0
    gap: int = 0
    #: bit/s; 0 is no rate limit.
    rate: float = 0.0
    overhead: int = 0
    limit: int = DEFAULT_LIMIT
    seed: int = 0

    def gemodel(self) -> tuple[float, float, float, float]:
        """(p, r, 1-h, 1-k) with tc's defaults for those not given."""
        p = self.ge_p or 0.0
        return (p, 1.0 - p if self.ge_r is None else self.ge_r,
                1.0 if self.ge_1h is None else self.ge_1h,
                0.0 if self.ge_1k is None else self.ge_1k)

    def state(self) -> tuple[float, float, float, float, float]:
        """(p13, p31, p32, p23, p14) with tc's defaults for those not given."""
        p13 = self.state_p13 or 0.0
        return (p13, 1.0 - p13 if self.state_p31 is None else self.state_p31,
                self.state_p32 or 0.0, 1.0 if self.state_p23 is None else self.state_p23,
                self.state_p14 or 0.0)

    @property
    def timed(self) -> bool:
        """Whether frames wait at all (else, with nothing held, they go at once)."""
        return bool(self.delay or self.jitter or self.rate)

    @property
    def idle(self) -> bool:
        """Whether netem does nothing to a frame (and draws nothing for it):
        with nothing held, every frame passes on unchanged."""
        return (self.loss_model == "random" and not self.loss and not self.duplicate
                and not self.corrupt and not self.reorder and not self.timed)


_DEFAULTS = NetemConfig()


class _Correlated:
    """One decision kind's draws: uniform in [0, 1), independent, or with
    correlation ``rho`` the normal CDF of a Gaussian AR(1) process whose lag-1
    correlation is ``rho`` (so each draw is still uniform)."""

    __slots__ = ("_s", "_z", "rho", "rng")

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.rho = 0.0
        self._s = 1.0
        self._z: float | None = None

    def set_rho(self, rho: float) -> None:
        self.rho = rho
        self._s = math.sqrt(max(0.0, 1.0 - rho * rho))

    def normal(self) -> float:
        if self.rho == 0.0:
            return self.rng.gauss(0.0, 1.0)
        z = self._z
        z = (self.rng.gauss(0.0, 1.0) if z is None
             else self.rho * z + self._s * self.rng.gauss(0.0, 1.0))
        self._z = z
        return z

    def uniform(self) -> float:
        if self.rho == 0.0:
            return self.rng.random()
        return _phi(self.normal())


def _phi(z: float) -> float:
    """The standard normal CDF."""
    return 0.5 * math.erfc(-z * _SQRT1_2)


def _pareto(u: float) -> float:
    """Linux's pareto table at quantile ``u``: (X - 1.5) * 4/3 for a Pareto X of
    shape 3 and scale 1, cut at 4."""
    x: float = (1.0 - min(u, _U_MAX)) ** (-1.0 / 3.0)
    return min(4.0, (x - 1.5) * (4.0 / 3.0))


def _cut(z: float) -> float:
    return -4.0 if z < -4.0 else 4.0 if z > 4.0 else z


class _Streams:
    """The random draws of one seed, one stream per decision kind."""

    def __init__(self, seed: int) -> None:
        def stream(name: str) -> _Correlated:
            return _Correlated(random.Random(f"virtwire-netem/{seed}/{name}"))

        self.delay = stream("delay")
        self.loss = stream("loss")
        self.duplicate = stream("duplicate")
        self.corrupt = stream("corrupt")
        self.reorder = stream("reorder")

    def set_correlations(self, c: NetemConfig) -> None:
        self.delay.set_rho(c.delay_corr)
        self.loss.set_rho(c.loss_corr)
        self.duplicate.set_rho(c.duplicate_corr)
        self.corrupt.set_rho(c.corrupt_corr)
        self.reorder.set_rho(c.reorder_corr)


#: A held frame: (time to send, sender, flags, data).
_Held = tuple[float, "NetClient", int, bytes]


class _Lane:
    """One direction of a netem: what it holds, in the order it sends them."""

    __slots__ = ("counter", "direction", "held", "last", "timer")

    def __init__(self, direction: FilterDirection) -> None:
        self.direction = direction
        self.held: collections.deque[_Held] = collections.deque()
        #: When the last frame held leaves (a link's busy-until, with a rate).
        self.last = -math.inf
        #: Frames delayed since the last reordered one (Linux's q->counter).
        self.counter = 0
        self.timer: TimerHandle | None = None


@register_filter_type
class Netem(NetFilter):
    """Linux's netem on a NetClient: delay, loss, duplicate, corrupt, reorder
    and rate, repeatable with ``seed``."""

    kind: ClassVar[str] = "netem"
    PROPERTIES: ClassVar[Mapping[str, str]] = {
        "delay": "added delay, 0 to 60s (e.g. 20ms)",
        "jitter": "delay variation, 0 to 60s (e.g. 5ms); a delay below 0 is 0",
        "delay_corr": "correlation of successive delays, 0 to 100%",
        "distribution": "of the jitter: uniform (default), normal, pareto, paretonormal",
        "loss": "random loss, 0 to 100% (loss_model random)",
        "loss_corr": "correlation of successive random losses, 0 to 100%",
        "loss_model": "random (default), gemodel or state",
        "ge_p": "gemodel: good to bad state, per frame (Linux's P)",
        "ge_r": "gemodel: bad to good state (R; default 100% - ge_p)",
        "ge_1h": "gemodel: loss in the bad state (1-H; default 100%)",
        "ge_1k": "gemodel: loss in the good state (1-K; default 0%)",
        "state_p13": "state model: good to burst loss (p13)",
        "state_p31": "state model: burst loss to good (p31; default 100% - p13)",
        "state_p32": "state model: burst loss to burst good (p32; default 0%)",
        "state_p23": "state model: burst good to burst loss (p23; default 100%)",
        "state_p14": "state model: good to isolated loss (p14; default 0%)",
        "duplicate": "frames sent twice, 0 to 100%",
        "duplicate_corr": "correlation of successive duplicate decisions",
        "corrupt": "frames with one bit flipped, 0 to 100%",
        "corrupt_corr": "correlation of successive corrupt decisions",
        "reorder": "frames sent at once, ahead of the delayed ones (needs a delay)",
        "reorder_corr": "correlation of successive reorder decisions",
        "gap": "with reorder: the gap-1 frames after a reordered one are delayed",
        "rate": "link rate, e.g. 10mbit (tc units; 0 is none; up to 100gbit)",
        "overhead": f"bytes added to each frame's length for the rate, +-{MAX_OVERHEAD}",
        "limit": f"frames held at most per direction, 1 to {MAX_LIMIT} (default "
                 f"{DEFAULT_LIMIT}); more are dropped as limit",
        "seed": "random seed, 0 to 2^64-1, so a run repeats frame for frame "
                "(default: a random one, listed)",
    }

    def __init__(self, fid: str, **kw: Any) -> None:
        super().__init__(fid, **kw)
        self.config = dataclasses.replace(_DEFAULTS, seed=secrets.randbits(64))
        #: config.idle, kept for the batch path.
        self._idle = self.config.idle
        self._streams = _Streams(self.config.seed)
        self._lanes = {d: _Lane(d) for d in (FilterDirection.TX, FilterDirection.RX)}
        #: Gilbert-Elliott: in the bad state; 4-state model: the state (1-4).
        self._ge_bad = False
        self._state = 1
        self.delayed = 0
        self.reordered = 0
        self.duplicated = 0
        self.corrupted = 0
        self.held_peak = 0

    # -- properties ----------------------------------------------------------------
    def parse_properties(self, props: Mapping[str, str], initial: bool) -> dict[str, Any]:
        what = f"netem {self.id}"
        old = self.config
        values: dict[str, Any] = {}
        for name, text in props.items():
            values[name] = self._parse_one(name, text, f"{what} {name}")
        model = self._loss_model(values, old, what)
        if model != old.loss_model:
            # A new model starts from its defaults; the others' settings go.
            cleared: dict[str, Any] = dict.fromkeys(_GE_PROPS + _STATE_PROPS)
            base = dataclasses.replace(old, loss=0.0, loss_corr=0.0, **cleared)
        else:
            base = old
        values["loss_model"] = model
        new = dataclasses.replace(base, **values)
        self._check(new, what)
        if new.timed:
            self.require_scheduler()  # ConfigError now, not at the first frame
        # A seed given, even the one in use, starts the draws afresh (docs/filters.md).
        return {"config": new, "reseed": "seed" in values}

    @staticmethod
    def _parse_one(name: str, text: str, what: str) -> Any:
        if name in ("delay", "jitter"):
            seconds = units.parse_duration(text, what)
            if seconds > MAX_DELAY:
                raise ConfigError(f"{what} {text!r} is more than {MAX_DELAY:g}s")
            return seconds
        if name in _PERCENT_PROPS:
            return units.parse_percent(text, what)
        if name == "distribution":
            if text not in DISTRIBUTIONS:
                raise ConfigError(f"{what} {text!r} is not one of {', '.join(DISTRIBUTIONS)}")
            return text
        if name == "loss_model":
            if text not in LOSS_MODELS:
                raise ConfigError(f"{what} {text!r} is not one of {', '.join(LOSS_MODELS)}")
            return text
        if name == "rate":
            bits = units.parse_rate(text, what)
            if bits > MAX_RATE:
                raise ConfigError(f"{what} {text!r} is more than 100gbit")
            return bits
        bounds = {"gap": (0, MAX_GAP), "limit": (1, MAX_LIMIT),
                  "overhead": (-MAX_OVERHEAD, MAX_OVERHEAD), "seed": (0, MAX_SEED)}[name]
        return _parse_int(text, what, *bounds)

    @staticmethod
    def _loss_model(values: Mapping[str, Any], old: NetemConfig, what: str) -> str:
        """The loss model after ``values``: loss_model if given, else the one
        whose properties are given, else the current one."""
        given = {model for model, names in (("random", ("loss", "loss_corr")),
                                            ("gemodel", _GE_PROPS), ("state", _STATE_PROPS))
                 if any(n in values for n in names)}
        if "loss_model" in values:
            model: str = values["loss_model"]
            others = sorted(given - {model})
            if others:
                raise ConfigError(f"{what}: loss_model={model} takes none of the "
                                  f"{' or '.join(others)} model's properties")
            return model
        if len(given) > 1:
            raise ConfigError(f"{what}: properties of the {' and '.join(sorted(given))} loss "
                              "models at once; give loss_model= and one model's")
        return given.pop() if given else old.loss_model

    @staticmethod
    def _check(c: NetemConfig, what: str) -> None:
        if c.loss_model == "gemodel" and c.ge_p is None:
            raise ConfigError(f"{what}: loss_model=gemodel needs ge_p (and optionally ge_r, "
                              "ge_1h, ge_1k: Linux's loss gemodel P R 1-H 1-K)")
        if c.loss_model == "state":
            if c.state_p13 is None:
                raise ConfigError(f"{what}: loss_model=state needs state_p13 (and optionally "
                                  "state_p31, state_p32, state_p23, state_p14)")
            p13, p31, p32, _, p14 = c.state()
            if p13 + p14 > 1.0 + 1e-12:
                raise ConfigError(f"{what}: state_p13 + state_p14 is more than 100%")
            if p31 + p32 > 1.0 + 1e-12:
                raise ConfigError(f"{what}: state_p31 + state_p32 is more than 100%")
        if c.reorder and not c.delay:
            raise ConfigError(f"{what}: reorder needs a delay (reordered frames are those "
                              "sent without it); give delay= too")

    def apply(self, parsed: Mapping[str, Any]) -> None:
        if "config" not in parsed:
            return
        new: NetemConfig = parsed["config"]
        old, self.config = self.config, new
        self._idle = new.idle
        if parsed.get("reseed") or new.seed != old.seed:
            self._streams = _Streams(new.seed)
            self._ge_bad, self._state = False, 1
        elif new.loss_model != old.loss_model:
            self._ge_bad, self._state = False, 1
        self._streams.set_correlations(new)

    def properties(self) -> dict[str, str]:
        c = self.config
        out: dict[str, str] = {}
        for name in ("delay", "jitter"):
            if getattr(c, name):
                out[name] = units.format_duration(getattr(c, name))
        if c.delay_corr:
            out["delay_corr"] = units.format_percent(c.delay_corr)
        if c.distribution != _DEFAULTS.distribution:
            out["distribution"] = c.distribution
        if c.loss_model == "random":
            for name in ("loss", "loss_corr"):
                if getattr(c, name):
                    out[name] = units.format_percent(getattr(c, name))
        else:
            out["loss_model"] = c.loss_model
            names, params = ((_GE_PROPS, c.gemodel()) if c.loss_model == "gemodel"
                             else (_STATE_PROPS, c.state()))
            out.update({n: units.format_percent(v) for n, v in zip(names, params, strict=True)})
        for name in ("duplicate", "duplicate_corr", "corrupt", "corrupt_corr", "reorder",
                     "reorder_corr"):
            if getattr(c, name):
                out[name] = units.format_percent(getattr(c, name))
        if c.gap:
            out["gap"] = str(c.gap)
        if c.rate:
            out["rate"] = units.format_rate(c.rate)
        if c.overhead:
            out["overhead"] = str(c.overhead)
        if c.limit != DEFAULT_LIMIT:
            out["limit"] = str(c.limit)
        out["seed"] = str(c.seed)
        return out

    def counters(self) -> dict[str, int]:
        return {"held": self.held, "held_peak": self.held_peak, "delayed": self.delayed,
                "reordered": self.reordered, "duplicated": self.duplicated,
                "corrupted": self.corrupted}

    @property
    def held(self) -> int:
        """Frames held now, both directions."""
        return sum(len(lane.held) for lane in self._lanes.values())

    # -- the data path ---------------------------------------------------------------
    def filter_receive(self, direction: FilterDirection, sender: NetClient, flags: int,
                       data: bytes) -> int:
        lane = self._lanes[direction]
        return 0 if self._enqueue(lane, sender, flags, data, True) else len(data)

    def receive_iov_batch(self, direction: FilterDirection, sender: NetClient, flags: int,
                          batch: FilterBatch) -> FilterBatch:
        """A batch: untouched when netem is idle and holds nothing, else each
        frame through ``_enqueue`` in order, as single sends."""
        lane = self._lanes[direction]
        if self._idle and not lane.held:
            return batch
        collect = self._collect
        out = collect.out if collect is not None else FilterBatch()
        enqueue = self._enqueue
        for i, data in enumerate(batch.frames):
            if enqueue(lane, sender, flags, data, True):
                out.pass_on(batch, i)
        return out

    def _enqueue(self, lane: _Lane, sender: NetClient, flags: int, data: bytes,
                 first: bool) -> bool:
        """netem_enqueue for one frame: True to pass ``data`` on unchanged now;
        otherwise it was dropped, held or handed on here."""
        c = self.config
        s = self._streams
        dup = first and c.duplicate > 0.0 and s.duplicate.uniform() < c.duplicate
        cause = self._loss_event(c)
        if dup:
            self.stats.added += 1
            self.duplicated += 1
        if cause is not None:
            self.drop(cause)
            if not dup:
                return False
            # One copy of the two is lost: the frame goes on, with no copy.
        elif dup and self._enqueue(lane, sender, flags, data, False):
            # The copy takes its own way through netem first, as Linux's does.
            self._hand_on(lane, sender, flags, data)
        corrupted = False
        if c.corrupt > 0.0 and data and s.corrupt.uniform() < c.corrupt:
            data = _flip_bit(data, s.corrupt.rng)
            corrupted = True
            self.corrupted += 1
        if len(lane.held) >= c.limit:
            self.drop("limit")
            return False
        if c.reorder > 0.0 and self._reorder_now(lane, c):
            self.reordered += 1
        elif c.timed or lane.held:
            now = self.now()
            when = now + self._delay(c)
            if when < lane.last:
                when = lane.last
            if c.rate:
                when += max(0, len(data) + c.overhead) * 8.0 / c.rate
            lane.last = when
            if when > now + _EARLY or lane.held:
                lane.held.append((when, sender, flags, data))
                self.delayed += 1
                held = self.held
                if held > self.held_peak:
                    self.held_peak = held
                self._arm(lane, now)
                return False
        if corrupted:
            self._hand_on(lane, sender, flags, data)
            return False
        return True

    def _loss_event(self, c: NetemConfig) -> str | None:
        """The cause, if this frame is lost."""
        model = c.loss_model
        if model == "random":
            if c.loss > 0.0 and self._streams.loss.uniform() < c.loss:
                return "loss"
            return None
        rng = self._streams.loss.rng
        if model == "gemodel":
            # The frame is lost with the loss of the state it finds; then the
            # chain moves (Linux's order).
            p, r, h1, k1 = c.gemodel()
            if self._ge_bad:
                lost = rng.random() < h1
                if rng.random() < r:
                    self._ge_bad = False
            else:
                lost = rng.random() < k1
                if rng.random() < p:
                    self._ge_bad = True
            return "gemodel" if lost else None
        # 4-state: 1 received (gap), 2 received (burst), 3 lost (burst), 4 lost
        # (isolated); the frame's fate is the state the chain moves to.
        p13, p31, p32, p23, p14 = c.state()
        u = rng.random()
        state = self._state
        if state == 1:
            state = 4 if u < p14 else 3 if u < p14 + p13 else 1
        elif state == 2:
            state = 3 if u < p23 else 2
        elif state == 3:
            state = 2 if u < p32 else 1 if u < p32 + p31 else 3
        else:
            state = 1
        self._state = state
        return "state" if state >= 3 else None

    def _reorder_now(self, lane: _Lane, c: NetemConfig) -> bool:
        """Whether this frame goes at once, ahead of those held (tc-netem(8))."""
        if lane.counter < c.gap - 1 or self._streams.reorder.uniform() >= c.reorder:
            lane.counter += 1
            return False
        lane.counter = 0
        return True

    def _delay(self, c: NetemConfig) -> float:
        if not c.jitter:
            return c.delay
        gen = self._streams.delay
        dist = c.distribution
        if dist == "uniform":
            t = 2.0 * gen.uniform() - 1.0
        elif dist == "normal":
            t = _cut(gen.normal())
        elif dist == "pareto":
            t = _pareto(gen.uniform())
        else:
            z = gen.normal()
            t = (_cut(z) + 3.0 * _pareto(_phi(z))) / 4.0
        d = c.delay + c.jitter * t
        return d if d > 0.0 else 0.0

    # -- timers and release ---------------------------------------------------------
    def _arm(self, lane: _Lane, now: float) -> None:
        if lane.timer is None and lane.held:
            wait = lane.held[0][0] - now
            lane.timer = self.require_scheduler().call_later(
                wait if wait > 0.0 else 0.0, partial(self._on_timer, lane))

    def _on_timer(self, lane: _Lane) -> None:
        """Hand on the frames that are due, at most RELEASE_BATCH of them."""
        lane.timer = None
        now = self.now()
        held = lane.held
        due: list[_Held] = []
        while held and len(due) < RELEASE_BATCH and held[0][0] <= now + _EARLY:
            due.append(held.popleft())
        # Each run of one sender's frames goes on as one batch, in order.
        i, n = 0, len(due)
        while i < n:
            _, sender, flags, _ = due[i]
            j = i + 1
            while j < n and due[j][1] is sender and due[j][2] == flags:
                j += 1
            self.stats.released += j - i
            self.pass_batch_to_next(sender, flags, [h[3] for h in due[i:j]], lane.direction)
            i = j
        self._arm(lane, now)

    def _hand_on(self, lane: _Lane, sender: NetClient, flags: int, data: bytes) -> None:
        self.stats.released += 1
        self.pass_to_next(sender, flags, data, lane.direction)

    def release(self) -> None:
        """Status off or removal: everything held goes on now, in order."""
        for lane in self._lanes.values():
            self._cancel(lane)
            held, lane.held = lane.held, collections.deque()
            lane.last = -math.inf
            while held:
                _, sender, flags, data = held.popleft()
                self._hand_on(lane, sender, flags, data)

    def cleanup(self) -> None:
        for lane in self._lanes.values():
            self._cancel(lane)
            if lane.held:  # only if released without release(): counted, not lost silently
                self.drop("detached", len(lane.held))
                lane.held.clear()

    @staticmethod
    def _cancel(lane: _Lane) -> None:
        if lane.timer is not None:
            lane.timer.cancel()
            lane.timer = None


def _flip_bit(data: bytes, rng: random.Random) -> bytes:
    """``data`` with one random bit of one random byte flipped."""
    frame = bytearray(data)
    frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
    return bytes(frame)


def _parse_int(text: str, what: str, low: int, high: int) -> int:
    stripped = text.strip() if isinstance(text, str) else ""
    if not stripped or len(stripped) > 24 or not stripped.lstrip("+-").isdigit() \
            or not stripped.isascii():
        raise ConfigError(f"{what} {text!r} is not a whole number")
    value = int(stripped, 10)
    if not low <= value <= high:
        raise ConfigError(f"{what} {text!r} is not in {low}..{high}")
    return value
