"""The subnets of containerised LANs: inside 198.18.0.0/15 (RFC 2544 benchmarking).

``--subnet`` is checked by ``check_subnet``; without one, the docker runtime
takes the highest 198.19.N.0/24 that no Docker network uses (``pick_subnet``),
and each service gets a fixed address in it (``service_ips``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from virtwire.errors import BackendError, ConfigError

__all__ = ["AUTO_SUBNETS", "BENCHMARK_NET", "FIRST_HOST", "check_subnet", "pick_subnet",
           "service_ips"]

#: Where automatic subnets come from (the top of 198.18.0.0/15, downwards).
AUTO_SUBNETS = ipaddress.IPv4Network("198.19.0.0/16")
BENCHMARK_NET = ipaddress.IPv4Network("198.18.0.0/15")
#: The n-th service (from 0) gets the subnet's host number FIRST_HOST + n.
FIRST_HOST = 10


def pick_subnet(used: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
                ) -> ipaddress.IPv4Network:
    """The highest /24 of AUTO_SUBNETS that overlaps none of ``used``."""
    for subnet in reversed(list(AUTO_SUBNETS.subnets(new_prefix=24))):
        if not any(u.version == 4 and subnet.overlaps(u) for u in used):
            return subnet
    raise BackendError(f"every /24 of {AUTO_SUBNETS} is taken by a Docker network; "
                       "give one with --subnet")


def check_subnet(text: str) -> ipaddress.IPv4Network:
    """A --subnet: an IPv4 network inside 198.18.0.0/15, at least a /28."""
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ConfigError(f"bad subnet {text!r}: {exc}") from None
    if not (isinstance(net, ipaddress.IPv4Network) and net.subnet_of(BENCHMARK_NET)):
        raise ConfigError(f"subnet {text} is not inside {BENCHMARK_NET} (the benchmarking "
                          "range virtwire keeps its networks in)")
    if net.prefixlen > 28:
        raise ConfigError(f"subnet {text} is too small: at least a /28")
    return net


def service_ips(subnet: ipaddress.IPv4Network, names: Sequence[str]) -> dict[str, str]:
    """Each service's fixed address in ``subnet`` (in start order, from FIRST_HOST)."""
    hosts = list(subnet.hosts())
    if len(hosts) < FIRST_HOST + len(names):
        raise ConfigError(f"subnet {subnet} has too few addresses for {len(names)} services")
    return {name: str(hosts[FIRST_HOST - 1 + i]) for i, name in enumerate(names)}
