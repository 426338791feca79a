"""
The relay: what carries a tunnel's bytes once the SOCKS reply is decided.

L{_relay} holds the relay object a session hands its tunnel to (copying,
and moving into the kernel at the first bulk read); L{_splice} the in-kernel
relay (Linux C{splice(2)}) and its pipe pool; L{_fastio} the immediate
write, half-close and close for quiet TCP transports.  Imports Twisted.
"""
