"""
The servers of the SOCKS5 section (issue 17): each peer twice, without
authentication and with RFC 1929 username/password.

  - C{ours}: the lean launcher as in C{_targets} (SOCKS4 and SOCKS5 on the
    same port, the default C{--protocols}); with auth, a second server
    given C{--users FILE}, the file made by C{python -m twisted_socks
    passwd} (bcrypt, its default cost) at launch.  With C{--users} SOCKS5
    clients must log in; the server caches verified credentials, so a
    repeated login is not a bcrypt check each time.
  - C{dante}: C{danted} with CONNECT and UDP ASSOCIATE allowed
    (C{command: connect udpassociate} and C{udpreply}); with auth,
    C{socksmethod: username}, which checks the system's password database
    (getpwnam/getspnam and crypt(3) on every login: Dante has no cache).
    That needs a system account: the harness creates a throwaway one
    (L{SystemUser}) only when it already runs as root, and deletes it after
    the run; otherwise Dante's authenticated server is not measured, and the
    results say why.
  - C{microsocks}: C{microsocks -i 127.0.0.1 -p PORT} (one thread per
    client; CONNECT only: BIND and UDP ASSOCIATE get 07); with auth
    C{-u USER -P PASSWORD}.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import _targets
from _loadgen5 import Credentials
from _targets import LaunchOptions, ServerProcess

__all__ = [
    "BENCH_USER",
    "MICROSOCKS",
    "Peer5",
    "SystemUser",
    "socks5_peers",
]

MICROSOCKS = Path("/usr/bin/microsocks")
#: The throwaway login every authenticated server is given.  The password is
#: the bench's, not anyone's secret, but it is still never printed.
BENCH_USER = Credentials("socksbench", "bench-5-pass")

Launch5 = Callable[[LaunchOptions], ServerProcess]


@dataclass(frozen=True)
class Peer5:
    """
    One column of the SOCKS5 table.

    @ivar name: the column heading.
    @ivar description: one line for the results.
    @ivar launch: starts it without authentication.
    @ivar launchAuth: starts it requiring L{BENCH_USER}; L{None} with
        C{noAuthReason} when it cannot be measured so.
    @ivar throughput: whether its single-stream throughput is measured.
    """

    name: str
    description: str
    launch: Launch5
    launchAuth: Launch5 | None
    noAuthReason: str = ""
    throughput: bool = True


def _launchOursAuth(options: LaunchOptions) -> ServerProcess:
    """
    Ours with C{--users}: the file written next to the log by the project's
    own C{passwd} command (the password on standard input, as for scripts).
    """
    users = options.log_path.resolve().with_suffix(".users")
    users.parent.mkdir(parents=True, exist_ok=True)
    users.unlink(missing_ok=True)
    done = subprocess.run(
        [
            sys.executable,
            *("-m", "twisted_socks", "passwd"),
            str(users),
            BENCH_USER.username,
        ],
        input=(BENCH_USER.password + "\n").encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"python -m twisted_socks passwd failed ({done.returncode}): "
            + done.stderr.decode(errors="replace").strip()
        )
    return _targets._lean_launcher("ours-auth", [f"--users={users}"])(options)


#: Dante for SOCKS5: as C{_targets}' configuration, plus UDP ASSOCIATE (and
#: the replies' direction, C{udpreply}), and the method chosen per server.
_DANTED_CONF5 = """\
logoutput: {log}
internal: 127.0.0.1 port = {port}
external: {external}
socksmethod: {method}
clientmethod: none
{users}
timeout.io: 0
client pass {{
    from: 127.0.0.0/8 to: 127.0.0.0/8
    log: error
}}
socks pass {{
    from: 127.0.0.0/8 to: 127.0.0.0/8
    command: connect udpassociate
    log: error disconnect
}}
socks pass {{
    from: 127.0.0.0/8 to: 127.0.0.0/8
    command: udpreply
    log: error
}}
"""


def _danteLauncher(method: str) -> Launch5:
    """C{danted -N 1} with C{socksmethod: METHOD} (C{none} or C{username})."""
    name = "dante" if method == "none" else "dante-auth"

    def launch(options: LaunchOptions) -> ServerProcess:
        if not _targets.DANTED.exists():
            raise RuntimeError(
                f"{_targets.DANTED} is missing: apt-get install dante-server"
            )
        base = options.log_path.resolve().with_suffix("")
        conf = base.with_suffix(".conf")
        port = _targets.free_port()
        # Reading the shadow file for `username` needs root as well.
        users = (
            "user.privileged: root\nuser.unprivileged: nobody"
            if os.geteuid() == 0
            else ""
        )
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(
            _DANTED_CONF5.format(
                log=base.with_suffix(".danted.log"),
                port=port,
                external=_targets._dante_external(),
                method=method,
                users=users,
            )
        )
        argv = [str(_targets.DANTED), "-f", str(conf), "-N", "1"]
        argv += ["-p", str(base.with_suffix(".pid"))]
        popen = _targets._spawn(argv, options.log_path)
        port = _targets._wait_for_port(
            name, popen, options.log_path, _targets._wait_for_connect(port)
        )
        return ServerProcess(name, popen, port, options.log_path)

    return launch


def _microsocksLauncher(auth: bool) -> Launch5:
    """C{microsocks} on a free port of 127.0.0.1, with C{-u}/C{-P} when C{auth}."""
    name = "microsocks-auth" if auth else "microsocks"

    def launch(options: LaunchOptions) -> ServerProcess:
        if not MICROSOCKS.exists():
            raise RuntimeError(f"{MICROSOCKS} is missing: apt-get install microsocks")
        port = _targets.free_port()
        argv = [str(MICROSOCKS), "-i", "127.0.0.1", "-p", str(port)]
        if auth:
            argv += ["-u", BENCH_USER.username, "-P", BENCH_USER.password]
        popen = _targets._spawn(argv, options.log_path)
        port = _targets._wait_for_port(
            name, popen, options.log_path, _targets._wait_for_connect(port)
        )
        return ServerProcess(name, popen, port, options.log_path)

    return launch


class SystemUser:
    """
    The system account Dante's C{username} method checks, created for the
    run only: as root, when it does not exist yet (then deleted by
    L{remove}); otherwise L{reason} says why there is none.
    """

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials
        self.created = False
        self.reason = ""

    def create(self) -> bool:
        """Make the account (a password hashed by chpasswd); whether it exists."""
        name = self.credentials.username
        if os.geteuid() != 0:
            self.reason = (
                "Dante's username method checks system accounts, and the bench "
                "creates its throwaway one only when run as root"
            )
            return False
        try:
            pwd.getpwnam(name)
        except KeyError:
            pass
        else:
            self.reason = (
                f"a system account {name!r} already exists and is not the "
                "bench's to change"
            )
            return False
        missing = [c for c in ("useradd", "chpasswd", "userdel") if not shutil.which(c)]
        if missing:
            self.reason = f"no {', '.join(missing)} to make a throwaway account"
            return False
        try:
            subprocess.run(
                ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                capture_output=True,
                timeout=30,
                check=True,
            )
            self.created = True
            # SHA-512 crypt (5,000 rounds), named so the figure is
            # reproducible whatever the machine's default (yescrypt on
            # Debian 12) is.
            subprocess.run(
                ["chpasswd", "--crypt-method", "SHA512"],
                input=f"{name}:{self.credentials.password}\n".encode(),
                capture_output=True,
                timeout=30,
                check=True,
            )
        except (OSError, subprocess.SubprocessError) as e:
            self.reason = f"could not make a system account: {type(e).__name__}"
            self.remove()
            return False
        return True

    def remove(self) -> None:
        """Delete the account if this object made it; never raises."""
        if not self.created:
            return
        try:
            subprocess.run(
                ["userdel", self.credentials.username],
                capture_output=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            pass
        self.created = False


def socks5_peers(systemUser: SystemUser | None) -> list[Peer5]:
    """
    The SOCKS5 section's columns, ours first; Dante's authenticated server
    only with a C{systemUser} that was created.
    """
    danteAuth = systemUser is not None and systemUser.created
    return [
        Peer5(
            name="ours",
            description=(
                "this project (lean launcher, SOCKS4 and SOCKS5 on one port); "
                "with auth a second server with `--users` (bcrypt, cost 12, "
                "made by `python -m twisted_socks passwd`; verified "
                "credentials cached)"
            ),
            launch=_targets._lean_launcher("ours", []),
            launchAuth=_launchOursAuth,
        ),
        Peer5(
            name="dante",
            description=(
                "Dante 1.4.2, `socksmethod: none`, CONNECT and UDP ASSOCIATE; "
                "with auth `socksmethod: username` (a throwaway system "
                "account, SHA-512 crypt, checked on every login)"
            ),
            launch=_danteLauncher("none"),
            launchAuth=_danteLauncher("username") if danteAuth else None,
            noAuthReason=("" if danteAuth or systemUser is None else systemUser.reason),
        ),
        Peer5(
            name="microsocks",
            description=(
                "microsocks 1.0.3 (C, a thread per client; CONNECT only); "
                "with auth `-u USER -P PASSWORD`"
            ),
            launch=_microsocksLauncher(False),
            launchAuth=_microsocksLauncher(True),
            throughput=False,
        ),
    ]
