"""Per-frame tracing: a sampled frame carries its trace context across hops.

What users see is described in docs/tracing.md. In short:

- A frame is chosen where it enters the LAN (a NetClient's ``sampler``, armed
  by ``--trace-sample 1/N`` or by ``virtwire trace NODE --match EXPR``). It is
  then a ``TracedFrame``: the same bytes, plus ``ctx``, the OpenTelemetry
  SpanContext of its latest span.
- Each hop that handles a traced frame adds one span (``add_span``) whose
  parent is the frame's ``ctx``, and hands the new context on. QEMU-level
  names: ``tap.read``, ``link.send``, ``hub.forward``, ``e1000.receive``,
  ``dma.write``, ``irq``, ``guest.rx`` (and ``e1000.transmit``, ``inject``
  where frames enter from a guest or an RPC).
- Across processes the context travels as ``to_wire`` bytes (the link batch's
  trace field) and comes back with ``from_wire``.
- Spans go to this process's TracerProvider: always to ``recent`` (a capped
  ring that TraceService reads, overflow counted), and to the exporters the
  server's command line named (a JSON-lines file or OTLP; server.tracesetup).

Cost with nothing traced: the hot paths test ``STATE.live`` (traced frames
alive in this process) once per batch, and a NetClient's ``sampler is None``
once per send. Only traced frames pay for spans.
"""

from __future__ import annotations

import collections
import ipaddress
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from opentelemetry import trace as otel_trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from virtwire.errors import ConfigError

__all__ = [
    "MAX_RECENT_SPANS",
    "STATE",
    "WIRE_SIZE",
    "OtlpEndpoint",
    "RecentSpans",
    "Sampler",
    "TracedFrame",
    "add_span",
    "begin",
    "configure",
    "context_of",
    "from_wire",
    "now_ns",
    "parse_otlp_endpoint",
    "parse_sample",
    "provider",
    "recent",
    "to_wire",
    "traced",
]

#: Spans the in-memory ring keeps (TraceService reads them); older ones are
#: dropped and counted in ``RecentSpans.dropped``.
MAX_RECENT_SPANS = 8192
#: Bytes of a context on the wire: trace id (16), span id (8), flags (1).
WIRE_SIZE = 25
#: Characters of a bad value shown in a message.
_SHOWN_MAX = 64
#: Host names of OTLP endpoints: the rule of ``address.parse_sockaddr``.
_HOST_MAX = 253
_HOST_RE = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?")
_PORT_RE = re.compile(r"[0-9]{1,5}")
#: The largest N of ``--trace-sample 1/N``.
MAX_SAMPLE_EVERY = 1 << 30
#: The most frames one armed match may trace.
MAX_MATCH_COUNT = 10000

now_ns = time.time_ns


class _State:
    """Process-wide tracing state the hot paths read."""

    __slots__ = ("created", "live")

    def __init__(self) -> None:
        #: TracedFrames alive in this process: 0 means no hop has work to do.
        self.live = 0
        #: TracedFrames made since start (for tests and stats).
        self.created = 0


STATE = _State()


class TracedFrame(bytes):
    """A sampled frame: its bytes, and ``ctx``, the context of its latest span."""

    ctx: SpanContext

    def __new__(cls, data: bytes, ctx: SpanContext) -> TracedFrame:
        self = super().__new__(cls, data)
        self.ctx = ctx
        STATE.live += 1
        STATE.created += 1
        return self

    def __del__(self) -> None:
        STATE.live -= 1

    def __reduce__(self) -> tuple[type[bytes], tuple[bytes]]:  # pickles as plain bytes
        return (bytes, (bytes(self),))


def any_traced(frames: Iterable[bytes]) -> bool:
    """Whether any of ``frames`` is a TracedFrame: False at once while no
    traced frame is alive in this process, else one pass over their types in
    C (``in`` on a ``map``), so that a batch with nothing traced in it costs no
    Python-level loop even while a traced frame waits elsewhere."""
    return STATE.live > 0 and TracedFrame in map(type, frames)


def traced(frame: bytes) -> SpanContext | None:
    """The context a frame carries, or None for an untraced frame."""
    return frame.ctx if type(frame) is TracedFrame else None


def to_wire(ctx: SpanContext) -> bytes:
    """``ctx`` as WIRE_SIZE bytes: trace id, span id (big-endian), trace flags."""
    return (ctx.trace_id.to_bytes(16, "big") + ctx.span_id.to_bytes(8, "big")
            + bytes((int(ctx.trace_flags) & 0xFF,)))


def from_wire(data: bytes) -> SpanContext:
    """The remote context in ``to_wire`` bytes; ConfigError if malformed (wrong
    size, or a zero trace or span id)."""
    if len(data) != WIRE_SIZE:
        raise ConfigError(f"a trace context of {len(data)} bytes (expected {WIRE_SIZE})")
    trace_id = int.from_bytes(data[:16], "big")
    span_id = int.from_bytes(data[16:24], "big")
    if not trace_id or not span_id:
        raise ConfigError("a trace context with a zero trace or span id")
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(data[24]))


@dataclass(frozen=True)
class FinishedSpan:
    """A span as TraceService serves it (plain data, from a ReadableSpan)."""

    seq: int
    trace_id: int
    span_id: int
    parent_span_id: int
    name: str
    service: str
    start_ns: int
    end_ns: int
    attributes: dict[str, str] = field(default_factory=dict)


class RecentSpans(SpanProcessor):
    """The latest MAX_RECENT_SPANS finished spans, numbered from 1 (``seq``).

    A span is kept as the SDK made it and turned into a FinishedSpan only when
    read, so ending a span costs the data path one append."""

    def __init__(self, maxlen: int = MAX_RECENT_SPANS) -> None:
        self._spans: collections.deque[tuple[int, ReadableSpan]] = collections.deque(
            maxlen=maxlen)
        self._lock = threading.Lock()
        self.seq = 0
        #: Spans pushed out of the ring before anyone read past them.
        self.dropped = 0

    def on_end(self, span: ReadableSpan) -> None:
        with self._lock:
            self.seq += 1
            if len(self._spans) == self._spans.maxlen:
                self.dropped += 1
            self._spans.append((self.seq, span))

    @staticmethod
    def _finished(seq: int, span: ReadableSpan) -> FinishedSpan | None:
        ctx = span.context
        if ctx is None:
            return None
        parent = span.parent
        resource = span.resource.attributes if span.resource is not None else {}
        return FinishedSpan(
            seq=seq, trace_id=ctx.trace_id, span_id=ctx.span_id,
            parent_span_id=parent.span_id if parent is not None else 0,
            name=span.name, service=str(resource.get("service.name", "")),
            start_ns=span.start_time or 0, end_ns=span.end_time or 0,
            attributes={k: str(v) for k, v in (span.attributes or {}).items()})

    def after(self, seq: int, limit: int, trace_ids: frozenset[int] = frozenset()
              ) -> list[FinishedSpan]:
        """Up to ``limit`` spans numbered above ``seq``, oldest first, only of
        ``trace_ids`` when given."""
        with self._lock:
            spans = list(self._spans)
        out: list[FinishedSpan] = []
        for n, span in spans:
            if n <= seq:
                continue
            if trace_ids:
                ctx = span.context
                if ctx is None or ctx.trace_id not in trace_ids:
                    continue
            done = self._finished(n, span)
            if done is None:
                continue
            out.append(done)
            if len(out) >= limit:
                break
        return out

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()


_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


class _Tracing:
    def __init__(self) -> None:
        self.recent = RecentSpans()
        self.provider: TracerProvider | None = None
        self.tracer: otel_trace.Tracer | None = None
        self.service = ""
        #: What ``record`` hands finished spans to: the ring, then the exporters.
        self.processors: tuple[SpanProcessor, ...] = ()
        self.resource = Resource.create({})
        self.scope = InstrumentationScope("virtwire")
        self.ids = RandomIdGenerator()

    def setup(self, service: str, lan: str, processors: Sequence[SpanProcessor]) -> None:
        old = self.provider
        attrs = {"service.name": service or "virtwire"}
        if lan:
            attrs["virtwire.lan"] = lan
        provider = TracerProvider(resource=Resource.create(attrs))
        provider.add_span_processor(self.recent)
        for proc in processors:
            provider.add_span_processor(proc)
        self.provider = provider
        self.tracer = provider.get_tracer("virtwire")
        self.service = service
        self.processors = (self.recent, *processors)
        self.resource = provider.resource
        if old is not None:
            old.shutdown()

    def record(self, name: str, parent: SpanContext | None, start_ns: int, end_ns: int,
               attributes: dict[str, str | int] | None) -> SpanContext:
        """A finished span, made as the SDK's tracer would make it (a new span
        id, the parent's trace id or a new one, sampled, this process's
        resource, scope ``virtwire``) and handed to the same processors, but
        without the tracer's per-span context, sampler and attribute-cleaning
        machinery: about 5 µs a span instead of about 40 on the reference box,
        which is what tracing one frame in N costs the data path."""
        if self.provider is None:
            self.setup(self.service, "", ())
        ids = self.ids
        ctx = SpanContext(parent.trace_id if parent is not None else ids.generate_trace_id(),
                          ids.generate_span_id(), is_remote=False, trace_flags=_SAMPLED)
        span = ReadableSpan(name=name, context=ctx, parent=parent, resource=self.resource,
                            attributes=dict(attributes) if attributes else {},
                            kind=SpanKind.INTERNAL, start_time=start_ns, end_time=end_ns,
                            instrumentation_scope=self.scope)
        for proc in self.processors:
            proc.on_end(span)
        return ctx

    def get_tracer(self) -> otel_trace.Tracer:
        tracer = self.tracer
        if tracer is None:
            self.setup(self.service, "", ())
            tracer = self.tracer
            assert tracer is not None
        return tracer


_tracing = _Tracing()


def configure(service: str, lan: str = "", processors: Sequence[SpanProcessor] = ()) -> None:
    """Name this process's spans and add exporters (the ring is always kept).

    Called once by a server at start; calling again replaces the provider
    (the old one is shut down, flushing its exporters)."""
    _tracing.setup(service, lan, processors)


def provider() -> TracerProvider | None:
    """The provider in use (None until the first span or ``configure``)."""
    return _tracing.provider


def shutdown() -> None:
    """Flush and stop the exporters (at server exit)."""
    if _tracing.provider is not None:
        _tracing.provider.shutdown()


def recent() -> RecentSpans:
    return _tracing.recent


def add_span(name: str, parent: SpanContext | None, start_ns: int,
             end_ns: int | None = None,
             attributes: dict[str, str | int] | None = None) -> SpanContext:
    """Record a finished span ``name`` (a root when ``parent`` is None) from
    ``start_ns`` to ``end_ns`` (now if None); its context, to hand on."""
    return _tracing.record(name, parent, start_ns, end_ns if end_ns is not None else now_ns(),
                           attributes)


def begin(name: str, parent: SpanContext | None, start_ns: int,
          attributes: dict[str, str | int] | None = None) -> otel_trace.Span:
    """Start span ``name`` now known by its context (``get_span_context()``),
    for hops that hand the context on before they finish; end it with
    ``span.end(end_time=ns)``."""
    tracer = _tracing.get_tracer()
    ctx = None
    if parent is not None:
        ctx = otel_trace.set_span_in_context(NonRecordingSpan(parent))
    return tracer.start_span(name, context=ctx, start_time=start_ns, attributes=attributes)


def context_of(frame: bytes) -> SpanContext | None:
    """Alias of ``traced`` for call sites that read better with it."""
    return traced(frame)


def _shown(text: str) -> str:
    """``text`` as it appears in a message: its repr, cut to ``_SHOWN_MAX``
    characters (it may come from a peer); the same rule as ``address.shorten``."""
    if len(text) <= _SHOWN_MAX:
        return repr(text)
    return f"{text[:_SHOWN_MAX]!r}... ({len(text)} characters)"


def parse_sample(text: str) -> int:
    """``--trace-sample``: ``off``/``0`` -> 0, ``1/N`` or ``N`` -> N (one frame
    in N); ConfigError otherwise."""
    value = text.strip().lower()
    if value in ("", "off", "0", "none"):
        return 0
    num, sep, den = value.partition("/")
    try:
        top = int(num) if sep else 1
        every = int(den) if sep else int(num)
    except ValueError:
        raise ConfigError(f"--trace-sample {_shown(text)}: expected off or 1/N, N a whole "
                          "number") from None
    if top != 1:
        raise ConfigError(f"--trace-sample {_shown(text)}: expected off or 1/N: the top "
                          "must be 1, write 1/N (one frame in N)")
    if not 1 <= every <= MAX_SAMPLE_EVERY:
        raise ConfigError(f"--trace-sample {_shown(text)}: N must be 1 to {MAX_SAMPLE_EVERY}")
    return every


class OtlpEndpoint(NamedTuple):
    """A ``--trace-otlp`` endpoint as written (``parse_otlp_endpoint``)."""

    #: A host name or IP address (an IPv6 one without its brackets).
    host: str
    #: 1 to 65535.
    port: int
    #: ``https://``: True, ``http://``: False, a bare ``HOST:PORT``: None (the
    #: server decides: plaintext on loopback, TLS elsewhere; docs/tracing.md).
    tls: bool | None


#: What ``--trace-otlp`` takes, in its messages.
_OTLP_FORMS = "expected HOST:PORT, http://HOST:PORT or https://HOST:PORT"


def parse_otlp_endpoint(text: str) -> OtlpEndpoint:
    """``--trace-otlp``: ``HOST:PORT``, ``[V6]:PORT``, ``http://HOST:PORT`` or
    ``https://HOST:PORT`` (a trailing ``/`` allowed) -> OtlpEndpoint;
    ConfigError (a ValueError) saying what is wrong otherwise.

    Syntax only, so every layer checks an endpoint the same way: the services
    (``server.tracesetup``), the agent and ``up``/``render``
    (``orchestrator.render.check_otlp``). OTLP/gRPC has no URL path, so a path,
    query or fragment is refused rather than dropped, and so is a host without
    a port.
    """
    value = text.strip()
    scheme = ""
    rest = value
    if "://" in value:
        scheme, _, rest = value.partition("://")
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise ConfigError(f"--trace-otlp {_shown(text)}: {_OTLP_FORMS}")
    elif value.startswith("unix:"):
        raise ConfigError(f"--trace-otlp: bad address {_shown(value)}: unix sockets are "
                          "not allowed here")
    host_port, _, path = rest.partition("/")
    if path or "?" in rest or "#" in rest:
        raise ConfigError(f"--trace-otlp {_shown(text)}: OTLP/gRPC takes no path, query "
                          f"or fragment; {_OTLP_FORMS}")

    def bad(why: str) -> ConfigError:
        return ConfigError(f"--trace-otlp: bad address {_shown(host_port)}: {why}")

    if host_port.startswith("["):
        host, sep, port_text = host_port[1:].partition("]:")
        if not sep:
            raise bad("expected [IPV6]:PORT")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad(f"{_shown(host)} is not an IPv6 address") from None
    else:
        host, sep, port_text = host_port.rpartition(":")
        if not sep:
            raise bad(f"no port; {_OTLP_FORMS}")
        if not host:
            raise bad(f"no host; {_OTLP_FORMS}")
        if ":" in host:
            raise bad("write IPv6 hosts as [ADDR]:PORT")
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            if len(host) > _HOST_MAX or _HOST_RE.fullmatch(host) is None:
                raise bad(f"{_shown(host)} is not a host name or IP") from None
    if _PORT_RE.fullmatch(port_text) is None:
        raise bad(f"port {_shown(port_text)} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise bad(f"port {_shown(port_text)} out of range")
    return OtlpEndpoint(host, port, {"https": True, "http": False}.get(scheme))


class Sampler:
    """Chooses the frames a NetClient traces where they enter the LAN.

    ``every`` N traces one frame in N, at random (so periodic traffic is not
    aliased); ``match`` (a predicate, e.g. a FrameMatch's ``matches``) traces
    every frame it accepts, at most ``count`` of them (then it disarms itself
    and ``done`` is set). Both may be set: a frame is traced if either says so.
    """

    __slots__ = ("_countdown", "_rng", "count", "done", "every", "match", "traced")

    def __init__(self, every: int = 0, match: Callable[[bytes], bool] | None = None,
                 count: int = 0, seed: int | None = None) -> None:
        if every < 0 or every > MAX_SAMPLE_EVERY:
            raise ConfigError(f"sample every {every}: expected 0 to {MAX_SAMPLE_EVERY}")
        if match is not None and not 1 <= count <= MAX_MATCH_COUNT:
            raise ConfigError(f"trace count {count}: expected 1 to {MAX_MATCH_COUNT}")
        self.every = every
        self.match = match
        self.count = count
        self.traced = 0
        self.done = False
        self._rng = random.Random(seed)
        self._countdown = self._next_gap()

    def _next_gap(self) -> int:
        if self.every <= 1:
            return 1
        # Geometric gaps of mean ``every``: one frame in N at random.
        return 1 + int(self._rng.expovariate(1.0 / self.every))

    def pick(self, frame: bytes) -> bool:
        """Whether to trace ``frame`` (counts it as traced when so)."""
        if self.match is not None and not self.done:
            if self.match(frame):
                self.traced += 1
                if self.traced >= self.count:
                    self.done = True
                return True
        if self.every:
            self._countdown -= 1
            if self._countdown <= 0:
                self._countdown = self._next_gap()
                self.traced += 1
                return True
        return False

    @property
    def idle(self) -> bool:
        """Nothing left to choose: no rate and the match is done (or absent)."""
        return not self.every and (self.match is None or self.done)

    def sample(self, frames: Sequence[bytes], span: str,
               attributes: dict[str, str | int]) -> Sequence[bytes]:
        """``frames`` with the chosen ones replaced by TracedFrames, each the
        root of a new trace with a ``span`` span (``frames`` itself if none)."""
        if self.match is None or self.done:
            return self._sample_rate(frames, span, attributes)
        out: list[bytes] | None = None
        for i, frame in enumerate(frames):
            if type(frame) is TracedFrame or not self.pick(frame):
                continue
            if out is None:
                out = list(frames)
            out[i] = self._root(frame, span, attributes)
        return frames if out is None else out

    def _sample_rate(self, frames: Sequence[bytes], span: str,
                     attributes: dict[str, str | int]) -> Sequence[bytes]:
        """Rate only: the countdown jumps from one chosen frame to the next, so
        a batch costs the number of frames chosen, not of frames (a frame
        traced upstream takes its turn and stays as it is, which a random
        choice of one in N does not notice)."""
        n = len(frames)
        if not self.every:
            return frames
        if self._countdown > n:
            self._countdown -= n
            return frames
        out = list(frames)
        i = self._countdown - 1
        while i < n:
            frame = out[i]
            if type(frame) is not TracedFrame:
                self.traced += 1
                out[i] = self._root(frame, span, attributes)
            i += self._next_gap()
        self._countdown = i - n + 1
        return out

    @staticmethod
    def _root(frame: bytes, span: str, attributes: dict[str, str | int]) -> TracedFrame:
        """``frame`` as the root of a new trace, with a ``span`` span."""
        t = now_ns()
        attrs = dict(attributes)
        attrs["frame.len"] = len(frame)
        return TracedFrame(frame, add_span(span, None, t, t, attrs))
