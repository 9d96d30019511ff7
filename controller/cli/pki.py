"""``breakwater pki init|issue``: the command-line side of
:mod:`controller.pki` (the CA and the certificates of mutual TLS)."""

from __future__ import annotations

import argparse

from .. import pki

__all__ = ["cmd_init", "cmd_issue"]


def cmd_init(args: argparse.Namespace) -> int:
    cert = pki.init_ca(args.dir, name=args.name, days=args.days, force=args.force)
    print(f"CA created: {cert} (its key {args.dir / pki.CA_KEY} stays here, 0600)")
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    files = pki.issue(args.ca_dir, args.out, args.kind, args.name, role=args.role, hosts=args.host,
                      days=args.days)
    print(f"{args.kind} certificate for {args.name}: {files.cert}, key {files.key}, CA {files.ca}")
    return 0
