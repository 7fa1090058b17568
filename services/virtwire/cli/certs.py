"""`virtwire certs init|issue|ls`: a LAN's CA and its certificates (docs/security.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from virtwire import certs
from virtwire.cli.exitcode import EXIT_OK
from virtwire.cli.format import format_table
from virtwire.cli.userfile import user_file
from virtwire.errors import ConfigError


async def cmd_certs(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    if args.certs_command == "init":
        with user_file(directory, "write"):
            certs.init_ca(directory, force=args.force)
        print(f"CA created: {directory / certs.CA_CERT} (key {directory / certs.CA_KEY}, 0600)")
        return EXIT_OK
    if args.certs_command == "issue":
        with user_file(directory, "read"):
            authority = certs.Authority.load(directory)
        with user_file(directory, "write"):
            cert, key = authority.issue_to(directory, args.name, args.san, args.role)
        print(f"issued {args.name} ({args.role}): {cert}, key {key} (0600)")
        return EXIT_OK
    if not directory.is_dir():
        raise ConfigError(f"{directory} is not a directory")
    rows = [("NAME", "ROLE", "NAMES (SAN)", "EXPIRES", "FILE")]
    for path in sorted(directory.glob("*.pem")):
        if path.name.endswith("-key.pem"):
            continue
        with user_file(path, "read"):
            data = path.read_bytes()
        try:
            info = certs.describe(data)
        except ValueError:
            continue
        rows.append((info["name"], info["role"] or ("ca" if path.name == certs.CA_CERT
                                                     else "-"),
                     info["sans"], info["expires"], path.name))
    print(format_table(rows))
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("certs", allow_abbrev=False,
                       help="make a CA and issue certificates for mutual TLS",
        description="A CA directory for a LAN's mutual TLS: 'init' makes ca.pem and "
                    "ca-key.pem; 'issue' makes NAME.pem and NAME-key.pem (0600) signed by it.",
        epilog="example:\n  virtwire certs init pki\n"
               "  virtwire certs issue pki controller --role controller\n"
               "  virtwire certs issue pki hostb --san 198.18.7.2 --role service\n"
               "  VIRTWIRE_TLS_DIR=pki virtwire status",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(verb=cmd_certs)
    verbs = p.add_subparsers(dest="certs_command", required=True)
    init = verbs.add_parser("init", allow_abbrev=False,
                            help="create the CA (ca.pem, ca-key.pem) in DIR")
    init.add_argument("dir", help="the CA directory (created 0700)")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    issue = verbs.add_parser("issue", allow_abbrev=False,
                             help="issue NAME.pem and NAME-key.pem from DIR's CA")
    issue.add_argument("dir", help="the CA directory")
    issue.add_argument("name", help="the identity (file names and the certificate's CN)")
    issue.add_argument("--san", action="append", default=[], metavar="HOST_OR_IP",
                       help="an address or DNS name servers are reached at (repeatable; "
                            "localhost and 127.0.0.1 are always included)")
    issue.add_argument("--role", choices=certs.ROLES, default="service",
                       help="controller: every RPC; viewer: read only; service: what "
                            "services call on each other (default)")
    ls = verbs.add_parser("ls", allow_abbrev=False, help="the certificates in DIR with their roles")
    ls.add_argument("dir", help="the CA directory")
