"""Mutual TLS for every virtwire server and client (see docs/security.md).

A process has one identity: the CA it trusts, and its own certificate and key
(``--tls-ca/--tls-cert/--tls-key``, or ``--tls-dir DIR --tls-name NAME`` for
``DIR/ca.pem``, ``DIR/NAME.pem``, ``DIR/NAME-key.pem``). ``configure`` makes it
the process's identity; from then on every server port it opens requires a
client certificate from that CA (``require_client_auth``, as Docker's
``--tlsverify``), and every channel it dials presents its certificate and
checks the server's name against the server's certificate. Without an
identity, servers and channels are plaintext, which is allowed on loopback
and unix sockets only unless ``--insecure`` says otherwise.

The channel and port factories here are the only places the project creates
gRPC channels and server ports, so no client can be left dialling plaintext.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from virtwire import certs
from virtwire.address import SockAddr
from virtwire.errors import ConfigError

logger = logging.getLogger(__name__)

#: The CLI's environment: a CA directory, and the identity's name in it.
ENV_DIR = "VIRTWIRE_TLS_DIR"
ENV_NAME = "VIRTWIRE_TLS_NAME"
DEFAULT_CLIENT_NAME = "controller"

ChannelOptions = Sequence[tuple[str, Any]]


@dataclass(frozen=True)
class TlsConfig:
    """A CA to trust and an identity (certificate + key), read from PEM files."""

    ca: Path
    cert: Path
    key: Path
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def from_files(cls, ca: str | Path, cert: str | Path, key: str | Path) -> TlsConfig:
        """Load and check the files: the key matches the certificate, the CA signed it."""
        paths = Path(ca), Path(cert), Path(key)
        data = []
        for what, path in zip(("--tls-ca", "--tls-cert", "--tls-key"), paths, strict=True):
            try:
                data.append(path.read_bytes())
            except OSError as exc:
                raise ConfigError(f"{what} {path}: {exc.strerror}") from None
        ca_pem, cert_pem, key_pem = data
        try:
            ca_cert = x509.load_pem_x509_certificate(ca_pem)
        except ValueError:
            raise ConfigError(f"--tls-ca {paths[0]}: not a PEM certificate") from None
        try:
            own = x509.load_pem_x509_certificate(cert_pem)
        except ValueError:
            raise ConfigError(f"--tls-cert {paths[1]}: not a PEM certificate") from None
        try:
            private = load_pem_private_key(key_pem, None)
        except (ValueError, TypeError):
            raise ConfigError(f"--tls-key {paths[2]}: not an unencrypted PEM key") from None
        if private.public_key().public_numbers() != own.public_key().public_numbers():  # type: ignore[union-attr]
            raise ConfigError(f"--tls-key {paths[2]} is not the key of {paths[1]}")
        if not _signed_by(own, ca_cert):
            raise ConfigError(f"--tls-cert {paths[1]} is not signed by the CA in {paths[0]}")
        if os.stat(paths[2]).st_mode & 0o077:
            logger.warning("%s is readable by others than its owner (chmod 600 it)", paths[2])
        return cls(*paths, ca_pem, cert_pem, key_pem)

    @classmethod
    def from_dir(cls, directory: str | Path, name: str) -> TlsConfig:
        directory = Path(directory)
        certs.check_identity_name(name)
        return cls.from_files(directory / certs.CA_CERT, certs.cert_path(directory, name),
                              certs.key_path(directory, name))

    @property
    def role(self) -> str:
        return certs.role_of(self.cert_pem)

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key_pem, self.cert_pem)],
                                           root_certificates=self.ca_pem,
                                           require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca_pem,
                                            private_key=self.key_pem,
                                            certificate_chain=self.cert_pem)

    def args(self) -> list[str]:
        """The command-line flags that give a child process this identity."""
        return ["--tls-ca", str(self.ca), "--tls-cert", str(self.cert),
                "--tls-key", str(self.key)]


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    if cert.issuer != ca.subject:
        return False
    public = ca.public_key()
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            assert cert.signature_hash_algorithm is not None
            public.verify(cert.signature, cert.tbs_certificate_bytes,
                          ec.ECDSA(cert.signature_hash_algorithm))
        elif isinstance(public, rsa.RSAPublicKey):
            assert cert.signature_hash_algorithm is not None
            public.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),
                          cert.signature_hash_algorithm)
        else:
            return False
    except Exception:
        return False
    return True


_active: TlsConfig | None = None


def configure(config: TlsConfig | None) -> None:
    """Make ``config`` this process's identity (None: plaintext)."""
    global _active
    _active = config


def active() -> TlsConfig | None:
    return _active


def aio_channel(target: str, options: ChannelOptions = ()) -> grpc.aio.Channel:
    """A grpc.aio channel to ``target``: mutual TLS when an identity is configured."""
    if _active is None:
        return grpc.aio.insecure_channel(target, options=list(options))
    return grpc.aio.secure_channel(target, _active.channel_credentials(), options=list(options))


def sync_channel(target: str, options: ChannelOptions = ()) -> grpc.Channel:
    """A blocking channel, as ``aio_channel``."""
    if _active is None:
        return grpc.insecure_channel(target, options=list(options))
    return grpc.secure_channel(target, _active.channel_credentials(), options=list(options))


def is_local(addr: SockAddr) -> bool:
    """A unix socket or a loopback address: where plaintext stays allowed."""
    if addr.is_unix:
        return True
    if addr.host == "localhost":
        return True
    try:
        return ipaddress.ip_address(addr.host).is_loopback
    except ValueError:
        return False


def add_port(server: grpc.aio.Server, addr: SockAddr, *, insecure: bool = False,
             what: str = "virtwire") -> int:
    """Open ``addr`` on ``server``: TLS with an identity, else plaintext.

    Plaintext on anything but loopback or a unix socket needs ``insecure``
    (``--insecure``), and is logged as a warning.
    """
    if _active is not None:
        return server.add_secure_port(addr.grpc_target, _active.server_credentials())
    if not is_local(addr):
        if not insecure:
            raise ConfigError(f"{what}: refusing to listen on {addr} without TLS: give "
                              "--tls-dir (or --tls-ca/--tls-cert/--tls-key), or --insecure "
                              "to accept any client that reaches the address")
        logger.warning("%s: listening on %s WITHOUT TLS (--insecure): any client that "
                       "reaches it may call every RPC", what, addr)
    return server.add_insecure_port(addr.grpc_target)


# -- the shared command-line flags ---------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser, *, default_name: str,
                  server: bool = False) -> None:
    """``--tls-dir/--tls-name`` or ``--tls-ca/--tls-cert/--tls-key`` (and ``--insecure``)."""
    group = parser.add_argument_group("TLS (mutual; see 'virtwire certs')")
    group.add_argument("--tls-dir", metavar="DIR",
                       help="CA directory with ca.pem, NAME.pem and NAME-key.pem"
                            + ("" if server else f" (default: ${ENV_DIR})"))
    group.add_argument("--tls-name", metavar="NAME",
                       help=f"the identity in --tls-dir (default: {default_name}"
                            + ("" if server else f", or ${ENV_NAME}") + ")")
    group.add_argument("--tls-ca", metavar="FILE", help="the CA certificate to trust")
    group.add_argument("--tls-cert", metavar="FILE", help="this side's certificate")
    group.add_argument("--tls-key", metavar="FILE", help="this side's private key")
    if server:
        group.add_argument("--insecure", action="store_true",
                           help="allow plaintext on a non-loopback address (logged)")
    parser.set_defaults(tls_default_name=default_name, tls_from_env=not server)


def config_from_args(args: argparse.Namespace) -> TlsConfig | None:
    """The identity the flags (or, for clients, the environment) name; None for none."""
    files = [getattr(args, n, None) for n in ("tls_ca", "tls_cert", "tls_key")]
    directory = getattr(args, "tls_dir", None)
    name = getattr(args, "tls_name", None)
    if getattr(args, "tls_from_env", False):
        directory = directory or os.environ.get(ENV_DIR) or None
        name = name or os.environ.get(ENV_NAME) or None
    if any(files):
        if not all(files):
            raise ConfigError("--tls-ca, --tls-cert and --tls-key go together")
        if getattr(args, "tls_dir", None):
            raise ConfigError("give --tls-dir or --tls-ca/--tls-cert/--tls-key, not both")
        assert files[0] and files[1] and files[2]
        return TlsConfig.from_files(files[0], files[1], files[2])
    if name and not directory:
        raise ConfigError("--tls-name needs --tls-dir")
    if directory:
        default = str(getattr(args, "tls_default_name", DEFAULT_CLIENT_NAME))
        return TlsConfig.from_dir(directory, str(name or default))
    return None


__all__ = ["TlsConfig", "active", "add_arguments", "add_port", "aio_channel",
           "config_from_args", "configure", "is_local", "sync_channel"]
