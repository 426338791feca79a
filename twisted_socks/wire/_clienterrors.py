"""
What a SOCKS client reports when it cannot get what it asked for, whatever
the protocol version.  No I/O and no Twisted imports.

Every version's refusals and failures derive from L{SOCKSError}; the SOCKS4
refusals (L{twisted_socks.wire._socks4reply.RequestRejected} and its ident
subclasses) live with the SOCKS4 replies that carry them.
"""

from __future__ import annotations

__all__ = ["HandshakeTimeout", "MalformedReply", "SOCKSError"]


class SOCKSError(Exception):
    """
    A SOCKS client could not get what it asked for from the proxy.

    The base of every error the client side reports, whether the server said
    no (L{RequestRejected}), said something that is not a reply
    (L{MalformedReply}) or said nothing in time.
    """


class MalformedReply(SOCKSError):
    """
    The server's answer is not a SOCKS4 reply: a VN other than 0 or 4, a CD
    the protocol does not define, or a connection that ended before all 8
    bytes of the reply arrived.
    """


class HandshakeTimeout(SOCKSError):
    """
    The proxy did not grant or refuse the request in time.

    The clock starts when C{connect()} or C{listen()} is called, so it bounds
    the local name lookup (SOCKS4), the connection to the proxy and the wait
    for the reply together.
    """
