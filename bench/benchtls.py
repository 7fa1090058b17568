"""Certificates for the TLS-on benchmark runs: a throwaway CA with a service
identity (what the services present) and a controller (the benchmark's own
calls), as `virtwire certs` would make them."""

from __future__ import annotations

from pathlib import Path

from virtwire import certs, tls

SERVICE = "svc"
CONTROLLER = "controller"


def make_pki(directory: Path) -> Path:
    """A CA in ``directory`` with ``svc`` (service) and ``controller`` identities."""
    ca = certs.init_ca(directory, force=True)
    ca.issue_to(directory, SERVICE, [], "service")
    ca.issue_to(directory, CONTROLLER, [], "controller")
    return directory


def service_args(directory: Path) -> list[str]:
    """The `virtwire serve` flags that give a service the ``svc`` identity."""
    return ["--tls-dir", str(directory), "--tls-name", SERVICE]


def use_controller(directory: Path | None) -> None:
    """This process dials as the controller (None: plaintext again)."""
    tls.configure(tls.TlsConfig.from_dir(directory, CONTROLLER) if directory else None)
