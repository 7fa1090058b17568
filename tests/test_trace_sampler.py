"""The Sampler that picks frames where they enter the LAN (docs/tracing.md),
and ``any_traced``, the per-batch test the hot paths make: one in N at random
over batches of any size, whole batches skipped without a per-frame call, and
a match traced up to its count."""

from __future__ import annotations

import pytest

from virtwire import tracing
from virtwire.errors import ConfigError
from virtwire.tracing import Sampler, TracedFrame, any_traced

pytestmark = pytest.mark.timeout(60)


def _frames(n: int, start: int = 0) -> list[bytes]:
    return [bytes(14) + (start + i).to_bytes(4, "big") for i in range(n)]


def _traced_count(out: list[bytes] | tuple[bytes, ...]) -> int:
    return sum(type(f) is TracedFrame for f in out)


@pytest.mark.parametrize("batch", [1, 7, 64, 512])
def test_one_in_n_at_random_whatever_the_batch_size(batch: int) -> None:
    sampler = Sampler(every=100, seed=batch)
    total = 0
    picked = 0
    for i in range(200_000 // batch):
        frames = _frames(batch, i * batch)
        out = sampler.sample(frames, "tap.read", {"netclient": "t"})
        assert len(out) == len(frames)
        assert [bytes(f) for f in out] == frames  # the same bytes, in order
        picked += _traced_count(list(out))
        total += batch
    assert sampler.traced == picked
    assert 0.8 * total / 100 < picked < 1.2 * total / 100


def test_a_batch_before_the_next_pick_is_returned_as_it_is() -> None:
    sampler = Sampler(every=1_000_000, seed=1)
    frames = _frames(64)
    assert sampler.sample(frames, "tap.read", {}) is frames  # no copy, nothing traced
    assert sampler.traced == 0


def test_every_frame_with_one_in_one() -> None:
    sampler = Sampler(every=1)
    out = sampler.sample(_frames(10), "tap.read", {})
    assert _traced_count(list(out)) == 10


def test_a_match_traces_up_to_its_count_then_the_sampler_is_idle() -> None:
    wanted = {3, 5, 9}
    sampler = Sampler(match=lambda f: int.from_bytes(f[14:18], "big") in wanted, count=2)
    out = list(sampler.sample(_frames(12), "inject", {}))
    assert [i for i, f in enumerate(out) if type(f) is TracedFrame] == [3, 5]
    assert sampler.done and sampler.idle
    assert _traced_count(list(sampler.sample(_frames(12), "inject", {}))) == 0


def test_a_frame_already_traced_upstream_is_not_traced_again() -> None:
    first = Sampler(every=1).sample(_frames(3), "tap.read", {})
    again = Sampler(every=1).sample(first, "tap.read", {})
    assert [f.ctx for f in again] == [f.ctx for f in first]  # type: ignore[attr-defined]


def test_any_traced_looks_at_types_only_while_a_traced_frame_lives() -> None:
    plain = _frames(100)
    assert not any_traced(plain)
    one = list(Sampler(every=1).sample(_frames(1), "tap.read", {}))
    assert tracing.STATE.live >= 1
    assert not any_traced(plain)
    assert any_traced(plain[:50] + one + plain[50:])
    assert not any_traced([])
    del one


@pytest.mark.parametrize("every", [-1, tracing.MAX_SAMPLE_EVERY + 1])
def test_a_rate_out_of_range_is_refused(every: int) -> None:
    with pytest.raises(ConfigError, match="sample every"):
        Sampler(every=every)


def test_a_recorded_span_is_what_the_sdk_would_have_made() -> None:
    """add_span makes a ReadableSpan itself (no tracer.start_span): the parent's
    trace, a new span id, sampled, this process's resource and scope, the
    attributes copied (callers reuse their dict), in the ring."""
    before = tracing._tracing.service
    tracing.configure("sampler-test", "lan1")
    try:
        _check_recorded_spans()
    finally:
        tracing.configure(before)  # a plain provider again, as other tests expect


def _check_recorded_spans() -> None:
    attrs: dict[str, str | int] = {"netclient": "p0"}
    root = tracing.add_span("tap.read", None, 100, 200, attrs)
    attrs["netclient"] = "changed"
    child = tracing.add_span("hub.forward", root, 300, None, attrs)
    assert child.trace_id == root.trace_id and child.span_id not in (0, root.span_id)
    assert root.trace_flags.sampled and child.trace_flags.sampled
    spans = {s.span_id: s for s in tracing.recent().after(0, 10_000)}
    first, second = spans[root.span_id], spans[child.span_id]
    assert (first.name, first.parent_span_id, first.start_ns, first.end_ns) == (
        "tap.read", 0, 100, 200)
    assert first.attributes == {"netclient": "p0"}
    assert second.parent_span_id == root.span_id and second.end_ns >= 300
    assert first.service == second.service == "sampler-test"
    provider = tracing.provider()
    assert provider is not None
    assert provider.resource.attributes["virtwire.lan"] == "lan1"
