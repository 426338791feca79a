"""
C{python -m twisted_socks check}'s flags for issue 17: C{--socks5},
C{--authenticated}, C{--with-users} and C{--udp}.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_rules import runCheck

GATEWAY = """\
deny 0/0 10.0.0.0/8
permit auth=password 0/0 0/0
permit auth=none 192.168.0.0/16 0/0 eq 21
permit auth=none 192.168.0.0/16 0/0 eq 80
permit cmd=udp *=ann 192.168.0.0/16 0/0 eq 53
permit 127.0.0.0/8 0/0
"""


@pytest.fixture
def gateway(tmp_path: Path) -> str:
    """The documented gateway file, with a UDP line and a catch-all."""
    path = tmp_path / "gateway.conf"
    path.write_text(GATEWAY)
    return str(path)


def lines(out: str) -> list[str]:
    """The checker's output, line by line."""
    return out.splitlines()


def test_authenticatedRequestIsALoginUnderUsers(
    capsys: pytest.CaptureFixture[str], gateway: str
) -> None:
    """C{--authenticated --user}: a SOCKS5 login, matched by C{auth=password}."""
    status, out, err = runCheck(
        capsys,
        gateway,
        "--client",
        "203.0.113.9",
        "--user",
        "ann",
        "--authenticated",
        "--connect",
        "192.0.2.7:443",
    )
    assert (status, err) == (0, "")
    assert lines(out) == [
        f"{gateway}:2: permit auth=password 0/0 0/0",
        "-> allow",
    ]


@pytest.mark.parametrize(
    ("port", "status", "verdict"),
    [
        (80, 0, ["{file}:4: permit auth=none 192.168.0.0/16 0/0 eq 80", "-> allow"]),
        (443, 1, ["no rule matched: deny"]),
    ],
)
def test_socks4UnderUsersNeedsAuthNone(
    capsys: pytest.CaptureFixture[str],
    gateway: str,
    port: int,
    status: int,
    verdict: list[str],
) -> None:
    """
    C{--with-users} without C{--socks5}: a SOCKS4 request, admitted only by
    C{auth=none} (the catch-all on line 6 allows logins only).
    """
    result = runCheck(
        capsys,
        gateway,
        "--client",
        "192.168.1.5",
        "--with-users",
        "--connect",
        f"192.0.2.7:{port}",
    )
    assert result[:2] == (
        status,
        "\n".join(v.format(file=gateway) for v in verdict) + "\n",
    )


def test_socks5WithoutAuthenticationMatchesAuthNone(
    capsys: pytest.CaptureFixture[str], gateway: str
) -> None:
    """C{--socks5} without users: no login, so C{auth=password} is passed over."""
    status, out, _ = runCheck(
        capsys,
        gateway,
        "--client",
        "192.168.1.5",
        "--socks5",
        "--connect",
        "192.0.2.7:21",
    )
    assert status == 0
    assert lines(out)[0] == f"{gateway}:3: permit auth=none 192.168.0.0/16 0/0 eq 21"
    status, out, _ = runCheck(
        capsys,
        gateway,
        "--client",
        "192.168.1.5",
        "--socks5",
        "--connect",
        "10.1.1.1:21",
    )
    assert (status, lines(out)[0]) == (1, f"{gateway}:1: deny 0/0 10.0.0.0/8")


def test_udpAssociationAndDatagram(
    capsys: pytest.CaptureFixture[str], gateway: str
) -> None:
    """
    C{--udp} alone asks about the association (judged on the client);
    C{--udp DEST:PORT} about a datagram, which the catch-all never allows.
    """
    common = ("--client", "192.168.1.5", "--user", "ann", "--authenticated")
    status, out, _ = runCheck(capsys, gateway, *common, "--udp")
    assert (status, lines(out)) == (
        0,
        [
            f"association: {gateway}:5: permit cmd=udp *=ann 192.168.0.0/16 0/0 eq 53",
            "-> allow",
        ],
    )
    status, out, _ = runCheck(capsys, gateway, *common, "--udp", "192.0.2.53:53")
    assert status == 0
    status, out, _ = runCheck(capsys, gateway, *common, "--udp", "192.0.2.53:123")
    assert (status, lines(out)) == (1, ["no rule matched: deny"])
    status, out, _ = runCheck(capsys, gateway, "--client", "127.0.0.1", "--udp")
    assert (status, lines(out)) == (1, ["association: no rule matched: deny"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--authenticated", "--connect", "192.0.2.1:80"),
            "a logged-in SOCKS5 client needs --user NAME",
        ),
        (
            ("--socks5", "--with-users", "--connect", "192.0.2.1:80"),
            "a logged-in SOCKS5 client needs --user NAME",
        ),
        (
            ("--socks5", "--user", "ann", "--connect", "192.0.2.1:80"),
            "SOCKS5 without authentication has no user: drop --user, or add "
            "--authenticated",
        ),
    ],
)
def test_contradictoryRequestsAreRefused(
    capsys: pytest.CaptureFixture[str],
    gateway: str,
    args: tuple[str, ...],
    message: str,
) -> None:
    """A request no server could receive is an error (status 2), not a verdict."""
    assert runCheck(capsys, gateway, *args) == (2, "", message + "\n")


def test_udpWithConnectIsAUsageError(
    capsys: pytest.CaptureFixture[str], gateway: str
) -> None:
    """C{--udp} is one of the commands: not with C{--connect}."""
    with pytest.raises(SystemExit) as exited:
        runCheck(capsys, gateway, "--udp", "--connect", "192.0.2.1:80")
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
