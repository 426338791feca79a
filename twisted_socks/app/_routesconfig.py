"""
C{--routes FILE}: the server's routes, checked at start-up, installed on
the factory, and reloaded on SIGHUP with the rules.

A file that does not parse, or whose upstream is one of this server's own
listeners, stops start-up with its C{file:line} message; on a reload it
leaves the routes in force as they were, and says why in the log.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.logger import Logger

from ..client._routes import RouteTable, loadRoutes
from ..outbound._routed import Router
from ..outbound._selfaddress import ListeningAddresses
from ..outbound._upstreams import findLoop
from ..policy._fields import RulesError

__all__ = ["RoutesReloader", "checkRoutes", "listenersOf"]

_log = Logger(namespace="twisted_socks.routes")


def listenersOf(descriptions: Iterable[str]) -> ListeningAddresses:
    """
    The addresses and ports that the TCP listeners of C{descriptions}
    (C{tcp:PORT:interface=ADDRESS}, C{tcp6:...}, inside C{haproxy:} too)
    will listen on; other kinds and port 0 are not known before listening.
    """
    listening = ListeningAddresses()
    for description in descriptions:
        words = description.split(":")
        while words and words[0].lower() == "haproxy":
            words = words[1:]
        kind = words[0].lower() if words else ""
        if kind not in ("tcp", "tcp6") or len(words) < 2:
            continue
        port, interface = words[1], "0.0.0.0" if kind == "tcp" else "::"
        if port.startswith("port="):
            port = port[len("port=") :]
        for word in words[2:]:
            if word.startswith("interface="):
                interface = word[len("interface=") :]
        if port.isdigit() and int(port) > 0:
            listening.add(interface.replace("\\", ""), int(port))
    return listening


def checkRoutes(path: str, listening: ListeningAddresses) -> RouteTable:
    """
    Load the routes file at C{path} and refuse a loop into C{listening}.

    @raise RulesError: naming the file and line.
    """
    table = loadRoutes(path, server=True)
    loop = findLoop(table, listening)
    if loop is not None:
        route, server = loop
        number = int(route.location.rsplit(":", 1)[1])
        raise RulesError(
            path,
            number,
            f"upstream {server} is this server's own listener (a route"
            " through it would loop)",
        )
    return table


class RoutesReloader:
    """
    Keeps a factory's routes in step with a routes file.

    @param reactor: the clock of the upstreams' marks, and their connections.
    @param factory: the server factory whose C{router} is installed.
    @param path: the routes file.
    @param timeout: seconds for each upstream (C{--connect-timeout}).
    """

    def __init__(self, reactor: Any, factory: Any, path: str, timeout: float) -> None:
        self._reactor = reactor
        self._factory = factory
        self.path = path
        self._timeout = timeout

    def load(self) -> Router:
        """
        Load the file and install it (at start-up).

        @raise RulesError: if it is invalid or loops into a listener.
        """
        table = checkRoutes(self.path, self._factory.listeningAddresses)
        router = Router(self._reactor, table, timeout=self._timeout)
        self._factory.router = router
        return router

    def reload(self) -> bool:
        """
        Load the file again; on any error keep the routes in force and log
        why.  The upstreams' state (failures, marks) is kept.

        @return: whether the new routes are in force.
        """
        try:
            table = checkRoutes(self.path, self._factory.listeningAddresses)
        except RulesError as e:
            _log.error(
                "routes not reloaded, previous routes stay in force: {error}",
                error=str(e),
            )
            return False
        router = self._factory.router
        if router is None:
            self._factory.router = Router(self._reactor, table, timeout=self._timeout)
        else:
            router.table = table
        _log.info(
            "routes reloaded from {path}: {count} routes",
            path=self.path,
            count=len(table.routes),
        )
        return True
