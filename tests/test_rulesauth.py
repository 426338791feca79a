"""
The rules' C{auth=} and C{cmd=udp} fields, and servers with users
(issue 17): the grammar, the decisions, and the built-in default policy.
"""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

import pytest

from twisted_socks import AccessRequest, Command
from twisted_socks.policy._actions import contextFor
from twisted_socks.policy._policy import LoopbackClientsPolicy
from twisted_socks.policy._rules import RulesError, loadRules, parseRules
from twisted_socks.wire._request import UserSource

from .test_rules import TABLE_RULES

ROOT = Path(__file__).resolve().parent.parent
C, B, U = Command.CONNECT, Command.BIND, Command.UDP_ASSOCIATE
CLAIMED, PASSWORD, NONE = (
    UserSource.CLAIMED,
    UserSource.AUTHENTICATED,
    UserSource.NONE,
)


def ask(
    client: str,
    source: UserSource,
    command: Command = C,
    destination: str | None = "192.0.2.7",
    port: int = 80,
    user: str = "",
) -> AccessRequest:
    """
    A request as the server builds it: SOCKS4 for a claimed user, SOCKS5
    otherwise; C{destination} L{None} (with port 0) is a UDP association.
    """
    return AccessRequest(
        client=ip_address(client),
        clientPort=1234,
        command=command,
        user=user,
        port=port,
        hostname=None,
        address=ip_address(destination) if destination is not None else None,
        userSource=source,
        version=4 if source is CLAIMED else 5,
    )


def association(client: str, source: UserSource, user: str = "") -> AccessRequest:
    """The question about a UDP association itself: no destination."""
    return ask(client, source, U, None, 0, user)


def staff(path: str) -> list[str]:
    """The decision table's user file, without a file."""
    return ["carol", "dave"]


# -- the grammar -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "sources"),
    [
        ("auth=password", {PASSWORD}),
        ("auth=none", {CLAIMED, NONE}),
        ("AUTH=None", {CLAIMED, NONE}),
        ("auth=password,none", {PASSWORD, CLAIMED, NONE}),
    ],
)
def test_authFieldParses(field: str, sources: set[UserSource]) -> None:
    """C{auth=} names how the user was established; none covers claims too."""
    [rule] = parseRules(f"permit {field} 10.0.0.0/8\n", "r.conf").rules
    assert rule.auth == frozenset(sources)


def test_authFieldTakesItsPlaceAmongTheOthers() -> None:
    """C{auth=} may stand before or after C{?=}, C{*=} and C{cmd=}."""
    [first, second] = parseRules(
        "permit auth=none ?=i *=ann cmd=connect 10.0.0.0/8\n"
        "deny cmd=bind *=bob auth=password 0/0\n",
        "r.conf",
    ).rules
    assert first.auth == frozenset([CLAIMED, NONE])
    assert first.users == frozenset(["ann"])
    assert first.commands == frozenset([C])
    assert second.auth == frozenset([PASSWORD])
    assert second.commands == frozenset([B])


@pytest.mark.parametrize(
    ("field", "commands"),
    [
        ("cmd=udp", {U}),
        ("cmd=UDP", {U}),
        ("cmd=connect,udp", {C, U}),
        ("cmd=bind", {B}),
    ],
)
def test_udpCommandParses(field: str, commands: set[Command]) -> None:
    """C{cmd=udp} is UDP ASSOCIATE, alone or with the other commands."""
    [rule] = parseRules(f"permit {field} 10.0.0.0/8 0/0\n", "r.conf").rules
    assert rule.commands == frozenset(commands)


def test_withoutTheNewFieldsRulesReadAsBefore() -> None:
    """A file without C{auth=} leaves every rule's C{auth} at L{None}."""
    rules = parseRules(TABLE_RULES, "table.conf", readUserFile=staff).rules
    assert rules
    assert all(rule.auth is None for rule in rules)


def test_existingFilesStillParse() -> None:
    """The example file and the decision table's file parse as before."""
    example = loadRules(str(ROOT / "examples" / "rules.conf"))
    assert len(example.rules) >= 10
    table = parseRules(TABLE_RULES, "table.conf", readUserFile=staff, withUsers=True)
    assert len(table.rules) == 20


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "permit auth=pam 0/0",
            "bad authentication 'pam' in 'auth=pam' (expected password or none)",
        ),
        (
            "permit auth= 0/0",
            "bad authentication '' in 'auth=' (expected password or none)",
        ),
        (
            "permit auth=none,gssapi 0/0",
            "bad authentication 'gssapi' in 'auth=none,gssapi' (expected password or none)",
        ),
        (
            "permit cmd=udp,icmp 0/0",
            "bad command 'icmp' in 'cmd=udp,icmp' (expected connect, bind or udp)",
        ),
        (
            "permit authn=none 0/0",
            "unknown field 'authn=none' (expected ?=, *=, auth= or cmd=)",
        ),
    ],
)
def test_badValuesNameFileAndLine(line: str, message: str) -> None:
    """A bad C{auth=} or C{cmd=} value is an error naming the file and line."""
    with pytest.raises(RulesError) as caught:
        parseRules("allow 127.0.0.1/32\n" + line + "\n", "/etc/socks.rules")
    assert str(caught.value) == f"/etc/socks.rules:2: {message}"


# -- auth=: SOCKS4 and SOCKS5, with and without users ------------------------------

AUTH_RULES = """\
permit auth=password 10.0.0.0/8 0/0
permit auth=none 10.0.0.0/8 0/0 eq 80
permit *=ann 192.168.0.0/16 0/0
deny 0/0
"""


@pytest.mark.parametrize(
    ("withUsers", "source", "user", "port", "line"),
    [
        # Without users: auth=password never matches (nobody logs in).
        (False, CLAIMED, "", 80, 2),
        (False, CLAIMED, "", 443, 4),
        (False, NONE, "", 80, 2),
        (False, NONE, "", 443, 4),
        # A rule without auth= matches claims as it always did.
        (False, CLAIMED, "ann", 443, 3),
        # With users: SOCKS5 sessions are authenticated.
        (True, PASSWORD, "bob", 443, 1),
        (True, CLAIMED, "", 80, 2),
        (True, CLAIMED, "", 443, 4),
        # A rule without auth= matches authenticated sessions only.
        (True, CLAIMED, "ann", 443, 4),
        (True, PASSWORD, "ann", 443, 3),
    ],
)
def test_authDecides(
    withUsers: bool, source: UserSource, user: str, port: int, line: int
) -> None:
    """
    C{auth=password} matches SOCKS5 logins only; C{auth=none} matches
    SOCKS4 and SOCKS5 without authentication; with users, a rule without
    C{auth=} matches only logins, so a SOCKS4 claim of a user's name does
    not pass for that user.
    """
    client = "192.168.1.1" if user == "ann" else "10.1.1.1"
    rules = parseRules(AUTH_RULES, "r.conf", withUsers=withUsers)
    decision = rules.decide(ask(client, source, port=port, user=user))
    assert decision.rule == f"r.conf:{line}"
    assert decision.allowed is (line != 4)


def test_socks4WithUsersAndNoAuthNoneRuleIsDenied() -> None:
    """
    With users, rules without C{auth=none} deny SOCKS4 (no rule matches),
    and the reason says what would admit it.
    """
    rules = parseRules("permit 0/0 0/0\n", "r.conf", withUsers=True)
    decision = rules.decide(ask("10.1.1.1", CLAIMED))
    assert not decision.allowed
    assert decision.reason == "not authenticated and no auth=none rule matched"
    assert rules.decide(ask("10.1.1.1", PASSWORD, user="ann")).allowed


def test_withoutUsersARuleWithoutAuthMatchesEveryone() -> None:
    """Without users, C{permit 0/0 0/0} admits SOCKS4 and SOCKS5 alike."""
    rules = parseRules("permit 0/0 0/0\n", "r.conf")
    assert rules.decide(ask("10.1.1.1", CLAIMED)).allowed
    assert rules.decide(ask("10.1.1.1", NONE)).allowed


# -- cmd=udp -----------------------------------------------------------------------

UDP_RULES = """\
deny 10.9.0.0/16
deny cmd=udp 0/0 10.0.0.0/8
deny cmd=udp 0/0 0/0 eq 25
permit cmd=udp *=ann auth=password 192.168.0.0/16 0/0 eq 53
permit cmd=udp 10.0.0.0/8 192.0.2.0/24
permit 0/0 0/0
"""


def test_associationIsJudgedOnTheClientAlone() -> None:
    """
    The association is allowed by the first C{cmd=udp} rule whose client,
    user and auth match, whatever its destination and port (the datagrams
    are judged later); denials that name destinations or ports do not
    decide it.
    """
    rules = parseRules(UDP_RULES, "u.conf", withUsers=True)
    ann = rules.decide(association("192.168.4.4", PASSWORD, "ann"))
    assert (ann.allowed, ann.rule) == (True, "u.conf:4")
    lan = parseRules(UDP_RULES, "u.conf").decide(association("10.1.1.1", NONE))
    assert (lan.allowed, lan.rule) == (True, "u.conf:5")


@pytest.mark.parametrize(
    ("client", "source", "user", "withUsers"),
    [
        # No cmd=udp rule names this client.
        ("172.16.0.1", NONE, "", False),
        # ann's rule needs a login: a SOCKS5 session without one is not ann.
        ("192.168.4.4", NONE, "ann", False),
        # Someone else from ann's network.
        ("192.168.4.4", PASSWORD, "bob", True),
        # A denial without cmd= covers UDP too.
        ("10.9.1.1", NONE, "", False),
    ],
)
def test_associationNoRuleCanMatchIsDenied(
    client: str, source: UserSource, user: str, withUsers: bool
) -> None:
    """
    An association that no C{cmd=udp} rule can match is denied, even
    though C{permit 0/0 0/0} (no C{cmd=}) would allow a CONNECT.
    """
    rules = parseRules(UDP_RULES, "u.conf", withUsers=withUsers)
    decision = rules.decide(association(client, source, user))
    assert not decision.allowed
    assert rules.decide(ask(client, source, C, user=user)).allowed is (
        client != "10.9.1.1" and (source is PASSWORD or not withUsers)
    )


def test_associationDeniedByAUniversalDenial() -> None:
    """A C{cmd=udp} denial of every destination denies the association."""
    rules = parseRules(
        "deny cmd=udp 10.0.0.0/8 0.0.0.0 0.0.0.0\npermit cmd=udp 0/0 0/0\n", "d.conf"
    )
    decision = rules.decide(association("10.1.1.1", NONE))
    assert (decision.allowed, decision.rule) == (False, "d.conf:1")
    assert rules.decide(association("172.16.0.1", NONE)).allowed


@pytest.mark.parametrize(
    ("client", "user", "destination", "port", "allowed", "line"),
    [
        ("192.168.4.4", "ann", "198.51.100.53", 53, True, 4),
        ("192.168.4.4", "ann", "198.51.100.53", 123, False, 0),
        ("192.168.4.4", "ann", "10.2.2.2", 53, False, 2),
        ("192.168.4.4", "ann", "192.0.2.9", 25, False, 3),
        ("10.1.1.1", "", "192.0.2.9", 5000, True, 5),
        ("10.1.1.1", "", "198.51.100.1", 5000, False, 0),
        ("10.9.1.1", "", "192.0.2.9", 5000, False, 1),
    ],
)
def test_datagramDestinations(
    client: str, user: str, destination: str, port: int, allowed: bool, line: int
) -> None:
    """
    Each datagram's destination is judged as a CONNECT would be, by the
    C{cmd=udp} rules (and denials without C{cmd=}); a rule that does not
    name UDP (line 6) never allows one.
    """
    rules = parseRules(UDP_RULES, "u.conf")
    source = PASSWORD if user else NONE
    decision = rules.decide(ask(client, source, U, destination, port, user))
    assert decision.allowed is allowed
    assert decision.rule == (f"u.conf:{line}" if line else "u.conf:end")


def test_ruleWithoutCmdUdpNeverAllowsUDP() -> None:
    """
    Neither C{permit 0/0 0/0}, the short form, nor C{cmd=connect,bind}
    allows an association or a datagram.
    """
    for text in ("permit 0/0 0/0", "permit c 0/0", "permit cmd=connect,bind 0/0 0/0"):
        rules = parseRules(text + "\n", "n.conf")
        assert not rules.decide(association("127.0.0.1", NONE)).allowed
        assert not rules.decide(ask("127.0.0.1", NONE, U, "192.0.2.1", 53)).allowed


# -- the built-in default ----------------------------------------------------------


def test_defaultAllowsUDPForLoopbackOnly() -> None:
    """Without rules, loopback clients may associate and send anywhere."""
    policy = LoopbackClientsPolicy()
    assert policy.decide(association("127.0.0.1", NONE)).allowed
    assert policy.decide(ask("::1", NONE, U, "192.0.2.1", 53)).allowed
    assert not policy.decide(association("10.1.1.1", NONE)).allowed


def test_defaultWithUsersServesLoginsAndDeniesSOCKS4() -> None:
    """
    With users and no rules, loopback SOCKS5 logins are served and SOCKS4
    requests, from loopback too, are denied.
    """
    policy = LoopbackClientsPolicy(withUsers=True)
    assert policy.decide(ask("127.0.0.1", PASSWORD, user="ann")).allowed
    assert policy.decide(association("127.0.0.1", PASSWORD, "ann")).allowed
    denied = policy.decide(ask("127.0.0.1", CLAIMED, user="ann"))
    assert not denied.allowed
    assert denied.reason == "not authenticated (--users) and no rules admit it"
    assert not policy.decide(ask("10.1.1.1", PASSWORD, user="ann")).allowed


def test_denialWithoutAuthCoversEveryoneWithUsers() -> None:
    """
    With users, a denial without C{auth=} still covers SOCKS4: the network
    it protects stays out of reach of a later C{permit auth=none}.
    """
    rules = parseRules(
        "deny 0/0 10.0.0.0/8\npermit auth=none 192.168.0.0/16 0/0 eq 80\n",
        "g.conf",
        withUsers=True,
    )
    inside = rules.decide(ask("192.168.1.1", CLAIMED, destination="10.1.1.1"))
    assert (inside.allowed, inside.rule) == (False, "g.conf:1")
    outside = rules.decide(ask("192.168.1.1", CLAIMED, destination="192.0.2.1"))
    assert (outside.allowed, outside.rule) == (True, "g.conf:2")


def test_percentCNamesUDPAsCmdDoes() -> None:
    """A rule command's C{%c} says C{udp} for UDP, as C{cmd=udp} does."""
    assert contextFor(association("127.0.0.1", NONE)).command == "udp"
    assert contextFor(ask("127.0.0.1", NONE, B)).command == "bind"
