"""A LAN's certificate authority: `virtwire certs init DIR` and `certs issue`.

Like Docker's ``--tlsverify`` set-up and QEMU's ``tls-creds-x509`` directory,
a CA directory holds:

- ``ca.pem`` (the CA certificate, handed to every server and client) and
  ``ca-key.pem`` (its key; only where certificates are issued);
- ``NAME.pem`` / ``NAME-key.pem`` for each issued identity.

An identity's *role* (``controller``, ``viewer`` or ``service``, see
``docs/security.md``) is the organizational unit of its subject, so a server
reads it from the peer certificate it already verified. Keys are ECDSA P-256,
written 0600; certificates are valid for ``DEFAULT_DAYS``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from virtwire.errors import ConfigError, ConflictError

ROLES = ("controller", "viewer", "service")
ORGANIZATION = "virtwire"
DEFAULT_DAYS = 825
CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
#: Identity names: also file names, so no path characters.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_identity_name(name: str) -> str:
    if not _NAME_RE.match(name) or name in ("ca", "ca-key"):
        shown = name if len(name) <= 64 else name[:64] + "..."
        raise ConfigError(f"bad certificate name {shown!r}: 1 to 64 of A-Z, a-z, 0-9, "
                          "'.', '_' and '-', starting with a letter or digit, not 'ca'")
    return name


def cert_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.pem"


def key_path(directory: Path, name: str) -> Path:
    return directory / f"{name}-key.pem"


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` through a new file created with ``mode`` (never
    wider for a moment, never through a symlink), then renamed into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_private(path: Path, data: bytes) -> None:
    """A key: readable by its owner only (0600 from the start)."""
    _write(path, data, 0o600)


def write_public(path: Path, data: bytes) -> None:
    _write(path, data, 0o644)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class Authority:
    """A loaded CA: its certificate and key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    directory: Path

    @classmethod
    def load(cls, directory: str | Path) -> Authority:
        directory = Path(directory)
        try:
            cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
            key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
        except FileNotFoundError as exc:
            raise ConfigError(f"{directory} is not a CA directory: no {Path(exc.filename).name}"
                              f" (run 'virtwire certs init {directory}')") from None
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{directory}: unreadable CA certificate or key: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{directory}/{CA_KEY}: not an EC key")
        return cls(cert, key, directory)

    def issue(self, name: str, sans: Sequence[str] = (), role: str = "service",
              days: int = DEFAULT_DAYS) -> tuple[bytes, bytes]:
        """A certificate and key (PEM) for ``name`` with these SANs and role.

        Every certificate is good for both ends of a connection (serverAuth and
        clientAuth): a service is a server to its callers and a client of its peers.
        """
        check_identity_name(name)
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
        key = _new_key()
        now = _now()
        subject = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ])
        cert = (x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(self.cert.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=days))
                .add_extension(x509.SubjectAlternativeName(parse_sans(sans)), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=True, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                    critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.key.public_key()), critical=False)
                .sign(self.key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    def issue_to(self, directory: Path, name: str, sans: Sequence[str] = (),
                 role: str = "service") -> tuple[Path, Path]:
        """Issue ``name`` into ``directory`` (``NAME.pem``, ``NAME-key.pem`` 0600)."""
        cert, key = self.issue(name, sans, role)
        write_private(key_path(directory, name), key)
        write_public(cert_path(directory, name), cert)
        return cert_path(directory, name), key_path(directory, name)


def parse_sans(sans: Sequence[str]) -> list[x509.GeneralName]:
    """``--san`` values: IP addresses become IP SANs, anything else a DNS name."""
    names: list[x509.GeneralName] = []
    for san in sans:
        text = san.strip().strip("[]")
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(text)))
            continue
        except ValueError:
            pass
        if not re.match(r"^[A-Za-z0-9*]([A-Za-z0-9.-]{0,252})$", text):
            raise ConfigError(f"bad --san {san[:64]!r}: an IP address or a DNS name")
        names.append(x509.DNSName(text))
    # Loopback names are always there: plaintext is allowed on loopback, and a
    # service reached through a unix socket or a port-forward is "localhost".
    for default in (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))):
        if default not in names:
            names.append(default)
    return names


def init_ca(directory: str | Path, name: str = "virtwire CA",
            days: int = 3650, force: bool = False) -> Authority:
    """Create ``DIR/ca.pem`` and ``DIR/ca-key.pem`` (DIR made 0700 if new)."""
    directory = Path(directory)
    if (directory / CA_KEY).exists() and not force:
        raise ConflictError(f"{directory} already holds a CA ({CA_KEY}); "
                            "issue certificates from it, or remove it first")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = _new_key()
    now = _now()
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    write_private(directory / CA_KEY, _key_pem(key))
    write_public(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
    return Authority(cert, key, directory)


def role_of(cert_pem: bytes) -> str:
    """The role a certificate carries ("" when it names none we know)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return ""
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    role = str(units[0].value) if units else ""
    return role if role in ROLES else ""


def describe(cert_pem: bytes) -> dict[str, str]:
    """Name, role, SANs and expiry of a certificate, for `certs ls` and errors."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [str(v) for v in san.get_values_for_type(x509.DNSName)] + \
               [str(v) for v in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        sans = []
    return {"name": str(cns[0].value) if cns else "", "role": role_of(cert_pem),
            "sans": ",".join(sans), "expires": cert.not_valid_after_utc.date().isoformat()}
