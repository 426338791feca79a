"""
The client: SOCKS endpoints, their handshake driver, endpoint strings
and the client routing file.
"""
