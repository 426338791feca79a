"""
The server: the SOCKS4 front end, the version-neutral session core that
runs every request, admission (limits and rates) and the factory.
"""
