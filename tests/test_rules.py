"""Tests of the rules file: grammar, errors, decisions, reload, the checker."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, ip_address
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import capturedLogs, formatEvent

from twisted_socks import AccessRequest, Command
from twisted_socks.policy._check import main as check
from twisted_socks.policy._policy import normalizeAddress
from twisted_socks.policy._reload import BackgroundReloads, RulesReloader
from twisted_socks.policy._rules import (
    AddressPattern,
    HostPattern,
    IdentMode,
    PortPattern,
    RulesError,
    RuleSet,
    loadRules,
    parseRules,
)

ROOT = Path(__file__).resolve().parent.parent

#: A rules file that uses every field of the grammar; line numbers matter.
TABLE_RULES = """\
# Rules for the decision table: every field of the grammar is used.
#NO_IDENTD: echo no identd for %u at %a
#BAD_ID: echo ident %U is not %u
deny 0.0.0.0 0.0.0.0 127.0.0.0 255.0.0.0
deny 0/0 .blocked.example
permit ?=I *=alice,bob 10.1.0.0 255.255.0.0
deny *=mallory 0/0
permit cmd=bind 10.0.0.0/8 192.0.2.21 255.255.255.255 eq ftp
deny cmd=bind 10.0.0.0/8
allow cmd=connect 10.0.0.0/8 0/0 eq http
allow 10.0.0.0/8 www.example.com eq https
allow 10.0.0.0/8 .corp.example range 8000 8999
allow fd00::/8 2001:db8::/32 range 1024 65535
allow ?=i fd00::/8 0/0 eq 443
permit c 140.113.*.*
deny b *.*.*.* eq 21
allow *=./staff.users 172.16.0.0 255.240.0.0 198.51.100.0/24 lt 1024
allow 192.168.1.0 255.255.255.0 0/0 ge 8000
allow 192.168.1.0 255.255.255.0 0/0 le 22
allow 192.168.2.0/24 0/0 gt 1023 : echo %u %a
allow 192.168.3.0/24 0/0 neq 25
allow ::1/128
deny 0.0.0.0 0.0.0.0
"""

C, B = Command.CONNECT, Command.BIND
PUBLIC = "93.184.215.14"

#: (client, USERID, command, destination, port, resolved address for a name,
#: expected: allowed?, deciding line)
CASES: list[tuple[str | None, str, Command, str, int, str | None, bool, int]] = [
    ("10.1.2.3", "alice", C, "192.0.2.7", 80, None, True, 6),
    ("10.1.2.3", "alice", C, "127.0.0.1", 80, None, False, 4),
    ("10.1.2.3", "bob", C, "198.51.100.1", 22, None, True, 6),
    ("10.1.2.3", "carol", C, "192.0.2.7", 80, None, True, 10),
    ("10.1.2.3", "carol", C, "192.0.2.7", 443, None, False, 23),
    ("10.9.9.9", "mallory", C, "192.0.2.7", 80, None, False, 7),
    ("10.1.2.3", "mallory", C, "192.0.2.7", 80, None, False, 7),
    ("10.2.0.1", "", B, "192.0.2.21", 21, None, True, 8),
    ("10.2.0.1", "", B, "192.0.2.22", 21, None, False, 9),
    ("10.2.0.1", "", B, "192.0.2.21", 20, None, False, 9),
    ("10.2.0.1", "", C, "192.0.2.21", 21, None, False, 23),
    ("10.2.0.1", "", C, "192.0.2.9", 80, None, True, 10),
    ("10.2.0.1", "", C, "www.example.com", 443, PUBLIC, True, 11),
    ("10.2.0.1", "", C, "www.example.com", 443, "127.0.0.1", False, 4),
    ("10.2.0.1", "", C, "WWW.Example.COM", 443, PUBLIC, True, 11),
    ("10.2.0.1", "", C, "www.example.com", 80, PUBLIC, True, 10),
    ("10.2.0.1", "", C, "mail.example.com", 443, PUBLIC, False, 23),
    ("10.2.0.1", "", C, "x.corp.example", 8080, "10.5.5.5", True, 12),
    ("10.2.0.1", "", C, "corp.example", 8999, "10.5.5.5", True, 12),
    ("10.2.0.1", "", C, "x.corp.example", 9000, "10.5.5.5", False, 23),
    ("10.2.0.1", "", C, "evilcorp.example", 8080, "10.5.5.5", False, 23),
    ("10.2.0.1", "", C, "ads.blocked.example", 80, PUBLIC, False, 5),
    ("10.2.0.1", "", C, "blocked.example", 80, PUBLIC, False, 5),
    ("10.2.0.1", "", C, "notblocked.example", 80, PUBLIC, True, 10),
    ("fd00::5", "", C, "2001:db8::1", 2000, None, True, 13),
    ("fd00::5", "", C, "2001:db8::1", 80, None, False, 23),
    ("fd00::5", "", C, "2001:db9::1", 5000, None, False, 23),
    ("fd00::5", "", C, "192.0.2.7", 443, None, True, 14),
    ("fd00::5", "", B, "192.0.2.7", 443, None, True, 14),
    ("203.0.113.5", "", C, "140.113.1.2", 80, None, True, 15),
    ("203.0.113.5", "", C, "140.114.1.2", 80, None, False, 23),
    ("203.0.113.5", "", B, "140.113.1.2", 21, None, False, 16),
    ("203.0.113.5", "", B, "140.113.1.2", 2121, None, False, 23),
    ("172.16.5.5", "carol", C, "198.51.100.7", 443, None, True, 17),
    ("172.31.255.255", "dave", C, "198.51.100.7", 1023, None, True, 17),
    ("172.16.5.5", "dave", C, "198.51.100.7", 1024, None, False, 23),
    ("172.16.5.5", "erin", C, "198.51.100.7", 443, None, False, 23),
    ("172.32.0.1", "carol", C, "198.51.100.7", 443, None, False, 23),
    ("172.16.5.5", "comment", C, "198.51.100.7", 443, None, False, 23),
    ("192.168.1.10", "", C, "192.0.2.7", 8000, None, True, 18),
    ("192.168.1.10", "", C, "192.0.2.7", 7999, None, False, 23),
    ("192.168.1.10", "", C, "192.0.2.7", 22, None, True, 19),
    ("192.168.1.10", "", C, "192.0.2.7", 23, None, False, 23),
    ("192.168.2.10", "", C, "192.0.2.7", 1024, None, True, 20),
    ("192.168.2.10", "", C, "192.0.2.7", 1023, None, False, 23),
    ("192.168.3.10", "", C, "192.0.2.7", 25, None, False, 23),
    ("192.168.3.10", "", C, "192.0.2.7", 587, None, True, 21),
    ("::1", "", C, "192.0.2.7", 80, None, True, 22),
    ("::1", "", C, "127.0.0.1", 80, None, False, 4),
    ("::ffff:10.1.2.3", "alice", C, "192.0.2.7", 80, None, True, 6),
    ("10.1.2.3", "alice", B, "192.0.2.7", 80, None, True, 6),
    (None, "", C, "192.0.2.7", 80, None, False, 23),
    ("10.1.2.3", "alice", C, "x.blocked.example", 80, PUBLIC, False, 5),
    ("10.1.2.3", "Alice", C, "192.0.2.7", 80, None, True, 10),
    ("11.0.0.1", "", C, "192.0.2.7", 80, None, False, 23),
    ("10.255.255.255", "", C, "192.0.2.7", 80, None, True, 10),
    ("9.255.255.255", "", C, "192.0.2.7", 80, None, False, 23),
    ("192.168.2.10", "", C, "host.example", 5000, "127.0.0.5", False, 4),
    ("192.168.2.10", "", C, "host.example", 5000, "2001:db8::5", True, 20),
    ("140.113.0.1", "", C, "169.254.169.254", 80, None, False, 23),
    ("10.1.2.3", "bob", C, "127.255.255.254", 80, None, False, 4),
    ("fd00::5", "", C, "v6.example", 2000, "2001:db8::9", True, 13),
    ("10.1.2.3", "", C, "192.0.2.7", 443, None, False, 23),
]


@pytest.fixture
def tableRules(tmp_path: Path) -> RuleSet:
    """The table's rules, with its user file beside it."""
    (tmp_path / "staff.users").write_text("carol\ndave  # a comment\n\n# comment\n")
    path = tmp_path / "table.conf"
    path.write_text(TABLE_RULES)
    return loadRules(str(path))


def makeRequest(
    client: str | None, user: str, command: Command, destination: str, port: int
) -> AccessRequest:
    """An AccessRequest as the server builds it (name unresolved for 4A)."""
    address = normalizeAddress(destination)
    return AccessRequest(
        client=normalizeAddress(client) if client is not None else None,
        clientPort=1234,
        command=command,
        user=user,
        port=port,
        hostname=None if address is not None else destination,
        address=address,
    )


def test_tableIsLargeEnough() -> None:
    """The issue asks for at least 60 cases."""
    assert len(CASES) >= 60


@pytest.mark.parametrize(
    ("client", "user", "command", "destination", "port", "resolved", "allowed", "line"),
    CASES,
)
def test_decisionTable(
    tableRules: RuleSet,
    client: str | None,
    user: str,
    command: Command,
    destination: str,
    port: int,
    resolved: str | None,
    allowed: bool,
    line: int,
) -> None:
    """
    Each request gets the expected decision from the expected line; a name
    is judged first alone (it may only be let through or denied by a line
    that needs no address), then wholly again with its resolved address.
    """
    request = makeRequest(client, user, command, destination, port)
    decision = tableRules.decide(request)
    if request.hostname is not None:
        assert resolved is not None
        if decision.allowed:
            decision = tableRules.decide(
                replace(request, address=normalizeAddress(resolved))
            )
    assert (decision.allowed, decision.rule) == (allowed, f"{tableRules.path}:{line}")


def test_nameDeniedBeforeLookupWhenNoAddressRuleComesFirst() -> None:
    """A deny by name ahead of any address rule needs no lookup at all."""
    rules = parseRules("deny 0/0 .blocked.example\nallow 0/0\n", "r.conf")
    decision = rules.decide(makeRequest("10.0.0.1", "", C, "a.blocked.example", 80))
    assert (decision.allowed, decision.rule) == (False, "r.conf:1")


def test_nameWaitsForAddressWhenAnAddressRuleComesFirst() -> None:
    """Before the lookup, a request an address rule may decide is let through."""
    rules = parseRules("deny 0/0 10.0.0.0/8\ndeny 0/0 .x.example\n", "r.conf")
    decision = rules.decide(makeRequest("10.0.0.1", "", C, "a.x.example", 80))
    assert decision.allowed
    assert decision.rule is None
    assert "r.conf:1" in decision.reason


def test_everyFieldParses(tableRules: RuleSet) -> None:
    """The table's rules parse into the expected values."""
    rules = {int(rule.location.rsplit(":", 1)[1]): rule for rule in tableRules.rules}
    assert tableRules.noIdentdCommand == "echo no identd for %u at %a"
    assert tableRules.badIdCommand == "echo ident %U is not %u"
    assert rules[6].identMode is IdentMode.STRICT
    assert rules[6].users == frozenset({"alice", "bob"})
    assert rules[6].client == AddressPattern(
        4, 0x0A010000, 0xFFFF0000, "10.1.0.0 255.255.0.0"
    )
    assert rules[8].commands == frozenset({Command.BIND})
    assert rules[8].port == PortPattern(21, 21)
    assert rules[11].destination == HostPattern("www.example.com", False)
    assert rules[12].destination == HostPattern("corp.example", True)
    assert rules[12].port == PortPattern(8000, 8999)
    assert rules[14].identMode is IdentMode.LENIENT
    assert rules[15].commands == frozenset({Command.CONNECT})
    assert rules[15].destination == AddressPattern(
        4, 0x8C710000, 0xFFFF0000, "140.113.*.*"
    )
    assert rules[17].users == frozenset({"carol", "dave"})
    assert rules[20].shellCommand == "echo %u %a"
    assert rules[21].port == PortPattern(25, 25, negate=True)
    assert not rules[23].allow


def test_classicNonContiguousMaskComparesLikeSockd() -> None:
    """Any dotted mask works as sockd's (addr & mask) == (rule & mask)."""
    rules = parseRules("allow 10.0.0.5 255.0.0.255\n", "r.conf")
    yes = makeRequest("10.77.3.5", "", C, "192.0.2.1", 80)
    no = makeRequest("10.77.3.6", "", C, "192.0.2.1", 80)
    assert rules.decide(yes).allowed
    assert not rules.decide(no).allowed


def test_emptyRulesDenyEverything() -> None:
    """An empty file (or only comments) denies every request."""
    rules = parseRules("# nothing\n\n", "r.conf")
    decision = rules.decide(makeRequest("127.0.0.1", "", C, "127.0.0.1", 80))
    assert not decision.allowed
    assert decision.reason == "no rule matched"


def test_shellCommandSeparatorIsNotConfusedByIPv6() -> None:
    """': cmd' ends the rule; '::1' and 'fd00::/8' are addresses."""
    rules = parseRules("allow ::1/128 fd00::/8 :echo %u: done\n", "r.conf")
    [rule] = rules.rules
    assert rule.client.version == 6
    assert rule.destination == AddressPattern(6, 0xFD << 120, 0xFF << 120, "fd00::/8")
    assert rule.shellCommand == "echo %u: done"


ERRORS = [
    (
        "allow 10.0.0.0 255.0.300.0",
        "bad mask '255.0.300.0' (expected a dotted netmask or /prefix)",
    ),
    (
        "allow 10.0.0.0 255.0.0",
        "bad mask '255.0.0' (expected a dotted netmask or /prefix)",
    ),
    (
        "allow 10.0.0.0",
        "missing mask after '10.0.0.0' (expected a dotted netmask or /prefix)",
    ),
    (
        "allow 10.0.0.0 eq 80",
        "missing mask after '10.0.0.0' (expected a dotted netmask or /prefix)",
    ),
    ("grant 0/0", "unknown action 'grant' (expected allow, permit or deny)"),
    ("allow ?=x 0/0", "bad ident mode '?=x' (expected ?=n, ?=i or ?=I)"),
    ("allow *=a,,b 0/0", "empty user name in '*=a,,b'"),
    (
        "allow *=/nonexistent/users 0/0",
        "cannot read user file '/nonexistent/users': No such file or directory",
    ),
    (
        "allow cmd=icmp 0/0",
        "bad command 'icmp' in 'cmd=icmp' (expected connect, bind or udp)",
    ),
    ("allow foo=bar 0/0", "unknown field 'foo=bar' (expected ?=, *=, auth= or cmd=)"),
    (
        "allow",
        "missing client address (expected an address and mask, address/prefix, or a wildcard such as 10.*.*.*)",
    ),
    (
        "allow ?=i",
        "missing client address (expected an address and mask, address/prefix, or a wildcard such as 10.*.*.*)",
    ),
    (
        "allow 10.0.0/8",
        "bad client address '10.0.0/8' (expected an address and mask, address/prefix, or a wildcard such as 10.*.*.*)",
    ),
    (
        "allow 10.*.*",
        "bad client address '10.*.*' (expected an address and mask, address/prefix, or a wildcard such as 10.*.*.*)",
    ),
    (
        "allow 0/0 10.0.0.0/33",
        "bad destination address '10.0.0.0/33' (expected an address and mask, address/prefix, or a wildcard such as 10.*.*.*)",
    ),
    (
        "allow 0/0 bad..name",
        "bad destination host name 'bad..name' (expected a name such as www.example.com or .example.com)",
    ),
    (
        "allow 0/0 0/0 eq 99999",
        "bad port '99999' (expected a number 0-65535 or a service name)",
    ),
    (
        "allow 0/0 0/0 eq nosuchservice",
        "bad port 'nosuchservice' (unknown service; expected a number 0-65535 or a service name)",
    ),
    (
        "allow 0/0 0/0 eq",
        "missing port after 'eq' (expected a number 0-65535 or a service name)",
    ),
    (
        "allow 0/0 0/0 range 10",
        "missing port after 'range' (expected a number 0-65535 or a service name)",
    ),
    ("allow 0/0 0/0 range 10 5", "bad range 10 5 (expected LOW <= HIGH)"),
    (
        "allow 0/0 0/0 eq 80 extra",
        "unexpected 'extra' (expected the end of the rule or ': command')",
    ),
    (
        "allow 0/0 0/0 0/0",
        "unexpected '0/0' (expected a port condition: eq, neq, lt, le, gt, ge or range)",
    ),
    ("permit c", "missing destination after the command letter"),
    (
        "allow 10.0.0.0 255.0.00.0",
        "bad mask '255.0.00.0' (expected a dotted netmask or /prefix)",
    ),
    (
        "allow 10.0.0.0 0255.0.0.0",
        "bad mask '0255.0.0.0' (expected a dotted netmask or /prefix)",
    ),
    (
        "allow 010.*.*.*",
        "bad client address '010.*.*.*' (expected an address and mask, address/prefix, or a wildcard such as 10.*.*.*)",
    ),
    (
        "allow 0/0 0/0 eq \u00b2",
        "bad port '\u00b2' (unknown service; expected a number 0-65535 or a service name)",
    ),
    (
        "allow 10.0.0.0 255.\u00b255.0.0",
        "bad mask '255.\u00b255.0.0' (expected a dotted netmask or /prefix)",
    ),
    (": echo hi", "a command with no rule before ':'"),
    ("allow 0/0 " + "x" * 1100, "line is 1110 characters (at most 1023)"),
    (
        "allow 0/0 : echo `%u`",
        "unsafe command: %u follows a backquote, whose quoting is not followed; put the token outside it",
    ),
    (
        "#BAD_ID: echo ${%U}",
        "unsafe command: %U follows a $ followed by {, whose quoting is not followed; put the token outside it",
    ),
]


@pytest.mark.parametrize(("line", "message"), ERRORS)
def test_errorNamesFileLineAndField(line: str, message: str) -> None:
    """Each error says the file, the line and what was expected, exactly."""
    text = "# first line is fine\nallow 127.0.0.1/32\n" + line + "\n"
    with pytest.raises(RulesError) as caught:
        parseRules(text, "rules.conf")
    assert str(caught.value) == f"rules.conf:3: {message}"
    assert (caught.value.path, caught.value.line) == ("rules.conf", 3)


def test_unreadableFileIsAnError(tmp_path: Path) -> None:
    """A missing rules file is an error naming the file."""
    with pytest.raises(RulesError) as caught:
        loadRules(str(tmp_path / "missing.conf"))
    assert str(caught.value).endswith(
        "missing.conf: cannot read: No such file or directory"
    )


def test_exampleFileIsValid() -> None:
    """examples/rules.conf, which the docs quote, parses."""
    rules = loadRules(str(ROOT / "examples" / "rules.conf"))
    assert len(rules.rules) >= 10


def test_matchHookRunsWithDecidingRule() -> None:
    """A RuleSet's hook is attached to decisions as their action."""
    calls = []
    rules = parseRules(
        "deny 0/0 0/0 eq 25 : echo no mail\nallow 0/0\n",
        "r.conf",
        onMatch=lambda rule, request, decision: calls.append(
            (rule.location, request.port, decision.allowed)
        ),
    )
    denied = rules.decide(makeRequest("10.0.0.1", "", C, "192.0.2.1", 25))
    assert denied.action is not None
    assert calls == []
    denied.action(None)
    assert calls == [("r.conf:1", 25, False)]


class Holder:
    """Stands in for the server factory: something with a policy."""

    policy: object = None


def test_reloadSwapsValidRulesAndKeepsOldOnError(tmp_path: Path) -> None:
    """A valid file replaces the rules; an invalid one changes nothing."""
    path = tmp_path / "rules.conf"
    path.write_text("allow 0/0\n")
    holder = Holder()
    reloader = RulesReloader(holder, str(path))  # type: ignore[arg-type]
    first = reloader.load()
    assert holder.policy is first
    path.write_text("deny 0/0\n")
    assert reloader.reload()
    second = holder.policy
    assert isinstance(second, RuleSet) and not second.rules[0].allow
    path.write_text("deny 0/0\nallow 10.0.0.0 255.0.300.0\n")
    assert not reloader.reload()
    assert holder.policy is second


def runCheck(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the checker; return its status, stdout and stderr."""
    status = check(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_checkerValidatesFiles(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`check FILE`: 0 and a summary when valid, 2 and the error when not."""
    good = tmp_path / "good.conf"
    good.write_text("allow 10.0.0.0/8\ndeny 0/0\n")
    assert runCheck(capsys, str(good)) == (0, f"{good}: valid, 2 rules\n", "")
    bad = tmp_path / "bad.conf"
    bad.write_text("allow 10.0.0.0/8\nallow 10.0.0.0 255.0.300.0\n")
    status, out, err = runCheck(capsys, str(bad))
    assert (status, out) == (2, "")
    assert err == (
        f"{bad}:2: bad mask '255.0.300.0' (expected a dotted netmask or /prefix)\n"
    )


def test_checkerReportsMatchingLine(capsys: pytest.CaptureFixture[str]) -> None:
    """`check FILE --client --user --connect`: the deciding line and verdict."""
    example = str(ROOT / "examples" / "rules.conf")
    status, out, _ = runCheck(
        capsys,
        example,
        "--client",
        "10.1.2.3",
        "--user",
        "alice",
        "--connect",
        "192.0.2.7:80",
    )
    assert status == 0
    assert out == (
        f"{example}:21: permit ?=I *=alice,bob 10.1.0.0 255.255.0.0\n-> allow\n"
    )
    status, out, _ = runCheck(
        capsys, example, "--client", "10.1.2.3", "--connect", "127.0.0.1:22"
    )
    assert status == 1
    assert out.endswith("-> deny\n")


def test_checkerJudgesNamesThenResolvedAddress(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """For a name: the name check, then the check of the given address."""
    rules = tmp_path / "r.conf"
    rules.write_text("deny 0/0 127.0.0.0/8\nallow 0/0 .example.com\n")
    status, out, _ = runCheck(
        capsys,
        str(rules),
        "--connect",
        "www.example.com:443",
        "--resolved",
        "127.0.0.1",
    )
    assert status == 1
    assert out.splitlines() == [
        f"name check (www.example.com): undecided: {rules}:1 depends on the "
        "resolved address",
        f"address check (127.0.0.1): {rules}:1: deny 0/0 127.0.0.0/8",
        "-> deny",
    ]
    status, out, _ = runCheck(
        capsys,
        str(rules),
        "--connect",
        "www.example.com:443",
        "--resolved",
        "192.0.2.1",
    )
    assert status == 0
    assert out.splitlines()[-1] == "-> allow"


def test_zeroMaskMatchesEitherFamily() -> None:
    """0.0.0.0 0.0.0.0 means anything, IPv6 clients too; other masks don't."""
    anything = AddressPattern(4, 0, 0, "0.0.0.0 0.0.0.0")
    assert anything.matches(IPv4Address("1.2.3.4"))
    assert anything.matches(normalizeAddress("2001:db8::1"))
    tenNet = AddressPattern(4, 0x0A000000, 0xFF000000, "10/8")
    assert not tenNet.matches(normalizeAddress("2001:db8::1"))
    assert not tenNet.matches(None)


#: README's first rule and a classic catch-all (issue 15, item 2).
CLASSIC_LOOPBACK_DENY = (
    "deny 0.0.0.0 0.0.0.0 127.0.0.0 255.0.0.0\npermit 0.0.0.0 0.0.0.0\n"
)


@pytest.mark.parametrize(
    "destination",
    [
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:0:127.0.0.1",
        "::127.0.0.1",
        "64:ff9b::127.0.0.1",
        "2002:7f00:1::1",
        "fe80::1",
        "2001:db8::1",
    ],
)
def test_classicRulesNeverAllowIPv6(destination: str) -> None:
    """
    With a loopback deny written for IPv4 and a classic catch-all permit,
    IPv6 loopback is denied: an omitted destination allows IPv4 only, and an
    IPv6 address that carries an IPv4 one is judged as that address.
    """
    rules = parseRules(CLASSIC_LOOPBACK_DENY, "r.conf")
    request = AccessRequest(
        IPv4Address("10.1.2.3"),
        1,
        C,
        "",
        80,
        "host.example",
        ip_address(destination),
    )
    decision = rules.decide(request)
    assert not decision.allowed
    assert decision.rule in ("r.conf:1", "r.conf:end")
    assert rules.decide(replace(request, address=IPv4Address("192.0.2.7"))).allowed


def test_embeddedIPv4IsJudgedAsThatAddress() -> None:
    """Each IPv6 form that reaches an IPv4 host is matched as that host."""
    rules = parseRules("deny 0/0 10.0.0.0/8\nallow 0/0 0/0\n", "r.conf")
    for destination in ("::ffff:10.1.2.3", "64:ff9b::a01:203", "2002:a01:203::9"):
        request = AccessRequest(
            IPv4Address("10.1.2.3"), 1, C, "", 80, None, ip_address(destination)
        )
        assert rules.decide(request).rule == "r.conf:1", destination
    for destination in ("::", "::1", "2001:db8::a01:203"):
        request = AccessRequest(
            IPv4Address("10.1.2.3"), 1, C, "", 80, None, ip_address(destination)
        )
        assert rules.decide(request).rule == "r.conf:2", destination


@pytest.mark.parametrize(
    "destination, family, allowed",
    [
        ("0/0", 4, True),
        ("0/0", 6, True),
        ("0.0.0.0 0.0.0.0", 4, True),
        ("0.0.0.0 0.0.0.0", 6, False),
        ("0.0.0.0/0", 6, False),
        ("*.*.*.*", 6, False),
        ("::/0", 6, True),
        ("::/0", 4, False),
        ("", 4, True),
        ("", 6, False),
    ],
)
def test_allowedDestinationFamily(destination: str, family: int, allowed: bool) -> None:
    """Which destination forms allow which family: only 0/0 allows both."""
    rules = parseRules(f"allow 0/0 {destination}\n", "r.conf")
    address = ip_address("192.0.2.7" if family == 4 else "2001:db8::7")
    request = AccessRequest(IPv4Address("10.1.2.3"), 1, C, "", 80, None, address)
    assert rules.decide(request).allowed is allowed


@pytest.mark.parametrize(
    "destination", ["", "0.0.0.0 0.0.0.0", "0.0.0.0/0", "*.*.*.*", "::/0", "0/0"]
)
def test_catchAllDenialsDenyBothFamilies(destination: str) -> None:
    """
    A denial is never narrower than it reads: any zero-mask or omitted
    destination denies both families, and a name before any lookup.
    """
    rules = parseRules(f"deny *=mallory 0/0 {destination}\nallow 0/0 0/0\n", "r")
    for address in (IPv4Address("192.0.2.7"), ip_address("2001:db8::7"), None):
        request = AccessRequest(
            IPv4Address("10.1.2.3"), 1, C, "mallory", 80, "x.example", address
        )
        assert rules.decide(request).rule == "r:1"


def test_checkerWarnsAboutOneFamilyDenials(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """
    `check FILE` warns (exit status still 0) when a denial covers one family
    and a permit lets the other family's twin through, not when both are
    denied or nothing lets the other family through.
    """
    rules = tmp_path / "r.conf"
    rules.write_text("deny 0/0 127.0.0.0/8\nallow 10.0.0.0/8 0/0 eq https\n")
    status, out, err = runCheck(capsys, str(rules))
    assert (status, out) == (0, f"{rules}: valid, 2 rules\n")
    assert err == (
        f"{rules}:1: warning: denies IPv4 loopback (127.0.0.0/8) but no rule "
        f"denies IPv6 loopback (::1/128), which {rules}:2 allows; "
        "add: deny 0/0 ::1/128\n"
    )
    rules.write_text("deny 0/0 ::1\nallow 0/0 .example.com\n")
    status, _, err = runCheck(capsys, str(rules))
    assert status == 0
    assert "denies IPv6 loopback (::1/128) but no rule denies IPv4" in err
    for safe in (
        "deny 0/0 127.0.0.0/8\ndeny 0/0 ::1\nallow 0/0 0/0\n",
        CLASSIC_LOOPBACK_DENY,
        "deny 0/0 ::1\nallow fd00::/8 ::/0\n",
    ):
        rules.write_text(safe)
        assert runCheck(capsys, str(rules))[2] == ""


class _SyncReactor:
    """Runs callFromThread's call at once (the "thread" runs inline)."""

    def callFromThread(self, f: Any, *args: Any) -> None:
        f(*args)


def test_reloadRequestsCoalesceIntoOneMore(tmp_path: Path) -> None:
    """
    Requests made while a reload parses make exactly one more reload when
    it ends (it reads the file as it is then), however many there were;
    the parse happens in the thread, the install after it.
    """
    path = tmp_path / "rules.conf"
    path.write_text("allow 0/0\n")
    holder = Holder()
    reloader = RulesReloader(holder, str(path))  # type: ignore[arg-type]
    reloader.load()
    threads: list[Any] = []
    reloads = BackgroundReloads(_SyncReactor(), reloader, startThread=threads.append)
    path.write_text("deny 0/0\n")
    for _ in range(10):
        reloads.reload()
    assert (reloads.parses, len(threads)) == (1, 1)
    installed = holder.policy
    path.write_text("deny 0/0\nallow 10.0.0.0/8\n")
    threads.pop()()  # the first parse ends: one more starts
    assert reloads.parses == 2 and len(threads) == 1
    assert isinstance(holder.policy, RuleSet) and holder.policy is not installed
    threads.pop()()
    assert reloads.parses == 2 and threads == []
    assert isinstance(holder.policy, RuleSet) and len(holder.policy.rules) == 2
    reloads.reload()  # idle again: a request starts a reload at once
    assert reloads.parses == 3 and len(threads) == 1


def test_halfWrittenFileIsNotApplied(tmp_path: Path) -> None:
    """
    On reload, a file whose last line has no newline (still being written),
    or an empty one (truncated before it is rewritten), keeps the previous
    rules, and the log line says why; at start-up such a
    file loads (many hand-written files lack the final newline).
    """
    path = tmp_path / "rules.conf"
    path.write_text("deny 0/0 127.0.0.0/8\nallow 0/0")
    holder = Holder()
    reloader = RulesReloader(holder, str(path))  # type: ignore[arg-type]
    first = reloader.load()
    assert len(first.rules) == 2
    path.write_text("deny 0/0 127.0.0.0/8\nallow 10.0.0.0/8 0/0\nallow 0/")
    with capturedLogs() as events:
        assert not reloader.reload()
        threads: list[Any] = []
        reloads = BackgroundReloads(_SyncReactor(), reloader, threads.append)
        reloads.reload()
        threads.pop()()
    assert holder.policy is first
    messages = [formatEvent(e) for e in events]
    expected = (
        f"rules not reloaded, previous rules stay in force: {path}:3: the last "
        "line does not end with a newline: the file may be half-written "
        "(replace it atomically: write a new file, then rename it over this one)"
    )
    assert messages == [expected, expected]
    path.write_text("")
    with capturedLogs() as events:
        assert not reloader.reload()
    assert holder.policy is first
    assert [formatEvent(e) for e in events] == [
        f"rules not reloaded, previous rules stay in force: {path}:1: the file "
        "is empty: it may be half-written (replace it atomically; to deny "
        "everything, write a comment line)"
    ]
    path.write_text("deny 0/0\n")
    assert reloader.reload()
    assert holder.policy is not first
