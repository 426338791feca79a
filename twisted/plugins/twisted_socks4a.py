"""
twistd plugin for twisted-socks: C{twistd socks} and C{twistd socks4a}.

Twisted ships its own legacy C{socks} plugin (twisted/plugins/twisted_socks.py).
Two plugins with one tapname break each other (twistd parses options with the
first and runs the last), so this module registers its own tapname and, when
imported, points Twisted's C{socks} ServiceMaker at this project. twistd
imports every plugin module before it parses options, so C{twistd socks}
runs this server whatever order plugins are found in; Twisted's files are not
touched.

It also registers the endpoint-string parsers C{socks4a:}, C{socks4:},
C{socks5h:}, C{socks5:} and C{socks:} (client routing rules) for
C{clientFromString}.
"""

from twisted.application.service import ServiceMaker

from twisted_socks.client._strports import SOCKSEndpointParser, SOCKSRoutingParser

_MODULE = "twisted_socks.app._tap"
_NAME = "twisted-socks"
_DESCRIPTION = "A SOCKS4/SOCKS4A proxy server (twisted-socks)."

twistedSocks4a = ServiceMaker(_NAME, _MODULE, _DESCRIPTION, "socks4a")

try:
    from twisted.plugins import twisted_socks as _legacy
except ImportError:  # a Twisted without the legacy plugin: nothing to retarget
    pass
else:
    _legacySocks = getattr(_legacy, "TwistedSOCKS", None)
    if _legacySocks is not None:
        _legacySocks.module = _MODULE
        _legacySocks.name = _NAME
        _legacySocks.description = _DESCRIPTION

# Endpoint strings: clientFromString(reactor, "socks4a:host=...:port=...").
socks4aEndpoints = SOCKSEndpointParser("socks4a")
socks4Endpoints = SOCKSEndpointParser("socks4")
socks5hEndpoints = SOCKSEndpointParser("socks5h")
socks5Endpoints = SOCKSEndpointParser("socks5")
socksRoutingEndpoints = SOCKSRoutingParser()
