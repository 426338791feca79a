"""
The lean launcher: C{twisted-socks [options]} and C{python -m twisted_socks
serve [options]} run the server in the foreground, with the options of
C{twistd socks}, in a process that carries only what the server needs.

Under twistd the server process also holds what twistd's plugin scan
imported: every plugin module in C{twisted/plugins}, Twisted's endpoints
and, through them, pyOpenSSL and cryptography (about 12 MiB mapped for a
server that never speaks TLS).  This launcher scans no plugins, installs the
epoll reactor on Linux, and, unless an option names a TLS endpoint, keeps
the TLS stack out of the process before anything can import it: this
module imports nothing from Twisted until it has decided.

It logs to standard output (text as C{twistd -n} writes it, or
C{--log-format json}); SIGTERM stops it gracefully with exit status 0,
SIGHUP reloads the rules; an invalid option is one line on standard error
and exit status 2.  It is also what the worker processes of C{--workers}
run (L{twisted_socks.app._workers}).
"""

from __future__ import annotations

import atexit
import getopt
import os
import signal
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from ._heap import releaseFreedMemory
from ._statusauth import statusDescription
from ._workerspec import SHAREABLE_TYPES, WorkerSpec, endpointTypes

__all__ = ["PROGRAM", "blockTLS", "console", "main", "needsTLS"]

#: How the launcher names itself in messages.
PROGRAM = "twisted-socks"

#: The options of L{twisted_socks.app._tap.Options} as C{getopt} takes them, for
#: the scan that runs before Twisted may be imported (a test keeps these in
#: step with the real ones).
_SHORT_OPTIONS = "p:i:r:"
_LONG_OPTIONS = (
    "auth-failures=",
    "bind-address=",
    "bind-timeout=",
    "connect-timeout=",
    "help",
    "ident-port=",
    "ident-timeout=",
    "ident=",
    "idle-timeout=",
    "interface=",
    "ipv6-client-prefix=",
    "listen=",
    "log-format=",
    "max-binds-per-client=",
    "max-connections-per-client=",
    "max-connections=",
    "max-rule-commands=",
    "max-udp-per-client=",
    "name-cache-ttl=",
    "negotiate-timeout=",
    "outbound-address=",
    "port=",
    "protocols=",
    "proxy-protocol-from=",
    "rate-per-client=",
    "relay=",
    "routes=",
    "rules=",
    "shutdown-grace=",
    "status-auth=",
    "status-insecure",
    "status=",
    "users-strict-reload",
    "udp-address=",
    "udp-idle-timeout=",
    "users=",
    "version",
    "workers=",
)


def needsTLS(descriptions: Iterable[str]) -> bool:
    """
    Whether any of these server endpoint descriptions might need the TLS
    stack: true unless each is a plain listening socket (C{tcp}, C{tcp6},
    C{unix}, C{systemd}), possibly inside C{haproxy:}.  Anything else
    (C{ssl:}, a plugin's type such as txtorcon's C{onion:}) might.
    """
    return any(endpointTypes(d)[-1] not in SHAREABLE_TYPES for d in descriptions)


def _scanOptions(argv: Sequence[str]) -> tuple[list[str], bool] | None:
    """
    The endpoint descriptions the arguments name (C{--listen}, C{--status})
    and whether there is a status page, read as the real parser will read
    them (C{getopt}, abbreviations included) but without Twisted; L{None}
    if the arguments do not parse.
    """
    try:
        found, _ = getopt.getopt(list(argv), _SHORT_OPTIONS, list(_LONG_OPTIONS))
    except getopt.GetoptError:
        return None
    descriptions = [value for name, value in found if name == "--listen"]
    status = [statusDescription(value) for name, value in found if name == "--status"]
    return descriptions + status[-1:], bool(status)


def blockTLS(stdlib: bool = True) -> bool:
    """
    Keep pyOpenSSL (and with it cryptography's Rust extension and libssl)
    out of this process, and, if C{stdlib}, Python's own C{ssl} module too,
    unless they are imported already.

    Twisted imports pyOpenSSL only optionally: C{twisted.internet.tcp}
    tries C{twisted.internet._newtls} and falls back to plain TCP on
    L{ImportError}, and C{twisted.internet.endpoints} likewise leaves out
    its TLS endpoints.  Python's C{ssl} comes in through the standard
    library modules Twisted imports (C{http.client}, C{urllib.request},
    C{asyncio}), each of which catches the L{ImportError} too; but
    C{prometheus_client} (the status page) imports it unconditionally, so
    it stays available when C{stdlib} is false.  A L{None} entry in
    L{sys.modules} makes every import of the module raise L{ImportError} at
    once; nothing in the server itself uses TLS.

    @return: whether pyOpenSSL is blocked now (not if it was imported).
    """
    if stdlib:
        sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
    return sys.modules.setdefault("OpenSSL", None) is None  # type: ignore[arg-type]


def _installReactor() -> Any:
    """
    Install Twisted's default reactor for this platform (epoll on Linux)
    unless one is installed already; return the one installed.
    """
    from twisted.internet import default
    from twisted.internet.error import ReactorAlreadyInstalledError

    try:
        default.install()
    except ReactorAlreadyInstalledError:
        pass
    from ._tap import installedReactor

    return installedReactor()


def _options(programName: str) -> Any:
    """The option parser, naming this command in its help and errors."""
    from ._tap import Options

    class LauncherOptions(Options):
        synopsis = f"Usage: {programName} [options]"

    LauncherOptions.programName = programName
    return LauncherOptions()


def _oneLine(error: Exception) -> str:
    """An option error as one line, without usage.Options' type-check prefix."""
    text = " ".join(str(error).split())
    prefix = "Parameter type enforcement failed: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def _observer(config: Any, top: Any, reactor: Any) -> Any:
    """Where this process logs: standard output, in the chosen format."""
    from ._textlog import TextLinesObserver

    if config.worker is not None:
        from ._processlog import workerLogObserver

        return workerLogObserver(
            config.worker, config.logFormat, _bufferedStdout(), reactor.callLater
        )
    if top.logObserver is not None:
        # JSON lines, or a supervisor's observer: both on standard output
        # when there is no twistd.
        return top.logObserver
    # Flushed within 0.2 s rather than per line.
    return TextLinesObserver(_bufferedStdout(), reactor.callLater)


def _bufferedStdout() -> Any:
    """
    Standard output, block-buffered whatever Python was told.

    The text observers flush within 0.2 s, but with C{PYTHONUNBUFFERED} set
    (or C{-u}, or a terminal) C{sys.stdout} writes every line at once: one
    C{write} per session, and under C{--workers} one wake-up of the
    supervisor per line it copies.  Flushed at exit as well.
    """
    stdout: Any = sys.stdout
    if not (
        getattr(stdout, "line_buffering", False)
        or getattr(stdout, "write_through", False)
    ):
        return stdout
    try:
        fd = stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return stdout  # not a real file (a test's StringIO)
    stdout.flush()
    out = open(  # lives as long as the process
        fd,
        "w",
        buffering=1 << 16,
        encoding=stdout.encoding,
        errors=stdout.errors,
        closefd=False,
    )
    atexit.register(out.flush)
    return out


def main(argv: Sequence[str] | None = None, programName: str = PROGRAM) -> int:
    """
    Run the server until SIGTERM or SIGINT.

    @param argv: the options (as for C{twistd socks}); the process's own
        arguments by default.
    @param programName: how messages name the command.
    @return: the exit status: 0 after an orderly stop, 2 for an invalid
        option (a failure to listen exits 1 from inside start-up).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    # Until the server's own handler is in (after start-up), SIGHUP's
    # default action would kill the process: a reload sent while it starts
    # (a worker is even started with SIGHUP blocked, so that one sent
    # before this point waits).  Remember it instead, and deliver it once
    # the handler is there.
    hangups: list[int] = []
    signal.signal(signal.SIGHUP, lambda signum, frame: hangups.append(signum))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    try:
        worker = WorkerSpec.fromEnvironment()
    except ValueError as e:
        sys.stderr.write(f"{programName}: {e}\n")
        return 2
    scanned = _scanOptions(args) if worker is None else None
    if worker is not None:
        # A worker's listeners are passed sockets and its status goes to
        # its supervisor: it never needs TLS (its snapshots do need
        # prometheus_client, which imports Python's ssl module).
        tlsBlocked = blockTLS(stdlib=not worker.wantsMetrics)
    elif scanned is not None and not needsTLS(scanned[0]):
        tlsBlocked = blockTLS(stdlib=not scanned[1])
    else:
        # A TLS endpoint, or arguments that do not parse (the parse below
        # reports it, and nothing is served either way).
        tlsBlocked = False
    reactor = _installReactor()
    from twisted.logger import Logger, globalLogBeginner
    from twisted.python import usage

    from ._compose import buildService

    options = _options(programName)
    options.worker = worker
    try:
        options.parseOptions(args)
    except usage.UsageError as e:
        hint = "" if options.argumentsRead else f" ({programName} --help lists them)"
        sys.stderr.write(f"{programName}: {_oneLine(e)}{hint}\n")
        return 2
    # The same composition root as twistd's (and every worker's).
    top = buildService(options.config, reactor)
    globalLogBeginner.beginLoggingTo(
        [_observer(options.config, top, reactor)], redirectStandardIO=False
    )
    from ._tap import projectVersion

    log = Logger(namespace="twisted_socks.serve")
    log.info(
        "{program} {version} (Python {python}) starting: pid {pid}, reactor "
        "{reactor}, TLS {tls}",
        program=PROGRAM,
        version=projectVersion(),
        python=sys.version.split()[0],
        pid=os.getpid(),
        reactor=type(reactor).__name__,
        tls="blocked (no option needs it)" if tlsBlocked else "available",
    )
    top.privilegedStartService()
    top.startService()
    if hangups:
        os.kill(os.getpid(), signal.SIGHUP)
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.callWhenRunning(releaseFreedMemory)
    reactor.run()
    # Stopped and about to exit: a SIGTERM now (systemd's KillMode=
    # control-group, or `kill -- -PGID`, signals a worker both directly and
    # through its supervisor) must not turn a clean exit into "killed".
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    log.info("{program} stopped", program=PROGRAM)
    return 0


def console() -> None:
    """The C{twisted-socks} console script."""
    sys.exit(main())
