"""
RFC 1413 ident lookups over TCP, and the resolvers used when ident is off.
"""
