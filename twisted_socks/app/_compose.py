"""
The composition root: the one place a server is built from its
L{ServerConfig} (L{twisted_socks.app._config}): the ident resolver, the
connector, the name resolver, the metrics, the server factory, and the
services of the process around them.  C{twistd socks} (L{twisted_socks.app._tap}),
the lean launcher (L{twisted_socks.app._serve}) and every worker process of
C{--workers} (which runs the launcher) all build through L{buildService}.

It is given the reactor (twistd's, or the one the launcher installed: only
L{twisted_socks.app._tap} names the global one).  Importing this module imports
neither the reactor nor Twisted's endpoints: everything heavy is imported
where it is used.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from ..policy._rules import RulesError
from ._heap import releaseFreedMemory
from ._services import (
    GracefulShutdown,
    ListenService,
    NothingToReload,
    OneLineListenErrors,
    ReloadEach,
    ReloadOnHangup,
    StopOnTerminate,
    TopService,
)

if TYPE_CHECKING:
    from ..server._factory import SOCKSv4ServerFactory
    from ._configtypes import ServerConfig
    from ._metrics import ServerMetrics
    from ._services import Reloadable

__all__ = [
    "buildFactory",
    "buildMetrics",
    "buildServerService",
    "buildService",
    "buildSupervisorService",
]


def buildService(
    config: ServerConfig, reactor: Any, twistdOptions: Any = None
) -> TopService:
    """
    The service of a server process: this process serving (the only one,
    or one worker), or with C{--workers} above 1 a supervisor of worker
    processes that serve.

    @param twistdOptions: twistd's own options (C{--logfile},
        C{--nodaemon}, C{--syslog}) under twistd; L{None} for the launcher
        (and so every worker), which logs and collects by itself.
    """
    if config.supervises:
        return buildSupervisorService(config, reactor, twistdOptions)
    return buildServerService(config, reactor, twistdOptions)


def buildMetrics(config: ServerConfig) -> ServerMetrics | None:
    """
    The server's counters, if anything reads them: they cost memory and a
    dependency (prometheus_client), and only a status page (this
    process's, or a supervisor's) shows them.
    """
    if not config.wantsMetrics:
        return None
    from ._metrics import ServerMetrics

    return ServerMetrics()


def buildFactory(
    config: ServerConfig, reactor: Any, metrics: ServerMetrics | None = None
) -> SOCKSv4ServerFactory:
    """
    The server factory with its collaborators, as C{config} says: the one
    place the server is built.

    @param metrics: its counters (L{buildMetrics}), watching it from now on.
    """
    from ..ident._ident import RFC1413Resolver
    from ..outbound._connect import TCPConnector
    from ..outbound._resolve import ThreadedHostnameResolver
    from ..server._authfailures import AuthFailures
    from ..server._factory import SOCKSv4ServerFactory

    resolver = RFC1413Resolver(
        reactor, port=config.ident.port, timeout=config.ident.timeout
    )
    outbound = config.outbound.address
    # No timer of the connector's own: the session's connect deadline
    # (--connect-timeout) cancels the attempt.
    connector = TCPConnector(
        reactor,
        timeout=None,
        bindAddress=(outbound, 0) if outbound is not None else None,
    )
    # Threads of its own, as many as lookups may run: the reactor's pool
    # also runs rule commands' reverse lookups, and a SOCKS4A lookup must
    # never wait behind those for a thread.
    nameResolver: Any = ThreadedHostnameResolver(reactor, config.limits.maxLookups)
    if config.outbound.nameCacheTTL > 0:
        from ..outbound._namecache import CachingHostnameResolver

        nameResolver = CachingHostnameResolver(
            nameResolver, reactor, ttl=config.outbound.nameCacheTTL
        )
    checker = None
    if config.auth.users is not None:
        from ..policy._credentials import PasswordFileChecker

        checker = PasswordFileChecker(config.auth.users, reactor)
    factory = SOCKSv4ServerFactory(
        reactor,
        protocols=config.auth.protocols,
        credentialsChecker=checker,
        authFailures=AuthFailures(
            reactor,
            config.auth.failures,
            ipv6Prefix=config.limits.ipv6ClientPrefix,
        ),
        metrics=metrics,
        connector=connector,
        limits=config.limits,
        identResolver=resolver,
        identMode=config.ident.mode,
        bindAddress=config.outbound.bindAddress,
        udpAddress=config.outbound.udpAddress,
        splice=config.outbound.splice,
        nameResolver=nameResolver,
    )
    if metrics is not None:
        metrics.watch(factory)
    return factory


def buildServerService(
    config: ServerConfig, reactor: Any, twistdOptions: Any = None
) -> TopService:
    """The server of one process (the only one, or one worker)."""
    from ._processlog import jsonObserver, twistdTextObserver

    metrics = buildMetrics(config)
    factory = buildFactory(config, reactor, metrics)
    top = TopService()
    worker = config.worker
    if worker is not None:
        from ._workerchild import addWorkerServices

        addWorkerServices(worker, reactor, top, factory, metrics)
    elif config.status.description is not None and metrics is not None:
        from ._status import makeStatusService

        status = makeStatusService(
            reactor,
            config.status.description,
            factory,
            metrics,
            token=config.status.token,
        )
        OneLineListenErrors(
            status, config.status.description, config.programName
        ).setServiceParent(top)
    if config.logFormat == "json":
        top.logObserver = jsonObserver(twistdOptions)
    elif twistdOptions is not None:
        top.logObserver = twistdTextObserver(reactor, twistdOptions)
    if twistdOptions is not None:
        reactor.callWhenRunning(releaseFreedMemory)
    GracefulShutdown(reactor, factory, config.shutdownGrace).setServiceParent(top)
    routes = _routesReloader(config, reactor, factory, metrics)
    _addRules(config, reactor, top, factory, routes)
    for description, endpoint in config.listen.endpoints:
        ListenService(
            description, endpoint, factory, config.programName
        ).setServiceParent(top)
    return top


def _routesReloader(
    config: ServerConfig, reactor: Any, factory: SOCKSv4ServerFactory, metrics: Any
) -> Reloadable | None:
    """
    The routes file (C{--routes}), loaded now, its upstreams on
    C{/metrics}; what reloads it.
    """
    if config.routes is None:
        return None
    from ._routesconfig import RoutesReloader

    if metrics is not None:
        from ._upstreammetrics import UpstreamCollector

        metrics.registry.register(UpstreamCollector(factory, reactor))

    routes = RoutesReloader(
        reactor, factory, config.routes, config.limits.connectTimeout
    )
    try:
        routes.load()
    except RulesError as e:
        sys.stderr.write(f"{config.programName}: {e}\n")
        sys.exit(1)
    return routes


def _addRules(
    config: ServerConfig,
    reactor: Any,
    top: TopService,
    factory: SOCKSv4ServerFactory,
    routes: Reloadable | None = None,
) -> None:
    """
    The rules file, loaded now, and reloaded on SIGHUP (with the users and
    the routes).
    """
    # The users file (--users) is reloaded by the same SIGHUP.
    # (The factory's checker is then a PasswordFileChecker, which reloads.)
    users: Any = factory.credentialsChecker if config.auth.users else None
    if users is not None and config.auth.strictReload:
        from ._strictusers import StrictUsersReload

        users = StrictUsersReload(users, factory)
    if routes is not None:
        # The routes too: what SIGHUP reloads besides the rules.
        users = routes if users is None else ReloadEach(users, routes)
    if config.rules.path is None:
        # systemd's reload, a habit: SIGHUP must not kill a server that
        # has no rules to reload.
        only: Reloadable = users if users is not None else NothingToReload()
        ReloadOnHangup(reactor, only).setServiceParent(top)
        return
    from ..policy._actions import ShellActionRunner, identFailureHook, shellHook
    from ..policy._reload import BackgroundReloads, RulesReloader

    runner = ShellActionRunner(reactor, maxRunning=config.rules.maxCommands)
    reloader = RulesReloader(
        factory,
        config.rules.path,
        onMatch=shellHook(runner),
        onIdentFailure=identFailureHook(runner),
        withUsers=config.auth.users is not None,
    )
    try:
        reloader.load()
    except RulesError as e:
        sys.stderr.write(f"{config.programName}: {e}\n")
        sys.exit(1)
    # Parsed in a thread, coalesced: a big file or a storm of SIGHUPs
    # must not stall the tunnels.
    reloads: Reloadable = BackgroundReloads(reactor, reloader)
    if users is not None:
        reloads = ReloadEach(reloads, users)
    ReloadOnHangup(reactor, reloads).setServiceParent(top)


def buildSupervisorService(
    config: ServerConfig, reactor: Any, twistdOptions: Any = None
) -> TopService:
    """
    The service of a server with C{--workers} above 1: the shared listeners,
    the supervisor, signal handling and, with C{--status}, the status site
    over all workers.  The workers build their own servers with
    L{buildService}, from the same arguments (L{ServerConfig.argv}).
    """
    from ._listeners import sharedListenService
    from ._processlog import supervisorLog
    from ._workers import Supervisor

    top = TopService()
    top.logObserver, relay = supervisorLog(config.logFormat, twistdOptions)
    listeners = []
    for description, endpoint in config.listen.endpoints:
        listening = sharedListenService(
            description, endpoint, config.workers, config.programName
        )
        listening.setServiceParent(top)
        listeners.append(listening)
    supervisor = Supervisor(
        reactor,
        argv=config.argv,
        count=config.workers,
        maxConnections=config.limits.maxConnections,
        listeners=listeners,
        relay=relay,
        grace=config.shutdownGrace,
        snapshots=config.status.description is not None,
        # Whether SIGHUP has something to reload in the workers: their
        # rules, their users, or both.
        rules=config.rules.path is not None
        or config.auth.users is not None
        or config.routes is not None,
    )
    supervisor.setServiceParent(top)
    StopOnTerminate(reactor).setServiceParent(top)
    ReloadOnHangup(reactor, supervisor).setServiceParent(top)
    if config.status.description is not None:
        from ._workerstatus import makeWorkersStatusService

        status = makeWorkersStatusService(
            reactor, config.status.description, supervisor, token=config.status.token
        )
        OneLineListenErrors(
            status, config.status.description, config.programName
        ).setServiceParent(top)
    return top
