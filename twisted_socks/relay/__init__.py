"""
The relay: what carries a tunnel's bytes once the SOCKS reply is decided.

L{_fastio} holds the immediate write, half-close and close for quiet TCP
transports; L{_splice} the in-kernel relay (Linux C{splice(2)}) and its pipe
pool.  Imports Twisted.
"""
