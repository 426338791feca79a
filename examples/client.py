"""
Fetch a web page through a SOCKS4A proxy with twisted-socks' client endpoint.

    python examples/client.py http://example.com/ 127.0.0.1:1080

The proxy resolves the host name (SOCKS4A); the program prints the
response's status line and its size.
"""

import sys
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import react


class HTTPGet(Protocol):
    """Sends one HTTP/1.0 GET; C{done} fires with the whole response."""

    def __init__(self, host: str, path: str) -> None:
        self.request = f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode()
        self.received: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: object) -> None:
        # HTTP/1.0: the server closes the connection after the response.
        self.done.callback(b"".join(self.received))


async def main(reactor, url: str, proxy: str = "127.0.0.1:1080") -> None:
    parts = urlsplit(url)
    proxyHost, _, proxyPort = proxy.rpartition(":")
    # SOCKS4A: the proxy resolves the name. Other descriptions: socks4:
    # (resolved here), tls=true (TLS through the tunnel), proxy=... (any
    # endpoint reaches the proxy, so proxies chain), socks:conf=FILE (routes
    # from a socks.conf file); see docs/client.md.
    endpoint = clientFromString(
        reactor,
        f"socks4a:host={parts.hostname}:port={parts.port or 80}"
        f":proxyHost={proxyHost}:proxyPort={proxyPort}",
    )
    protocol = await connectProtocol(endpoint, HTTPGet(parts.netloc, parts.path or "/"))
    response = await protocol.done
    statusLine = response.split(b"\r\n", 1)[0].decode("latin-1")
    print(f"{statusLine} ({len(response)} bytes through {proxy})")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    react(
        lambda reactor, *argv: Deferred.fromCoroutine(main(reactor, *argv)),
        sys.argv[1:],
    )
