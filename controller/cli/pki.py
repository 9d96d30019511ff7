"""``breakwater pki init|issue|revoke``: the command-line side of
:mod:`controller.pki` (the CA, the certificates of mutual TLS and the
revocation list)."""

from __future__ import annotations

import argparse

from .. import pki

__all__ = ["cmd_init", "cmd_issue", "cmd_revoke"]


def cmd_init(args: argparse.Namespace) -> int:
    cert = pki.init_ca(args.dir, name=args.name, days=args.days, force=args.force)
    print(f"CA created: {cert} (its key {args.dir / pki.CA_KEY} stays here, 0600)")
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    files = pki.issue(args.ca_dir, args.out, args.kind, args.name, role=args.role, hosts=args.host,
                      days=args.days)
    print(f"{args.kind} certificate for {args.name}: {files.cert}, key {files.key}, CA {files.ca}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    serial = pki.parse_serial(args.serial, "SERIAL")
    added = pki.revoke(args.list, serial, args.note or "")
    shown = pki.serial_text(serial)
    print(f"revoked serial {shown} in {args.list}" if added else f"serial {shown} was revoked already")
    return 0
