"""A LAN's identities: each service's certificate, from the topology's ``tls: {dir}``.

With the CA key in that directory the orchestrator issues every service a
certificate of its own (role ``service``, CN the service name, SANs the
address it listens on) into the LAN's state directory, and one for itself
(role ``controller``), which later ``virtwire`` commands use through the
state file. Without the CA key, it hands out ``controller.pem`` and
``service.pem`` from that directory, which the user issued with SANs that
cover every service address.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from virtwire import certs, tls
from virtwire.errors import ConfigError

#: Inside a LAN's state directory.
TLS_SUBDIR = "tls"
CONTROLLER = "controller"
HANDED_SERVICE = "service"


class LanPki:
    """Issues (or hands out) the LAN's identities into ``out_dir`` (0700)."""

    def __init__(self, ca_dir: Path, out_dir: Path) -> None:
        self.ca_dir = ca_dir
        self.out_dir = out_dir
        if not (ca_dir / certs.CA_CERT).is_file():
            raise ConfigError(f"tls.dir {ca_dir}: no {certs.CA_CERT} (make one with "
                              f"'virtwire certs init {ca_dir}')")
        self.authority = (certs.Authority.load(ca_dir)
                          if (ca_dir / certs.CA_KEY).is_file() else None)
        if self.authority is None:
            for name in (CONTROLLER, HANDED_SERVICE):
                if not certs.cert_path(ca_dir, name).is_file():
                    raise ConfigError(
                        f"tls.dir {ca_dir} has no {certs.CA_KEY} to issue certificates "
                        f"from, so it must hold {name}.pem and {name}-key.pem "
                        f"('virtwire certs issue {ca_dir} {name} --role "
                        f"{'controller' if name == CONTROLLER else 'service'} --san ...')")
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(out_dir, 0o700)
        shutil.copyfile(ca_dir / certs.CA_CERT, out_dir / certs.CA_CERT)

    def identity(self, name: str, sans: Sequence[str] = (),
                 role: str = "service") -> tls.TlsConfig:
        """The certificate ``name`` presents, reachable at ``sans``."""
        if self.authority is None:
            handed = CONTROLLER if role == "controller" else HANDED_SERVICE
            return tls.TlsConfig.from_dir(self.ca_dir, handed)
        hosts = [h for h in sans if h and h not in ("0.0.0.0", "::")]
        self.authority.issue_to(self.out_dir, name, hosts, role)
        return tls.TlsConfig.from_dir(self.out_dir, name)

    def controller(self, sans: Sequence[str] = ()) -> tls.TlsConfig:
        """The orchestrator's own identity, kept in the LAN's state directory, where
        later ``virtwire status/down/...`` find it (``lan_identity``)."""
        if self.authority is not None:
            return self.identity(CONTROLLER, sans, role="controller")
        handed = tls.TlsConfig.from_dir(self.ca_dir, CONTROLLER)
        certs.write_private(certs.key_path(self.out_dir, CONTROLLER), handed.key_pem)
        certs.write_public(certs.cert_path(self.out_dir, CONTROLLER), handed.cert_pem)
        return tls.TlsConfig.from_dir(self.out_dir, CONTROLLER)


def lan_identity(lan_dir: Path) -> tls.TlsConfig | None:
    """The controller identity a running LAN's orchestrator made (None: plaintext)."""
    directory = lan_tls_dir(lan_dir)
    if not certs.cert_path(directory, CONTROLLER).is_file():
        return None
    return tls.TlsConfig.from_dir(directory, CONTROLLER)


def lan_tls_dir(lan_dir: Path) -> Path:
    return lan_dir / TLS_SUBDIR
