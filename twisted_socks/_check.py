"""
C{python -m twisted_socks check}: validate a rules file and test a request
against it, as the classic sockd's C{test_sockd_conf} did.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from ipaddress import ip_address

from ._codec import Command
from ._policy import AccessRequest, IPAddress, normalizeAddress
from ._rules import RulesError, RuleSet, loadRules

__all__ = ["main"]

#: Exit statuses: scripts can test a request with `check ... && ...`.
ALLOWED, DENIED, INVALID = 0, 1, 2


def _destination(text: str) -> tuple[str | None, IPAddress | None, int]:
    """Split C{host:port}, C{a.b.c.d:port} or C{[v6]:port}."""
    host, sep, portText = text.rpartition(":")
    if not sep or not portText.isdigit() or not 0 < int(portText) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    host = host.strip("[]")
    try:
        return None, ip_address(host), int(portText)
    except ValueError:
        if not host:
            raise argparse.ArgumentTypeError(f"no host in {text!r}") from None
        return host, None, int(portText)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m twisted_socks check",
        description=(
            "Check a rules file; with a request, print the rule that decides "
            "it. Exit status: 0 valid (and allowed), 1 denied, 2 invalid."
        ),
    )
    parser.add_argument("rules", help="the rules file")
    parser.add_argument("--client", default="127.0.0.1", help="client address")
    parser.add_argument("--user", default="", help="the USERID the client sends")
    parser.add_argument("--ident", default=None, help="the ident user, if any")
    command = parser.add_mutually_exclusive_group()
    command.add_argument("--connect", metavar="DEST:PORT", type=_destination)
    command.add_argument("--bind", metavar="DEST:PORT", type=_destination)
    parser.add_argument(
        "--resolved",
        metavar="ADDRESS",
        help="for a host name: the address it resolves to",
    )
    return parser


def _describe(rules: RuleSet, request: AccessRequest) -> tuple[str, bool | None]:
    try:
        rule = rules.match(request)
    except LookupError as pending:
        return (f"undecided: {pending} depends on the resolved address", None)
    if rule is None:
        return ("no rule matched: deny", False)
    verdict = "allow" if rule.allow else "deny"
    return (f"{rule.location}: {rule.text}\n-> {verdict}", rule.allow)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the checker; return the exit status."""
    args = _parser().parse_args(argv)
    try:
        rules = loadRules(args.rules)
    except RulesError as e:
        print(e, file=sys.stderr)
        return INVALID
    target = args.connect or args.bind
    if target is None:
        print(f"{args.rules}: valid, {len(rules.rules)} rules")
        return ALLOWED
    hostname, address, port = target
    client = normalizeAddress(args.client)
    if client is None:
        print(f"bad --client address {args.client!r}", file=sys.stderr)
        return INVALID
    request = AccessRequest(
        client=client,
        clientPort=0,
        command=Command.BIND if args.bind else Command.CONNECT,
        user=args.user,
        port=port,
        hostname=hostname,
        address=address,
        identUser=args.ident,
    )
    text, allowed = _describe(rules, request)
    if hostname is not None:
        print(f"name check ({hostname}): {text}")
        if allowed is not False and args.resolved:
            resolved = normalizeAddress(args.resolved)
            if resolved is None:
                print(f"bad --resolved address {args.resolved!r}", file=sys.stderr)
                return INVALID
            text, allowed = _describe(rules, replace(request, address=resolved))
            print(f"address check ({resolved}): {text}")
        elif allowed is None:
            print("give --resolved ADDRESS to decide")
            return DENIED
    else:
        print(text)
    return ALLOWED if allowed else DENIED
