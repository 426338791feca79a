"""
Tests for the shell actions of sockd.conf rules (twisted_socks.policy._actions).

The quoting is proven by running expanded commands through real shells and
checking what arrived and that nothing else ran. The runner is tested with
real processes on the test reactor (pytest-twisted); every wait is bounded,
and the only network traffic is on loopback.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import string
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import process, reactor, threads
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import LogEvent, capturedLogs

from tests._support import Echo, eventually, listen
from twisted_socks import Command, encodeRequest
from twisted_socks.policy import _actions
from twisted_socks.policy._actions import (
    ACTION_PATH,
    MAX_OUTPUT,
    TOKENS,
    ActionContext,
    ShellActionRunner,
    UnsafeTemplate,
    checkTemplate,
    expandTokens,
    shellHook,
    threadedReverseLookup,
    tokensUsed,
)
from twisted_socks.policy._rules import RulesError, parseRules
from twisted_socks.server._factory import SOCKSv4ServerFactory

NAMESPACE = "twisted_socks.actions"

#: Client-controlled text that would run C{touch PWNED} (or worse) if it
#: reached the shell unquoted, or mangle the command line.
HOSTILE = [
    "x; touch PWNED",
    "x && touch PWNED",
    "x | touch PWNED",
    "$(touch PWNED)",
    "`touch PWNED`",
    "'",
    "'; touch PWNED; '",
    '"',
    '"; touch PWNED; "',
    "'$(touch PWNED)'",
    '"$(touch PWNED)"',
    "\\",
    "\\'; touch PWNED; \\'",
    "a\ntouch PWNED",
    "\ntouch PWNED\n",
    "\x1b]0;owned\x07\x1b[2J",
    "*",
    "~root",
    "${PATH}",
    "x > PWNED",
    "-n",
    "",
    " ",
    "%u %z %%",
    "\t\r\v\f",
    "A" * 4096,
    "\udcff\udcfe not UTF-8",
    "caf\u00e9 \u2603",
    # Evaluated as arithmetic, bash runs the subscript's command.
    "a[$(touch PWNED)]",
    "x[`touch PWNED`]",
]

SHELLS = [s for s in ("/bin/sh", "/bin/dash", "/bin/bash") if os.access(s, os.X_OK)]


def shellRun(
    shell: str, command: str, cwd: Path, timeout: float = 10
) -> subprocess.CompletedProcess[bytes]:
    """Run C{command} with C{shell -c} in C{cwd}, bytes in and out."""
    return subprocess.run(
        [shell, "-c", os.fsencode(command)],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def makeContext(**overrides: Any) -> ActionContext:
    """A request context with harmless defaults."""
    fields: dict[str, Any] = {
        "clientAddress": "127.0.0.1",
        "command": "connect",
        "destinationPort": 80,
        "destinationAddress": "127.0.0.2",
        "destinationName": None,
        "userid": "alice",
        "identUser": None,
        "serverPid": 4242,
    }
    fields.update(overrides)
    return ActionContext(**fields)


class FakeLookup:
    """A reverse lookup that records its calls and answers from a table."""

    def __init__(self, names: dict[str, str | None] | None = None) -> None:
        self.names = names or {}
        self.calls: list[str] = []

    def __call__(self, address: str) -> Deferred[str | None]:
        self.calls.append(address)
        return succeed(self.names.get(address))


def actionEvents(events: Sequence[LogEvent]) -> list[LogEvent]:
    """The events that the runner logged."""
    return [e for e in events if e.get("log_namespace") == NAMESPACE]


def runner(**kwargs: Any) -> ShellActionRunner:
    """A runner on the test reactor that never does real DNS."""
    kwargs.setdefault("reverseLookup", FakeLookup())
    return ShellActionRunner(reactor, **kwargs)


def pct(path: Path) -> str:
    """A path as a quoted shell word, safe to put into a template."""
    return shlex.quote(str(path)).replace("%", "%%")


# Token substitution


def test_everyTokenIsReplaced() -> None:
    """Each of the ten tokens is replaced by its own value."""
    values = {letter: f"v{ord(letter)}" for letter in TOKENS}
    template = "echo %A %a %c %p %S %s %U %u %Z %z"
    expected = "echo " + " ".join(f"v{ord(c)}" for c in "AacpSsUuZz")
    assert expandTokens(template, values) == expected


def test_doublePercentIsOnePercent() -> None:
    """C{%%} is a literal C{%}, even before a token letter."""
    assert expandTokens("100%% %%u %%%u", {"u": "bob"}) == "100% %u %bob"


def test_unknownTokensAreKeptLiterally() -> None:
    """
    C{%q}, C{%1}, C{% } and a C{%} at the end pass through unchanged, so
    C{date +%F} in a template still works.
    """
    values = dict.fromkeys(TOKENS, "X")
    for template in ("%q", "%1 %  %-", "date +%F", "end %", "%\u00e9"):
        assert expandTokens(template, values) == template


def test_tokenWithoutValueIsKept() -> None:
    """A token whose letter is not among the values is left as it is."""
    assert expandTokens("%A and %u", {"u": "bob"}) == "%A and bob"


def test_adjacentTokens() -> None:
    """Tokens next to each other, or to text, are each replaced."""
    values = {"a": "10.0.0.1", "s": "80", "u": "bob", "c": "connect"}
    assert expandTokens("echo %a:%s%u@%c.", values) == ("echo 10.0.0.1:80bob@connect.")
    assert expandTokens("echo %u%u", {"u": "a b"}) == "echo 'a b''a b'"


def test_templateWithoutTokens() -> None:
    """A template without tokens comes back unchanged and uses no token."""
    template = "echo 'hello' \"world\" | mail -s x root"
    assert expandTokens(template, dict.fromkeys(TOKENS, "X")) == template
    assert tokensUsed(template) == frozenset()


def test_valuesAreNotExpandedAgain() -> None:
    """A value that looks like a token is not replaced in turn."""
    values = {"u": "%z", "z": "1.2.3.4"}
    assert expandTokens("echo %u %z", values) == "echo %z 1.2.3.4"


@pytest.mark.parametrize("value", HOSTILE)
def test_unquotedTokenIsShlexQuoted(value: str) -> None:
    """Outside quotes, a value becomes exactly C{shlex.quote(value)}."""
    assert expandTokens("cmd %u", {"u": value}) == "cmd " + shlex.quote(value)


def test_emptyValueIsAnEmptyWord() -> None:
    """An empty value (no ident user) keeps its place as an empty argument."""
    assert expandTokens("cmd %U x", {"U": ""}) == "cmd '' x"


def test_tokensUsed() -> None:
    """L{tokensUsed} finds the known tokens, not C{%%X} nor unknown ones."""
    assert tokensUsed("finger @%A | mail %u") == frozenset("Au")
    assert tokensUsed("%Z:%s") == frozenset("Zs")
    assert tokensUsed("%%A %%Z %q %") == frozenset()
    assert tokensUsed("%%%A") == frozenset("A")
    assert tokensUsed("%A%a%c%p%S%s%U%u%Z%z") == TOKENS


@pytest.mark.parametrize(
    "template",
    [
        "echo `echo %u`",
        "echo `date` %u",
        'echo "`%u`"',
        'echo "`date` %u"',
        'echo "${x:-%u}"',
        'echo "$(echo %u)"',
        "echo ${x:-%u}",
        "echo \\%u",
        'echo "\\%u"',
        "echo $%u",
        'echo "$%u"',
        "echo $'%u'",
        'echo $"%u"',
        "cat <<EOF\n%u\nEOF",
        "true;#%u",
        "printf %u\\",
        "echo %u x \\",
    ],
)
def test_tokensWhereQuotingIsUnknownAreRefused(template: str) -> None:
    """
    A token inside (or after) a construct whose quoting rules are not
    followed, or right after a backslash or C{$}, is refused, and so is a
    command with a token that ends in a lone backslash (bash drops that
    backslash when a value holds a newline, and keeps it otherwise); so is
    the template at load time.
    """
    with pytest.raises(UnsafeTemplate):
        expandTokens(template, {"u": "bob"})
    with pytest.raises(UnsafeTemplate):
        checkTemplate(template)


@pytest.mark.parametrize(
    "template",
    [
        "/usr/ucb/finger @%A | /usr/ucb/mail -s 'SOCKS: rejected %u@%A (%U)' root",
        '(echo "%c from %u@%A to %Z:%s (%S)" | mail root) &',
        "echo $(date +%%F) %u",
        "date +%F; echo %u",
        "echo `date` %q",
        "echo 'a $(b) `c`' %u # note %u",
        "echo \\\\%u",
        "echo $$ %p",
    ],
)
def test_classicTemplatesAreAccepted(template: str) -> None:
    """Templates in the style of sockd.conf(5) pass L{checkTemplate}."""
    checkTemplate(template)


@pytest.mark.parametrize(
    "template",
    [
        "echo $(( %u ))",
        "echo $((%u+1))",
        'echo "$(( %u ))"',
        "(( %u ))",
        "echo $[ %u ]",
        'echo "$[%u]"',
        "let x=%u",
        "[[ %u -eq 1 ]] && echo x",
        "[[ -n %u ]]",
        "a[%u]=1",
        "a['%u']=1; echo x",
        "declare -i x=%u",
        "typeset x=%u",
        "local x=%u",
        "read x <<< %u",
        "echo %u | read x",
        "printf -v x %u",
        "test -v %u",
        "[ -v %u ]",
        'set -- %u; eval "$1"',
        "X=%u; 'eval' \"$X\"",
        'X=%u; e"val" "$X"',
        "trap %u EXIT",
        "sh -c %u",
        "/bin/bash -c 'echo %u'",
        "echo x | xargs echo %u",
        "find . -exec echo %u \\;",
        "awk 'BEGIN { print \"%u\" }'",
        "sed s/x/%u/",
        "env X=%u logger x",
        "nohup mail -s %u root",
        "exec logger %u",
        "command logger %u",
        "ssh host logger %u",
        ". ./%u",
        "echo x; . /etc/%u",
        "%u",
        "%u x",
        "'%u' x",
        '"%u" x',
        "/usr/bin/%u",
        "X=1 %u",
        "echo x; %u",
        "echo x && %u",
        "echo x | %u",
        "echo $(%u)",
        "(%u)",
        "{ %u; }",
        "if %u; then echo x; fi",
        "! %u",
        "echo x &>/dev/null %u",
        "echo x > %u",
        "echo x >> /var/log/%u",
        "cat < %u",
        "echo x 2>%u",
        "echo x; 2>/dev/null %u",
        ">/dev/null %u",
        "case x in x) %u;; esac",
        "case x in (x) echo x;; (*) %u;; esac",
        "X=$(date) %u",
        "$(echo logger)%u x",
        "f() { %u; }; f",
        "function f { %u; }; f",
        "echo $(echo x; %u)",
    ],
)
def test_tokensWhereTheShellEvaluatesAreRefused(template: str) -> None:
    """
    A token is refused, whatever the values, in shell arithmetic, a bash
    conditional, an array subscript, a command that evaluates text or runs
    its arguments as a command (directly, or through a variable anywhere
    in the template), a command name and a redirection target: quoting
    cannot make a value inert there.
    """
    with pytest.raises(UnsafeTemplate):
        checkTemplate(template)


def test_arithmeticTemplateIsRefusedWhenRulesLoad() -> None:
    """
    A rule command with C{$(( %u ))} stops the rules from loading, with the
    file, the line and the reason.
    """
    with pytest.raises(RulesError) as caught:
        parseRules("deny 0/0\nallow 0/0 : echo $(( %u ))\n", "r.conf")
    assert str(caught.value).startswith("r.conf:2: unsafe command: %u in a command")
    assert "'$(('" in str(caught.value)
    with pytest.raises(RulesError) as caught:
        parseRules("#NO_IDENTD: let n=%u\n", "r.conf")
    assert str(caught.value).startswith("r.conf:1: unsafe command: ")


#: Every form in which a template may hold a token, with a harmless value
#: and what it prints (printf's C{%s} is written C{%%s}).
ACCEPTED_FORMS = [
    ("printf '<%%s>' %u", "<V>"),
    ("printf '<%%s>' '%u'", "<V>"),
    ("printf '<%%s>' \"%u\"", "<V>"),
    ("printf '<%%s>' @%u:%u", "<@V:V>"),
    ("printf '<%%s>' 'user %u'\"@%u\"", "<user V@V>"),
    ("X=%u; printf '<%%s>' \"$X\"", "<V>"),
    ("X=%u printf '<%%s>' x", "<x>"),
    ("set -- %u; printf '<%%s>' \"$1\"", "<V>"),
    ("for x in %u; do printf '<%%s>' \"$x\"; done", "<V>"),
    ("case %u in *) printf '<%%s>' \"%u\";; esac", "<V>"),
    ("( printf '<%%s>' %u )", "<V>"),
    ("{ printf '<%%s>' %u; }", "<V>"),
    ("printf '<%%s>' $(printf %%s %u)", "<V>"),
    ("printf '<%%s>' %u | cat", "<V>"),
    ("true && printf '<%%s>' %u", "<V>"),
    ("if test -n %u; then printf '<%%s>' %u; fi", "<V>"),
    ("[ %u = V ] && printf '<%%s>' %u", "<V>"),
    ("printf '<%%s>' %u 2>/dev/null", "<V>"),
    ("printf '<%%s>' ok # %u", "<ok>"),
    ("$(echo printf) '<%%s>' %u", "<V>"),
    ("X=$(echo x) printf '<%%s>' %u", "<V>"),
    ("printf '<%%s>' $(echo y)%u", "<yV>"),
    ("f() { printf '<%%s>' %u; }; f", "<V>"),
    ("printf '<%%s>' %u\nprintf '<%%s>' %u", "<V><V>"),
]


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(("template", "prints"), ACCEPTED_FORMS)
@pytest.mark.parametrize(
    "hostile", ["$(touch PWNED)", "a[$(touch PWNED)]", "`touch PWNED`"]
)
def test_acceptedFormsNeverRunTheValue(
    shell: str, template: str, prints: str, hostile: str, tmp_path: Path
) -> None:
    """
    Every accepted form of token works with a harmless value, and a USERID
    that would run C{touch PWNED} creates nothing, under each shell.
    """
    checkTemplate(template)
    harmless = shellRun(shell, expandTokens(template, {"u": "V"}), tmp_path)
    assert (harmless.returncode, harmless.stdout) == (0, prints.encode())
    result = shellRun(shell, expandTokens(template, {"u": hostile}), tmp_path)
    assert not (tmp_path / "PWNED").exists(), template
    if "V" in prints and not any(f in template for f in ("$(", "[ %u = V ]")):
        # The value arrived, as text (unquoted $(...) output is split).
        assert hostile.encode() in result.stdout


# Quoting proven on real shells


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("value", HOSTILE)
def test_hostileUseridIsOneInertWord(shell: str, value: str, tmp_path: Path) -> None:
    """
    The shell receives a hostile USERID as exactly one argument with exactly
    the original bytes, and nothing in it runs.
    """
    template = 'set -- %u; printf %%s "$#" >count; printf %%s "$1" >out'
    result = shellRun(shell, expandTokens(template, {"u": value}), tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "count").read_bytes() == b"1"
    assert (tmp_path / "out").read_bytes() == os.fsencode(value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["count", "out"]


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("value", HOSTILE)
def test_hostileHostnameIsOneInertWord(shell: str, value: str, tmp_path: Path) -> None:
    """A hostile hostname (C{%Z}) or reverse name (C{%A}) is just as inert."""
    template = 'set -- @%A %Z; printf "%%s|" "$#" "$1" "$2" >out'
    values = {"A": value, "Z": value}
    result = shellRun(shell, expandTokens(template, values), tmp_path)
    assert result.returncode == 0, result.stderr
    raw = os.fsencode(value)
    assert (tmp_path / "out").read_bytes() == b"2|@" + raw + b"|" + raw + b"|"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize(
    ("template", "wrap"),
    [
        ("printf %%s '<%u>' >out", b"<%s>"),
        ('printf %%s "<%u>" >out', b"<%s>"),
        ("printf %%s \"'%u'\" >out", b"'%s'"),
        ("printf %%s '\"%u\"' >out", b'"%s"'),
        ("printf %%s 'SOCKS: %u@%u' >out", b"SOCKS: %s@%s"),
        ("printf %%s ok >out # %u and %u", b"ok"),
    ],
)
def test_hostileValueInsideQuotesOrComment(
    shell: str, value: str, template: str, wrap: bytes, tmp_path: Path
) -> None:
    """
    Inside single or double quotes, or in a comment, the token is quoted for
    that place: the text arrives intact and nothing runs.
    """
    result = shellRun(shell, expandTokens(template, {"u": value}), tmp_path)
    assert result.returncode == 0, result.stderr
    raw = os.fsencode(value)
    assert (tmp_path / "out").read_bytes() == wrap.replace(b"%s", raw)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


#: Pieces of random templates: quoting, operators and tokens, but no command
#: names, so that only the template's own printf can print anything, and no
#: lone C{$} (C{$$} prints a different pid on each run).
_PIECES = st.sampled_from(
    [
        *("'", '"', "\\", " ", "#", ";", "(", ")", "`", "{", "}", "<", ">", "|"),
        *("\n", "a", "=", "~", "%u", "%u", "%u", "%%", "$(", "${", "<<", "*"),
        *("$((", "((", "))", "$[", "]", "[[", "]]", "a[", "let ", "x=", "$x"),
    ]
)
_PLACEHOLDER = "<SAFE>"


@settings(max_examples=300, deadline=None, database=None)
@given(
    shell=st.sampled_from(SHELLS),
    pieces=st.lists(_PIECES, max_size=12),
    value=st.sampled_from(HOSTILE),
)
def randomTemplatesNeverRunTheValue(shell: str, pieces: list[str], value: str) -> None:
    """The property of L{test_randomTemplatesNeverRunTheValue}."""
    template = "printf '%%s|' " + "".join(pieces)
    try:
        hostile = expandTokens(template, {"u": value})
    except UnsafeTemplate:
        return
    reference = expandTokens(template, {"u": _PLACEHOLDER})
    with (
        tempfile.TemporaryDirectory() as first,
        tempfile.TemporaryDirectory() as second,
    ):
        expected = shellRun(shell, reference, Path(first), timeout=5)
        got = shellRun(shell, hostile, Path(second), timeout=5)
        assert not (Path(second) / "PWNED").exists(), hostile
    if expected.returncode == 0 and not expected.stderr:
        placeholder = _PLACEHOLDER.encode()
        assert got.stdout == expected.stdout.replace(placeholder, os.fsencode(value))


def test_randomTemplatesNeverRunTheValue() -> None:
    """
    For random mixes of quotes, operators and tokens, a hostile value either
    makes the template refused or runs nothing; and when the template works
    with a harmless value, the hostile one prints in its place, byte for byte.

    (Hypothesis runs inside a plain test: pytest-twisted's own wrapping of
    Hypothesis tests cannot run synchronous ones.)
    """
    randomTemplatesNeverRunTheValue()


# The runner, with real processes


@pytest_twisted.ensureDeferred
async def test_exitStatusIsDelivered() -> None:
    """The Deferred fires with the shell's exit status."""
    assert await runner().run("exit 7", makeContext()) == 7
    assert await runner().run("true", makeContext()) == 0


@pytest_twisted.ensureDeferred
async def test_outputIsLoggedAsOneEvent() -> None:
    """
    One event per command, in the C{twisted_socks.actions} namespace, with the
    status and both output streams escaped.
    """
    with capturedLogs() as events:
        status = await runner().run(
            "printf 'out\\033\\n'; echo err >&2; exit 3", makeContext()
        )
    assert status == 3
    [event] = actionEvents(events)
    assert event["exitCode"] == 3
    assert event["timedOut"] is False
    assert event["stdout"] == "out\\x1b\\x0a"
    assert event["stderr"] == "err\\x0a"


@pytest_twisted.ensureDeferred
async def test_hostileUseridIsLoggedEscaped() -> None:
    """The expanded command is logged on one line, escaped."""
    userid = "x\n\x1b[2J; rm -rf /"
    with capturedLogs() as events:
        await runner().run("true %u", makeContext(userid=userid))
    [event] = actionEvents(events)
    assert "\n" not in event["command"] and "\x1b" not in event["command"]
    assert "\\x0a\\x1b[2J; rm -rf /" in event["command"]


@pytest_twisted.ensureDeferred
async def test_outputIsCapped() -> None:
    """Beyond L{MAX_OUTPUT} bytes the output is read and dropped, and counted."""
    extra = 100_000
    with capturedLogs() as events:
        status = await runner().run(
            f"head -c {MAX_OUTPUT + extra} /dev/zero | tr '\\0' x", makeContext()
        )
    assert status == 0
    [event] = actionEvents(events)
    assert event["stdout"] == "x" * MAX_OUTPUT + f"...[{extra} more bytes]"


@pytest_twisted.ensureDeferred
async def test_stdinIsAtEndOfFile() -> None:
    """A command that reads standard input sees end-of-file at once."""
    with capturedLogs() as events:
        status = await runner(timeout=5).run("cat; echo done", makeContext())
    assert status == 0
    [event] = actionEvents(events)
    assert event["stdout"] == "done\\x0a"
    assert event["elapsed"] < 4


@pytest_twisted.ensureDeferred
async def test_environmentIsMinimal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The action sees C{PATH} and nothing of the server's environment."""
    monkeypatch.setenv("SOCKS_SECRET", "hunter2")
    with capturedLogs() as events:
        status = await runner().run("env", makeContext())
    assert status == 0
    [event] = actionEvents(events)
    lines = event["stdout"].split("\\x0a")
    assert f"PATH={ACTION_PATH}" in lines
    assert not any(line.startswith(("SOCKS_SECRET", "HOME=")) for line in lines)


@pytest_twisted.ensureDeferred
async def test_actionLeadsItsOwnSession() -> None:
    """
    With C{setsid} the shell leads a new session (so a timeout can kill its
    process group, and it has no controlling terminal).
    """
    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc")
    if not runner()._setsid:
        pytest.skip("no setsid")
    with capturedLogs() as events:
        status = await runner().run(
            "cut -d' ' -f6 /proc/$$/stat; echo $$", makeContext()
        )
    assert status == 0
    [event] = actionEvents(events)
    session, pid, _ = event["stdout"].split("\\x0a")
    assert session == pid != str(os.getsid(0))


@pytest_twisted.ensureDeferred
async def test_valuesReachTheCommand() -> None:
    """Each token's value, from the context, reaches the command intact."""
    context = makeContext(
        clientAddress="::1",
        command="bind",
        destinationPort=8080,
        destinationAddress="192.0.2.7",
        userid="o'brien; x",
        identUser="obrien",
        serverPid=31337,
    )
    template = (
        'test "%a|%c|%p|%s|%U|%u|%z" = '
        '"::1|bind|31337|8080|obrien|o\'brien; x|192.0.2.7"'
    )
    assert await runner().run(template, context) == 0
    # No ident answer: %U is empty.
    assert await runner().run('test -z "%U"', makeContext()) == 0


@pytest_twisted.ensureDeferred
async def test_reverseLookupOnlyWhenNeeded() -> None:
    """
    The reverse lookup is not called for a template without C{%A} or
    C{%Z}; it is called for each that the template has; C{%Z} of a SOCKS4A
    request is its hostname, with no lookup.
    """
    lookup = FakeLookup({"127.0.0.1": "client.example", "127.0.0.2": "dest.example"})
    actions = runner(reverseLookup=lookup)

    assert (
        await actions.run("test %a%z%u = 127.0.0.1127.0.0.2alice", makeContext()) == 0
    )
    assert lookup.calls == []

    assert await actions.run("test %A = client.example", makeContext()) == 0
    assert lookup.calls == ["127.0.0.1"]

    assert await actions.run("test %Z = dest.example", makeContext()) == 0
    assert lookup.calls == ["127.0.0.1", "127.0.0.2"]

    lookup.calls.clear()
    request4A = makeContext(destinationName="named.example", destinationAddress="")
    assert await actions.run("test %Z = named.example", request4A) == 0
    assert lookup.calls == []


@pytest_twisted.ensureDeferred
async def test_failedLookupFallsBackToAddress() -> None:
    """
    No name, a failed lookup, or a lookup that raises: C{%A} and C{%Z} are
    the addresses; an unknown address stays empty without a lookup.
    """

    def raising(address: str) -> Deferred[str | None]:
        raise RuntimeError("resolver on fire")

    def failing(address: str) -> Deferred[str | None]:
        return fail(OSError("SERVFAIL"))

    template = "test %A/%Z = 127.0.0.1/127.0.0.2"
    for lookup in (FakeLookup(), raising, failing):
        assert await runner(reverseLookup=lookup).run(template, makeContext()) == 0
    lookup = FakeLookup()
    noAddress = makeContext(clientAddress="", destinationAddress="")
    assert await runner(reverseLookup=lookup).run('test -z "%A%Z"', noAddress) == 0
    assert lookup.calls == []


@pytest_twisted.ensureDeferred
async def test_serviceName() -> None:
    """C{%S} is the services database's name for the port, else the number."""
    try:
        http = socket.getservbyport(80, "tcp")
    except OSError:
        pytest.skip("no services database")
    assert await runner().run(f"test %S = {http}", makeContext()) == 0
    unnamed = next(p for p in range(65535, 1, -1) if _noService(p))
    context = makeContext(destinationPort=unnamed)
    assert await runner().run(f"test %S = {unnamed}", context) == 0


def _noService(port: int) -> bool:
    try:
        socket.getservbyport(port, "tcp")
    except OSError:
        return True
    return False


def echoOnce(port: int) -> bytes:
    """Send a line to the loopback echo server and read it back."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"ping\n")
        return sock.recv(100)


@pytest_twisted.ensureDeferred
async def test_hangingCommandIsKilledAndReactorKeepsServing() -> None:
    """
    C{sleep 30} is killed at a 0.5 s timeout: the Deferred fires with None
    then, long before the sleep would end; meanwhile a looping call keeps ticking and a
    loopback echo exchange completes.
    """
    ticks: list[float] = []
    ticker = LoopingCall(lambda: ticks.append(time.monotonic()))
    ticker.clock = reactor  # type: ignore[assignment]
    echo = Factory.forProtocol(Echo)
    port = reactor.listenTCP(0, echo, interface="127.0.0.1")  # type: ignore[attr-defined]
    try:
        ticker.start(0.05)
        started = time.monotonic()
        with capturedLogs() as events:
            result = runner(timeout=0.5).run("sleep 30", makeContext())
            echoed = await threads.deferToThread(echoOnce, port.getHost().port)
            assert not result.called, "the hang should still be going"
            status = await result
        elapsed = time.monotonic() - started
    finally:
        ticker.stop()
        await port.stopListening()
    assert status is None
    assert echoed == b"ping\n"
    # Upper bounds prove "killed at the timeout, not after sleep's 30 s";
    # they are loose because a shared CI machine can stall for seconds.
    assert 0.4 <= elapsed < 10
    assert len([t for t in ticks if t - started < 0.5]) >= 5
    [event] = actionEvents(events)
    assert event["timedOut"] is True and event["exitCode"] is None


def _gone(pid: int) -> bool:
    """Whether C{pid} has exited (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


@pytest.mark.parametrize("wait", ["; wait", ""], ids=["shellWaits", "shellExits"])
@pytest_twisted.ensureDeferred
async def test_backgroundChildrenAreKilledToo(wait: str, tmp_path: Path) -> None:
    """
    A job the command put in the background dies at the timeout too, whether
    the shell waits for it or exits and leaves it holding the output pipe.
    """
    pidFile = tmp_path / "pid"
    if not ShellActionRunner(reactor, reverseLookup=FakeLookup())._setsid:
        pytest.skip("no setsid: only the shell is killed")
    template = f"sleep 30 & echo $! >{pct(pidFile)}{wait}"
    started = time.monotonic()
    status = await runner(timeout=0.5).run(template, makeContext())
    assert status is None
    assert time.monotonic() - started < 10
    pid = int(pidFile.read_text())
    await eventually(lambda: _gone(pid), timeout=3)


@pytest_twisted.ensureDeferred
async def test_shellReapedBeforeSpawnReturnsStillHasItsGroupKilled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A shell that backgrounds a job and exits before Twisted registers it is
    reaped inside C{spawnProcess} (its transport's pid is already None when
    it returns: seen on a loaded CI machine); the job still dies at the
    timeout, through the process group kept at connection.
    """
    if not ShellActionRunner(reactor, reverseLookup=FakeLookup())._setsid:
        pytest.skip("no setsid: only the shell is killed")
    pidFile = tmp_path / "pid"
    register = process.registerReapProcessHandler

    def lateRegister(pid: int, proc: Any) -> None:
        # Let the shell finish first: registering then reaps it at once.
        for _ in range(200):
            if pidFile.exists() and pidFile.read_text().strip():
                break
            time.sleep(0.01)
        time.sleep(0.1)
        register(pid, proc)

    monkeypatch.setattr(process, "registerReapProcessHandler", lateRegister)
    template = f"sleep 30 & echo $! >{pct(pidFile)}"
    started = time.monotonic()
    status = await runner(timeout=0.5).run(template, makeContext())
    assert status is None
    # Not the sleep's 30 s: its group was killed at the timeout.
    assert time.monotonic() - started < 10
    pid = int(pidFile.read_text())
    await eventually(lambda: _gone(pid), timeout=3)


@pytest_twisted.ensureDeferred
async def test_termIgnoringCommandIsKilled() -> None:
    """A command that ignores SIGTERM gets SIGKILL after the grace period."""
    started = time.monotonic()
    with capturedLogs() as events:
        status = await runner(timeout=0.3, killGrace=0.3).run(
            "trap '' TERM; sleep 30", makeContext()
        )
    assert status is None
    assert 0.5 <= time.monotonic() - started < 10
    [event] = actionEvents(events)
    assert event["timedOut"] is True


@pytest_twisted.ensureDeferred
async def test_withoutNewSessionTheShellIsStillKilled() -> None:
    """With C{newSession=False} the shell itself is still stopped in time."""
    started = time.monotonic()
    status = await runner(timeout=0.3, newSession=False).run(
        "exec sleep 30", makeContext()
    )
    assert status is None
    assert time.monotonic() - started < 10


@pytest_twisted.ensureDeferred
async def test_killedBySignalIsNone() -> None:
    """A command killed by a signal (not by the runner) gives None."""
    with capturedLogs() as events:
        status = await runner().run("kill -KILL $$", makeContext())
    assert status is None
    [event] = actionEvents(events)
    assert event["signal"] == signal.SIGKILL and event["timedOut"] is False


@pytest.mark.parametrize("newSession", [True, False])
@pytest_twisted.ensureDeferred
async def test_missingShellNeverErrbacks(newSession: bool) -> None:
    """A shell that does not exist is logged; the Deferred does not fail."""
    # S604: the "shell" here is the runner's, not subprocess's shell=True.
    actions = runner(shell="/nonexistent/sh", newSession=newSession)  # noqa: S604
    with capturedLogs() as events:
        status = await actions.run("true", makeContext())
    assert status != 0
    assert len(actionEvents(events)) == 1


@pytest_twisted.ensureDeferred
async def test_nulAndUnsafeTemplatesAreRefused() -> None:
    """
    A NUL (which no argument can hold) or an unsafe template is refused and
    logged, without running anything.
    """
    with capturedLogs() as events:
        assert await runner().run("echo %u", makeContext(userid="a\0b")) is None
        assert await runner().run("echo `%u`", makeContext()) is None
    outcomes = [e["outcome"] for e in actionEvents(events)]
    assert len(outcomes) == 2
    assert all(o.startswith("refused") for o in outcomes)


# The default reverse lookup


@pytest.fixture
def fakeGetnameinfo(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """
    Replace C{socket.getnameinfo} so that no test does real DNS; record the
    calls and the thread they ran in.
    """
    state: dict[str, Any] = {"calls": [], "threads": [], "answer": "host.example"}

    def getnameinfo(sockaddr: tuple[str, int], flags: int) -> tuple[str, str]:
        state["calls"].append((sockaddr, flags))
        state["threads"].append(threading.current_thread())
        answer = state["answer"]
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, float):
            time.sleep(answer)
            return ("late.example", "0")
        return (answer, "0")

    monkeypatch.setattr(_actions.socket, "getnameinfo", getnameinfo)
    yield state


@pytest_twisted.ensureDeferred
async def test_defaultReverseLookup(fakeGetnameinfo: dict[str, Any]) -> None:
    """
    The default lookup asks C{getnameinfo} for a required name, in a pool
    thread, and gives None on failure, after its timeout, or for no address.
    """
    assert await threadedReverseLookup(reactor, "127.0.0.1") == "host.example"
    [(sockaddr, flags)] = fakeGetnameinfo["calls"]
    assert sockaddr == ("127.0.0.1", 0) and flags & socket.NI_NAMEREQD
    assert fakeGetnameinfo["threads"][0] is not threading.current_thread()

    fakeGetnameinfo["answer"] = socket.gaierror(socket.EAI_NONAME, "no name")
    assert await threadedReverseLookup(reactor, "::1") is None

    fakeGetnameinfo["answer"] = 1.0
    started = time.monotonic()
    assert await threadedReverseLookup(reactor, "127.0.0.1", timeout=0.2) is None
    assert time.monotonic() - started < 0.8

    fakeGetnameinfo["calls"].clear()
    assert await threadedReverseLookup(reactor, "") is None
    assert fakeGetnameinfo["calls"] == []


@pytest_twisted.ensureDeferred
async def test_runnerUsesDefaultLookup(fakeGetnameinfo: dict[str, Any]) -> None:
    """Without an injected lookup, the runner uses the threaded one."""
    actions = ShellActionRunner(reactor)
    assert await actions.run("test %A = host.example", makeContext()) == 0
    assert len(fakeGetnameinfo["calls"]) == 1


def test_actionContextIsFrozenAndSlotted() -> None:
    """L{ActionContext} cannot be changed nor given new attributes."""
    context = makeContext()
    with pytest.raises(AttributeError):
        context.userid = "mallory"  # type: ignore[misc]
    assert not hasattr(context, "__dict__")


def test_allPrintableTemplatesAreHandled() -> None:
    """Every printable ASCII character after C{%} is either a token or kept."""
    for char in string.printable:
        template = "echo %" + char
        result = expandTokens(template, {"u": "v"})
        kept = "v" if char == "u" else "%" if char == "%" else template[5:]
        assert result == "echo " + kept


@pytest_twisted.ensureDeferred
async def test_commandsBeyondTheCapAreDroppedAndCountedInOneLine() -> None:
    """
    With two commands running and a cap of two, fifty more are dropped at
    once (their Deferreds fire with None, no process starts), counted, and
    logged in one line; once the running ones end, a command runs again.
    """
    capped = runner(maxRunning=2)
    with capturedLogs() as events:
        first = capped.run("sleep 0.5", makeContext())
        second = capped.run("sleep 0.5", makeContext())
        dropped = [capped.run("echo late", makeContext()) for _ in range(50)]
        assert capped.running == 2
        assert all(d.called for d in dropped)
        assert [await d for d in dropped] == [None] * 50
        assert (await first, await second) == (0, 0)
    assert (capped.running, capped.dropped) == (0, 50)
    drops = [e for e in actionEvents(events) if "dropped" in e["log_format"]]
    assert len(drops) == 1
    assert drops[0]["count"] == 1  # the first drop is logged at once...
    assert len(actionEvents(events)) == 3  # ...the rest in the next line
    assert await capped.run("exit 3", makeContext()) == 3
    timer = capped._dropLog
    assert timer is not None and timer.active()
    timer.cancel()
    with capturedLogs() as later:
        capped._logDrops()  # what the timer does, 10 s after the first line
    [line] = actionEvents(later)
    assert (line["count"], line["total"]) == (49, 50)
    capped._dropLog.cancel()  # type: ignore[union-attr]


def _socksReply(port: int, request: bytes, timeout: float) -> bytes:
    """Send one SOCKS request to the proxy on C{port}; its 8-byte reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        reply = b""
        while len(reply) < 8 and (chunk := sock.recv(8 - len(reply))):
            reply += chunk
        return reply


def _inOwnThread(f: Any, *args: Any) -> Deferred[Any]:
    """
    Run blocking client code in a new thread, not in the reactor's pool,
    whose threads are what the test watches.
    """
    result: Deferred[Any] = Deferred()

    def run() -> None:
        try:
            value = f(*args)
        except BaseException as e:
            reactor.callFromThread(result.errback, e)  # type: ignore[attr-defined]
        else:
            reactor.callFromThread(result.callback, value)  # type: ignore[attr-defined]

    threading.Thread(target=run, daemon=True).start()
    return result


@pytest_twisted.ensureDeferred
async def test_hungReverseLookupsLeaveSocks4aLookupsTheirThreads(
    monkeypatch: pytest.MonkeyPatch,
    ports: list[Any],
    echo: Any,
) -> None:
    """
    Twelve refused requests whose rule command uses C{%A}, with every
    reverse lookup hanging: the lookups run in their own pool of two
    threads, none in the reactor's pool, and another client's SOCKS4A
    request still resolves and is granted promptly.
    """
    release = threading.Event()
    lookupThreads: list[str] = []

    def hangingGetnameinfo(sockaddr: tuple[str, int], flags: int) -> tuple[str, str]:
        lookupThreads.append(threading.current_thread().name)
        # Polled, so that it hangs until released (or 30 s) whatever wakes it.
        deadline = time.monotonic() + 30
        while not release.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        return ("slow.example", "0")

    monkeypatch.setattr(_actions.socket, "getnameinfo", hangingGetnameinfo)
    actions = ShellActionRunner(reactor)
    rules = parseRules(
        "deny *=flood 0/0 : echo %A\nallow 0/0 0/0\n",
        "r.conf",
        onMatch=shellHook(actions),
    )
    proxy = listen(ports, SOCKSv4ServerFactory(reactor, policy=rules))
    flood = encodeRequest(
        Command.CONNECT, echo.port, IPv4Address("127.0.0.1"), userid=b"flood"
    )
    fourA = encodeRequest(Command.CONNECT, echo.port, hostname="localhost")
    reactorPool = reactor.getThreadPool()  # type: ignore[attr-defined]
    try:
        for _ in range(12):
            reply = await _inOwnThread(_socksReply, proxy, flood, 10)
            assert reply[:2] == b"\x00\x5b"
        await eventually(lambda: len(lookupThreads) >= 2)
        started = time.monotonic()
        reply = await _inOwnThread(_socksReply, proxy, fourA, 10)
        latency = time.monotonic() - started
        print(f"SOCKS4A request with 12 hung reverse lookups: {latency:.3f} s")
        assert reply[:2] == b"\x00\x5a"
        assert latency < 5
        assert len(lookupThreads) == 2  # the pool's two threads; ten queued
        assert not any("twisted.internet.reactor" in n for n in lookupThreads)
        assert actions.running == 12
    finally:
        release.set()
    await eventually(lambda: actions.running == 0, timeout=20)
    assert reactorPool.started
    actions._reverseLookup.stop()  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_commandInheritsNoOtherDescriptor() -> None:
    """
    A command holds nothing of the server but its standard input, output
    and error: not the listening or client sockets open in the server.
    """
    held = [socket.socket() for _ in range(3)]
    try:
        with capturedLogs() as events:
            assert await runner().run("ls /proc/$$/fd", makeContext()) == 0
    finally:
        for sock in held:
            sock.close()
    [event] = actionEvents(events)
    assert event["stdout"] == "0\\x0a1\\x0a2\\x0a"
