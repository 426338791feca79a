"""
The wire formats, sans-IO: bytes in, typed values or typed errors out.

No module here imports Twisted or zope.interface (tests/test_layout.py
walks the imports); the server and the client drive these parsers.
"""
