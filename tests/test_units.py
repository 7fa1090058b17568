"""virtwire.net.units: tc's durations, percentages and rates, parsed and
formatted back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from virtwire.errors import ConfigError
from virtwire.net import units


@pytest.mark.parametrize(("text", "seconds"), [
    ("20ms", 0.02), ("1.5s", 1.5), ("250us", 250e-6), ("250µs", 250e-6), ("10ns", 1e-8),
    ("0", 0.0), ("0ms", 0.0), ("2 sec", 2.0), ("3msec", 0.003), ("7usecs", 7e-6),
    ("1e3ms", 1.0), (".5s", 0.5), ("20MS", 0.02),
])
def test_durations(text: str, seconds: float) -> None:
    assert units.parse_duration(text) == pytest.approx(seconds, rel=1e-12, abs=0)


@pytest.mark.parametrize(("text", "message"), [
    ("20", "needs a unit"), ("-1ms", "negative"), ("1h", "unit 'h'"), ("fast", "not a number"),
    ("inf", "not a number"), ("nan", "not a number"), ("1e999s", "too large"), ("", "not a"),
    ("1" * 65 + "ms", "more than 64"), ("20ms5", "not a number"),
])
def test_bad_durations(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        units.parse_duration(text, "delay")


def test_errors_name_the_property() -> None:
    with pytest.raises(ConfigError, match=r"^jitter '5' needs a unit: e.g. 5ms"):
        units.parse_duration("5", "jitter")


@pytest.mark.parametrize(("text", "fraction"), [
    ("1%", 0.01), ("0.1%", 0.001), ("100%", 1.0), ("0%", 0.0), ("1", 0.01), ("25 %", 0.25),
    ("1e-7%", 1e-9),
])
def test_percents(text: str, fraction: float) -> None:
    assert units.parse_percent(text) == pytest.approx(fraction, rel=1e-12, abs=0)


@pytest.mark.parametrize(("text", "message"), [
    ("101%", "more than 100%"), ("-1%", "negative"), ("1ms", "not a percentage"),
    ("half", "not a number"),
])
def test_bad_percents(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        units.parse_percent(text, "loss")


@pytest.mark.parametrize(("text", "bits"), [
    ("10mbit", 10e6), ("1gbit", 1e9), ("100kbit", 100e3), ("5bit", 5.0), ("5", 5.0),
    ("100kbps", 800e3), ("1mbps", 8e6), ("2bps", 16.0), ("1kibit", 1024.0),
    ("1mibit", 1024.0**2), ("1gibps", 8 * 1024.0**3), ("1tbit", 1e12), ("10Mbit", 10e6),
    ("0", 0.0),
])
def test_rates(text: str, bits: float) -> None:
    assert units.parse_rate(text) == pytest.approx(bits, rel=1e-12, abs=0)


@pytest.mark.parametrize(("text", "message"), [
    ("10mb", "unit 'mb'"), ("-1mbit", "negative"), ("fast", "not a number"),
])
def test_bad_rates(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        units.parse_rate(text)


@pytest.mark.parametrize(("seconds", "text"), [
    (0.02, "20ms"), (1.5, "1.5s"), (250e-6, "250us"), (0.0, "0s"), (20.5e-3, "20.5ms"),
    (60.0, "60s"), (1e-9, "1ns"), (0.0015, "1.5ms"),
])
def test_format_duration(seconds: float, text: str) -> None:
    assert units.format_duration(seconds) == text


@pytest.mark.parametrize(("fraction", "text"), [
    (0.01, "1%"), (0.001, "0.1%"), (1.0, "100%"), (0.0, "0%"), (0.07, "7%"), (0.333, "33.3%"),
])
def test_format_percent(fraction: float, text: str) -> None:
    assert units.format_percent(fraction) == text


@pytest.mark.parametrize(("bits", "text"), [
    (10e6, "10mbit"), (1e9, "1gbit"), (100e3, "100kbit"), (800e3, "800kbit"), (5.0, "5bit"),
    (1.5e9, "1.5gbit"), (0.0, "0bit"), (2.5e12, "2.5tbit"),
])
def test_format_rate(bits: float, text: str) -> None:
    assert units.format_rate(bits) == text


@given(st.integers(min_value=0, max_value=60 * 10**9))
def test_durations_round_trip_to_the_nanosecond(ns: int) -> None:
    seconds = ns / 1e9
    assert round(units.parse_duration(units.format_duration(seconds)) * 1e9) == ns


@given(st.floats(min_value=0.0, max_value=1.0))
def test_percents_round_trip(fraction: float) -> None:
    back = units.parse_percent(units.format_percent(fraction))
    assert back == pytest.approx(fraction, rel=1e-11, abs=1e-300)


@given(st.floats(min_value=0.0, max_value=100e9))
def test_rates_round_trip(bits: float) -> None:
    assert units.parse_rate(units.format_rate(bits)) == pytest.approx(bits, rel=1e-11)
