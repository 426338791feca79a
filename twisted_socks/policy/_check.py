"""
C{python -m twisted_socks check}: validate a rules file and test a request
against it, as the classic sockd's C{test_sockd_conf} did.

A request is SOCKS4 by default (its C{--user} a claimed USERID); C{--socks5}
makes it SOCKS5 without authentication, C{--authenticated} a SOCKS5 login
as C{--user}, and C{--with-users} judges it as a server started with
C{--users} would (where every SOCKS5 session has logged in). C{--udp} asks
about a UDP association, or with C{DEST:PORT} a datagram to it.  With
C{--routes}, it also prints the route: for UDP, whether the routes refuse
the association (07 or 02) and what becomes of the datagram (direct,
denied, or dropped as chained: there is no relay-to-relay UDP).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from ipaddress import ip_address
from typing import TYPE_CHECKING

from ..wire._outcome import Outcome
from ..wire._request import UserSource
from ..wire._socks4 import Command
from ._patterns import AddressPattern, HostPattern
from ._policy import AccessRequest, IPAddress, normalizeAddress
from ._rules import RulesError, loadRules
from ._ruleset import Rule, RuleSet

if TYPE_CHECKING:
    from ..client._routes import RouteTable

__all__ = ["main"]

#: Exit statuses: scripts can test a request with `check ... && ...`.
ALLOWED, DENIED, INVALID = 0, 1, 2

#: Destinations that are the proxy host itself or its link, as a pair of
#: samples, one per family: a file that denies one and lets the other
#: family through has a hole (issue 15: IPv4 loopback denied, ::1 not).
_TWINS = (
    ("loopback", "127.0.0.1", "::1", "127.0.0.0/8", "::1/128"),
    ("link-local", "169.254.169.254", "fe80::1", "169.254.0.0/16", "fe80::/10"),
)


def _reaches(rule: Rule, sample: IPAddress) -> bool:
    """Whether C{rule}'s destination covers C{sample} (clients aside)."""
    destination = rule.destination
    probe = AccessRequest(None, 0, Command.CONNECT, "", 0, None, sample)
    if rule.allow:
        # A name rule allows whatever the name resolves to, either family.
        return isinstance(destination, HostPattern) or bool(
            rule.destinationMatches(probe)
        )
    # Only a denial that names destinations protects them for everyone:
    # "deny 10.0.0.0/8" (any destination) is about clients.
    return (
        isinstance(destination, AddressPattern)
        and not destination.universal
        and bool(rule.destinationMatches(probe))
    )


def familyWarnings(rules: RuleSet) -> list[str]:
    """
    Warnings about denials that cover one address family only while some
    rule allows the other family's twin of what they deny.

    A heuristic, not a proof (clients, users and ports are not compared):
    it points at a file that denies C{127.0.0.0/8} while a permit lets IPv6
    destinations through and nothing denies C{::1}.
    """
    warnings = []
    for what, v4, v6, net4, net6 in _TWINS:
        samples = {4: ip_address(v4), 6: ip_address(v6)}
        nets = {4: net4, 6: net6}
        for denied, other in ((4, 6), (6, 4)):
            deniers = [
                r for r in rules.rules if not r.allow and _reaches(r, samples[denied])
            ]
            if not deniers or any(
                not r.allow and _reaches(r, samples[other]) for r in rules.rules
            ):
                continue
            allowers = [
                r for r in rules.rules if r.allow and _reaches(r, samples[other])
            ]
            if allowers:
                warnings.append(
                    f"{deniers[0].location}: warning: denies IPv{denied} "
                    f"{what} ({nets[denied]}) but no rule denies IPv{other} "
                    f"{what} ({nets[other]}), which {allowers[0].location} "
                    f"allows; add: deny 0/0 {nets[other]}"
                )
    return warnings


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


#: C{--udp} without a destination: the association itself.
_ASSOCIATION: tuple[str | None, IPAddress | None, int] = (None, None, 0)


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
    parser.add_argument(
        "--user",
        default="",
        help="the USERID the client sends (SOCKS4), or logs in with (--authenticated)",
    )
    parser.add_argument("--ident", default=None, help="the ident user, if any")
    parser.add_argument(
        "--socks5",
        action="store_true",
        help="a SOCKS5 request (without authentication unless --authenticated "
        "or --with-users)",
    )
    parser.add_argument(
        "--authenticated",
        action="store_true",
        help="a SOCKS5 request from a client logged in as --user (implies "
        "--socks5 and --with-users)",
    )
    parser.add_argument(
        "--with-users",
        action="store_true",
        help="judge as a server started with --users: rules without auth= "
        "allow logged-in SOCKS5 clients only",
    )
    command = parser.add_mutually_exclusive_group()
    command.add_argument("--connect", metavar="DEST:PORT", type=_destination)
    command.add_argument("--bind", metavar="DEST:PORT", type=_destination)
    command.add_argument(
        "--udp",
        metavar="DEST:PORT",
        nargs="?",
        const=_ASSOCIATION,
        type=_destination,
        help="UDP ASSOCIATE (implies --socks5): alone, the association "
        "itself; with DEST:PORT, a datagram to it",
    )
    parser.add_argument(
        "--routes",
        metavar="FILE",
        help="a server's routes file: also print the route the request takes",
    )
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


def _route(path: str, host: str, request: AccessRequest) -> tuple[str, bool] | None:
    """
    The route C{request} takes by the routes file at C{path}, as text, and
    whether it denies; or L{None} (and a message on standard error) if the
    file is invalid.
    """
    from ..client._routes import RouteAction, loadRoutes

    try:
        table = loadRoutes(path, server=True)
    except RulesError as e:
        print(e, file=sys.stderr)
        return None
    if request.isAssociation:
        return _associationRoute(table, request)
    route = table.match(host, request.port, request.user, request.client)
    if route is None:
        return "route: no route matched: direct", False
    if request.command is Command.UDP_ASSOCIATE:
        from ..outbound._udproute import DatagramWay, datagramWay

        way = datagramWay(route)
        why = " (no relay-to-relay UDP)" if way is DatagramWay.CHAINED else ""
        text = f"route: {route.location}: {route.text}\n-> {way.value}{why}"
        return text, way is not DatagramWay.DIRECT
    if route.action is not RouteAction.SOCKD:
        text = f"route: {route.location}: {route.text}\n-> {route.action.value}"
        return text, route.action is RouteAction.DENY
    how = (
        "the name goes upstream unresolved"
        if route.resolvesRemotely
        else "approved addresses only"
    )
    servers = ", ".join(str(s) for s in route.servers)
    order = "in random order" if route.balance else "in order"
    text = f"route: {route.location}: {route.text}\n-> through {servers}"
    return f"{text} ({order}; {how})", False


def _associationRoute(table: RouteTable, request: AccessRequest) -> tuple[str, bool]:
    """What the routes of C{table} answer a UDP association, and if a refusal."""
    from ..outbound._udproute import associationRefusal

    refused = associationRefusal(table, request.user, request.client)
    if refused is None:
        return "route: granted; each datagram takes its destination's route", False
    outcome, reason, route = refused
    code = "07" if outcome is Outcome.COMMAND_NOT_SUPPORTED else "02"
    return f"route: {route.location}: {route.text}\n-> {code}: {reason}", True


def main(argv: Sequence[str] | None = None) -> int:
    """Run the checker; return the exit status."""
    args = _parser().parse_args(argv)
    withUsers = args.with_users or args.authenticated
    try:
        rules = loadRules(args.rules, withUsers=withUsers)
    except RulesError as e:
        print(e, file=sys.stderr)
        return INVALID
    # Warnings leave the exit status alone: scripts test requests with it.
    for warning in familyWarnings(rules):
        print(warning, file=sys.stderr)
    target = args.connect or args.bind or args.udp
    if target is None:
        print(f"{args.rules}: valid, {len(rules.rules)} rules")
        return ALLOWED
    hostname, address, port = target
    client = normalizeAddress(args.client)
    if client is None:
        print(f"bad --client address {args.client!r}", file=sys.stderr)
        return INVALID
    version = 5 if args.socks5 or args.authenticated or args.udp else 4
    if version == 4:
        source = UserSource.CLAIMED
    elif withUsers:
        # A server with users serves no SOCKS5 client that has not logged in.
        source = UserSource.AUTHENTICATED
        if not args.user:
            print("a logged-in SOCKS5 client needs --user NAME", file=sys.stderr)
            return INVALID
    else:
        source = UserSource.NONE
        if args.user:
            print(
                "SOCKS5 without authentication has no user: drop --user, "
                "or add --authenticated",
                file=sys.stderr,
            )
            return INVALID
    command = Command.CONNECT
    if args.bind:
        command = Command.BIND
    elif args.udp:
        command = Command.UDP_ASSOCIATE
    request = AccessRequest(
        client=client,
        clientPort=0,
        command=command,
        user=args.user,
        port=port,
        hostname=hostname,
        address=address,
        identUser=args.ident,
        userSource=source,
        version=version,
    )
    text, allowed = _describe(rules, request)
    if args.routes is not None:
        routed = _route(args.routes, hostname or str(address), request)
        if routed is None:
            return INVALID
        print(routed[0])
        if routed[1]:  # a route refuses what the rules allow
            allowed = False
    if request.isAssociation:
        print(f"association: {text}")
    elif hostname is not None:
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
