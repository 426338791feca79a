"""
The outbound side of a session: name resolution (with its cache), the
direct TCP connector, and whether a destination is this server itself.
"""
