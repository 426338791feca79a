"""
The options of C{twistd socks} as a frozen L{ServerConfig}, and the one
composition root that builds the server from it (L{twisted_socks.app._compose}).
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from twisted.application.service import IServiceCollection
from twisted.internet.testing import MemoryReactorClock
from twisted.python.usage import UsageError

from tests.test_layout import PACKAGE
from twisted_socks.app import _compose
from twisted_socks.app._configtypes import ServerConfig
from twisted_socks.app._metrics import ServerMetrics
from twisted_socks.app._tap import Options, makeService
from twisted_socks.policy._policy import IdentMode
from twisted_socks.policy._rules import RuleSet
from twisted_socks.server._factory import SOCKSv4ServerFactory
from twisted_socks.server._metricsguard import NullMetrics

RULES = "allow 127.0.0.1/32\n"
TOKEN = "0123456789abcdef0123456789abcdef\n"


def configOf(argv: list[str]) -> ServerConfig:
    """The config C{twistd socks ARGV} is built from."""
    options = Options()
    options.parseOptions(argv)
    return options.config


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """A valid rules file and status token file, by placeholder."""
    rules = tmp_path / "rules.conf"
    rules.write_text(RULES)
    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    users = tmp_path / "users"
    users.write_bytes(b"ann:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(4)) + b"\n")
    users.chmod(0o600)
    routes = tmp_path / "routes"
    routes.write_text("sockd @=socks5h://127.0.0.1:1 .corp.test\n")
    return {
        "{rules}": str(rules),
        "{token}": str(token),
        "{users}": str(users),
        "{routes}": str(routes),
    }


def filled(argv: list[str], files: dict[str, str]) -> list[str]:
    """C{argv} with its file placeholders replaced."""
    return [files.get(arg, arg) for arg in argv]


def test_configIsFrozen() -> None:
    """The config and each of its parts refuse to be changed."""
    config = configOf(["--port", "0"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.workers = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.ident.port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.limits.maxConnections = 1  # type: ignore[misc]


def test_equalArgumentsMakeEqualConfigs(files: dict[str, str]) -> None:
    """
    The same arguments give equal configs (the listeners' endpoints, which
    have no equality, aside); different ones do not.
    """
    argv = filled(
        ["--port", "0", "--rules", "{rules}", "--ident", "strict", "--status", "0"],
        files,
    )
    assert configOf(argv) == configOf(list(argv))
    assert configOf(argv) != configOf([*argv, "--idle-timeout", "5"])


#: Each option (as given), and where the config holds it.
OPTION_FIELDS: list[tuple[str, list[str], Callable[[ServerConfig], Any], Any]] = [
    ("port", ["--port", "1081"], lambda c: c.listen.descriptions, ("tcp:1081:interface=127.0.0.1",)),
    ("interface", ["--interface", "::1"], lambda c: c.listen.descriptions, ("tcp:1080:interface=\\:\\:1",)),
    ("listen", ["--listen", "tcp:0", "--listen", "tcp6:0"], lambda c: c.listen.descriptions, ("tcp:0", "tcp6:0")),
    ("proxy-protocol-from", ["--proxy-protocol-from", "10.0.0.0/8"], lambda c: c.listen.trustedProxies, (IPv4Network("10.0.0.0/8"),)),
    ("negotiate-timeout", ["--negotiate-timeout", "3"], lambda c: c.limits.negotiateTimeout, 3.0),
    ("connect-timeout", ["--connect-timeout", "4"], lambda c: c.limits.connectTimeout, 4.0),
    ("idle-timeout", ["--idle-timeout", "5"], lambda c: c.limits.idleTimeout, 5.0),
    ("bind-timeout", ["--bind-timeout", "6"], lambda c: c.limits.bindTimeout, 6.0),
    ("max-binds-per-client", ["--max-binds-per-client", "7"], lambda c: c.limits.maxBindsPerClient, 7),
    ("max-connections", ["--max-connections", "8"], lambda c: c.limits.maxConnections, 8),
    ("max-connections-per-client", ["--max-connections-per-client", "9"], lambda c: c.limits.maxConnectionsPerClient, 9),
    ("ipv6-client-prefix", ["--ipv6-client-prefix", "56"], lambda c: c.limits.ipv6ClientPrefix, 56),
    ("rate-per-client", ["--rate-per-client", "20/2"], lambda c: (c.limits.ratePerClient, c.limits.rateWindow), (20, 2.0)),
    ("rules", ["--rules", "{rules}"], lambda c: Path(c.rules.path).read_text(), RULES),
    ("routes", ["--routes", "{routes}"], lambda c: c.routes is not None, True),
    ("max-rule-commands", ["--max-rule-commands", "3"], lambda c: c.rules.maxCommands, 3),
    ("ident", ["--ident", "strict"], lambda c: c.ident.mode, IdentMode.STRICT),
    ("ident-timeout", ["--ident-timeout", "2"], lambda c: c.ident.timeout, 2.0),
    ("ident-port", ["--ident-port", "1113"], lambda c: c.ident.port, 1113),
    ("bind-address", ["--bind-address", "127.0.0.2"], lambda c: c.outbound.bindAddress, "127.0.0.2"),
    ("udp-address", ["--udp-address", "2001:db8::0:1"], lambda c: c.outbound.udpAddress, "2001:db8::1"),
    ("udp-idle-timeout", ["--udp-idle-timeout", "0"], lambda c: c.limits.udpIdleTimeout, 0.0),
    ("max-udp-per-client", ["--max-udp-per-client", "2"], lambda c: c.limits.maxUDPPerClient, 2),
    ("outbound-address", ["--outbound-address", "127.0.0.3"], lambda c: c.outbound.address, "127.0.0.3"),
    ("relay", ["--relay", "copy"], lambda c: (c.outbound.relay, c.outbound.splice), ("copy", False)),
    ("name-cache-ttl", ["--name-cache-ttl", "0"], lambda c: c.outbound.nameCacheTTL, 0.0),
    ("status", ["--status", "9180"], lambda c: c.status.description, "tcp:9180:interface=127.0.0.1"),
    ("status-insecure", ["--status", "tcp:9180", "--status-insecure"], lambda c: c.status.insecure, True),
    ("status-auth", ["--status", "tcp:9180", "--status-auth", "{token}"], lambda c: c.status.token.allows("Bearer " + TOKEN.strip()), True),
    ("shutdown-grace", ["--shutdown-grace", "1.5"], lambda c: c.shutdownGrace, 1.5),
    ("log-format", ["--log-format", "json"], lambda c: c.logFormat, "json"),
    ("workers", ["--workers", "2"], lambda c: (c.workers, c.supervises), (2, True)),
    ("protocols", ["--protocols", "socks5"], lambda c: c.auth.protocols, frozenset({5})),
    ("users", ["--users", "{users}"], lambda c: c.auth.users is not None, True),
    ("auth-failures", ["--users", "{users}", "--auth-failures", "3/30"], lambda c: (c.auth.failures.count, c.auth.failures.seconds), (3, 30.0)),
    ("users-strict-reload", ["--users", "{users}", "--users-strict-reload"], lambda c: c.auth.strictReload, True),
]  # fmt: skip


@pytest.mark.parametrize(
    ("option", "argv", "field", "expected"),
    OPTION_FIELDS,
    ids=[row[0] for row in OPTION_FIELDS],
)
def test_eachOptionMapsToItsField(
    option: str,
    argv: list[str],
    field: Callable[[ServerConfig], Any],
    expected: Any,
    files: dict[str, str],
) -> None:
    """Each option given lands in its field of the config, converted."""
    assert field(configOf(filled(argv, files))) == expected
    # And without it the field holds something else (the default).
    if option not in ("listen", "rules", "status-insecure", "status-auth"):
        assert field(configOf([])) != expected


def test_optionTableCoversEveryOption() -> None:
    """Every value-carrying option of the parser is in the table above."""
    options = Options()
    parsed = {name.rstrip("=") for name in options.longOpt}
    assert parsed - {"help", "version"} == {row[0] for row in OPTION_FIELDS}


def test_optionErrorsAreStillUsageErrors() -> None:
    """
    Errors found while checking the options together are
    C{usage.UsageError}s with the message they always had.
    """
    with pytest.raises(UsageError, match=r"^--relay must be auto, splice or copy"):
        configOf(["--relay", "zerocopy"])
    with pytest.raises(UsageError, match=r"^--max-connections \(1\) must be at least"):
        configOf(["--workers", "2", "--max-connections", "1"])


def serverFactory(top: IServiceCollection) -> SOCKSv4ServerFactory:
    """The one server factory the services of C{top} listen with."""
    (factory,) = {
        service.factory
        for service in top  # type: ignore[attr-defined]
        if isinstance(getattr(service, "factory", None), SOCKSv4ServerFactory)
    }
    return factory


def test_compositionRootBuildsTheConfiguredFactory(files: dict[str, str]) -> None:
    """
    The composition root builds the server factory with the configured
    limits, ident mode, relay and BIND address, and the rules file's
    policy, without listening on anything.
    """
    config = configOf(
        filled(
            [
                "--port", "0",
                "--max-connections", "17",
                "--ident", "lenient",
                "--relay", "copy",
                "--bind-address", "127.0.0.2",
                "--rules", "{rules}",
            ],
            files,
        )
    )  # fmt: skip
    reactor = MemoryReactorClock()
    factory = serverFactory(_compose.buildServerService(config, reactor))
    assert factory.limits == config.limits
    assert factory.limits.maxConnections == 17
    assert factory.identMode is IdentMode.LENIENT
    assert factory.splice is False
    assert factory.bindAddress == "127.0.0.2"
    assert isinstance(factory.policy, RuleSet)
    assert isinstance(factory.metrics, NullMetrics)
    assert reactor.tcpServers == []


def test_compositionRootAddsMetricsForAStatusPage() -> None:
    """Counters are kept (and watch the factory) only for a status page."""
    config = configOf(["--port", "0", "--status", "0"])
    metrics = _compose.buildMetrics(config)
    assert isinstance(metrics, ServerMetrics)
    factory = _compose.buildFactory(config, MemoryReactorClock(), metrics)
    assert not isinstance(factory.metrics, NullMetrics)
    # It watches the factory: its live sessions are the factory's.
    factory.sessions = lambda: ["a session"]  # type: ignore[method-assign]
    assert metrics.liveSessions() == ["a session"]
    assert _compose.buildMetrics(configOf(["--port", "0"])) is None


def test_twistdBuildsThroughTheCompositionRoot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """C{twistd socks}'s C{makeService} hands its config to L{buildService}."""
    built: list[tuple[ServerConfig, Any]] = []

    def buildService(config: ServerConfig, reactor: Any, twistd: Any = None) -> Any:
        built.append((config, twistd))
        return "the service"

    monkeypatch.setattr(_compose, "buildService", buildService)
    options = Options()
    options.parseOptions(["--port", "0"])
    assert makeService(options) == "the service"
    assert built == [(options.config, None)]


def calls(module: str) -> dict[str, set[str]]:
    """Each function of C{module} and the names it calls."""
    tree = ast.parse((PACKAGE / module).read_text())
    found: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            found[node.name] = {
                call.func.id
                for call in ast.walk(node)
                if isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
            }
    return found


def test_everyProcessBuildsThroughOneRoot() -> None:
    """
    twistd (C{makeService}) and the launcher (C{main}, which every worker
    process of C{--workers} runs) both build with L{buildService}, and only
    the composition root constructs the server factory.
    """
    assert "buildService" in calls("app/_tap.py")["makeService"]
    assert "buildService" in calls("app/_serve.py")["main"]
    assert '"serve"' in (PACKAGE / "app/_workers.py").read_text()
    modules = [path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py")]
    constructing = sorted(
        name
        for name in modules
        if any("SOCKSv4ServerFactory" in names for names in calls(name).values())
    )
    assert constructing == ["app/_compose.py"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--protocols", "socks6"], r"^--protocols must be socks4, socks5 or both"),
        (["--protocols", ""], r"^--protocols must be socks4, socks5 or both"),
        (["--auth-failures", "3/30"], r"^--auth-failures needs --users$"),
        (
            ["--users", "{users}", "--auth-failures", "3"],
            r"^--auth-failures must be N/SECONDS",
        ),
        (["--users", "{missing}"], r"missing"),
    ],
)
def test_authOptionErrors(
    argv: list[str], message: str, files: dict[str, str], tmp_path: Path
) -> None:
    """
    C{--protocols}, C{--users} and C{--auth-failures} say what is wrong in
    the options' style; a password file that cannot be read stops start-up.
    """
    files = {**files, "{missing}": str(tmp_path / "missing")}
    with pytest.raises(UsageError, match=message):
        configOf(filled(argv, files))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--udp-address", "nat.example"], r"^--udp-address must be an IP address"),
        (["--udp-idle-timeout", "-1"], r"udp-idle-timeout"),
        (["--max-udp-per-client", "0"], r"max-udp-per-client"),
    ],
)
def test_udpOptionErrors(argv: list[str], message: str) -> None:
    """The UDP options' bad values stop start-up, naming the option."""
    with pytest.raises(UsageError, match=message):
        configOf(argv)


def test_udpAddressReachesTheFactory() -> None:
    """C{--udp-address} is what the composed factory's grants name."""
    config = configOf(["--udp-address", "203.0.113.9"])
    factory = _compose.buildFactory(config, MemoryReactorClock(), None)
    assert factory.udpAddress == "203.0.113.9"


def test_compositionRootBuildsTheAuthenticatingFactory(
    files: dict[str, str],
) -> None:
    """
    With C{--users} the factory checks passwords with the file's
    L{PasswordFileChecker}, under the configured failure limit and
    protocols.
    """
    from twisted_socks.policy._credentials import PasswordFileChecker

    config = configOf(
        filled(
            [
                "--port", "0",
                "--users", "{users}",
                "--auth-failures", "3/30",
                "--protocols", "socks5",
            ],
            files,
        )
    )  # fmt: skip
    factory = serverFactory(_compose.buildServerService(config, MemoryReactorClock()))
    assert isinstance(factory.credentialsChecker, PasswordFileChecker)
    assert factory.authFailures.limit.count == 3
    assert factory.protocols == frozenset({5})
    default = serverFactory(
        _compose.buildServerService(configOf(["--port", "0"]), MemoryReactorClock())
    )
    assert default.credentialsChecker is None
    assert default.protocols == frozenset({4, 5})


def test_hangupReloadsTheUsersWithTheRules(files: dict[str, str]) -> None:
    """
    SIGHUP reloads the users file: alone without C{--rules}, and after the
    rules with them.
    """
    from twisted_socks.app._services import ReloadEach, ReloadOnHangup

    def reloader(argv: list[str]) -> Any:
        top = _compose.buildServerService(
            configOf(filled(argv, files)), MemoryReactorClock()
        )
        (hangup,) = [s for s in top if isinstance(s, ReloadOnHangup)]  # type: ignore[attr-defined]
        return serverFactory(top), hangup._reloader

    factory, alone = reloader(["--port", "0", "--users", "{users}"])
    assert alone is factory.credentialsChecker
    Path(files["{users}"]).write_bytes(
        b"bob:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(4)) + b"\n"
    )
    alone.reload()
    assert set(factory.credentialsChecker.users.hashes) == {b"bob"}
    factory, both = reloader(
        ["--port", "0", "--users", "{users}", "--rules", "{rules}"]
    )
    assert isinstance(both, ReloadEach)
    assert both._reloadables[-1] is factory.credentialsChecker


def test_reloadEachCarriesOnPastAFailure() -> None:
    """One reloadable raising does not keep the next from reloading."""
    from twisted.logger import capturedLogs

    from twisted_socks.app._services import ReloadEach

    reloaded: list[str] = []

    class Broken:
        """Cannot reload."""

        def reload(self) -> None:
            """Fail."""
            raise RuntimeError("no")

    class Fine:
        """Reloads."""

        def reload(self) -> None:
            """Say so."""
            reloaded.append("fine")

    with capturedLogs() as events:
        ReloadEach(Broken(), Fine()).reload()
    assert reloaded == ["fine"]
    assert any(e.get("log_failure") is not None for e in events)
