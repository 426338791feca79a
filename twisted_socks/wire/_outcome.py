"""
How a request ended, in words no SOCKS version owns.

The server decides what happened to a request (a rule denied it, the
destination refused the connection, the connect timed out, ...) and each
protocol front end says it in its own reply codes: SOCKS4 has only four
(90-93), SOCKS5 has nine (RFC 1928 00-08).  Keeping the outcome apart from
the code lets one session core serve both, and keeps what SOCKS4 cannot say
(why a connect failed) for the log and for SOCKS5.

Sans-IO: no Twisted here (the connect-failure mapping takes an errno).
"""

from __future__ import annotations

import errno
from enum import Enum

__all__ = ["Outcome", "outcomeForErrno"]


class Outcome(Enum):
    """How a request ended (or, for L{GRANTED}, that it goes ahead)."""

    #: The request stands: connected, or listening (BIND).
    GRANTED = "granted"
    #: A rule or the policy denied it (or a limit did).
    DENIED = "denied by rule"
    #: A strict ident check found no identd on the client's host.
    NO_IDENTD = "no identd"
    #: The client's identd named another user than the request's.
    IDENT_MISMATCH = "wrong ident user"
    #: The destination refused the connection.
    REFUSED = "refused"
    #: No route to the destination host.
    HOST_UNREACHABLE = "host unreachable"
    #: No route to the destination network.
    NETWORK_UNREACHABLE = "network unreachable"
    #: The connect (or the name lookup within it) took too long.
    TIMED_OUT = "timed out"
    #: A command the server does not serve.
    COMMAND_NOT_SUPPORTED = "command not supported"
    #: A kind of address the server does not serve.
    ADDRESS_TYPE_NOT_SUPPORTED = "address type not supported"
    #: Anything else: a malformed request, a failed lookup, a server error.
    FAILURE = "general failure"


#: The connect errors that say more than "failed".
_BY_ERRNO = {
    errno.ECONNREFUSED: Outcome.REFUSED,
    errno.EHOSTUNREACH: Outcome.HOST_UNREACHABLE,
    errno.EHOSTDOWN: Outcome.HOST_UNREACHABLE,
    errno.ENETUNREACH: Outcome.NETWORK_UNREACHABLE,
    errno.ENETDOWN: Outcome.NETWORK_UNREACHABLE,
    errno.ETIMEDOUT: Outcome.TIMED_OUT,
}


def outcomeForErrno(code: int | None) -> Outcome:
    """
    The outcome of a connect that failed with C{code} (an C{errno} value;
    L{None} when the error carried none).
    """
    if code is None:
        return Outcome.FAILURE
    return _BY_ERRNO.get(code, Outcome.FAILURE)
