"""
Run Twisted's built-in SOCKSv4 server (C{twisted.protocols.socks}) for the
benchmark.

C{twistd socks} runs this project's server (its plugin retargets the name),
so the built-in one needs this runner: C{SOCKSv4Factory(None)} (no hex-dump
log file) on 127.0.0.1, a kernel-chosen port written to C{--port-file} once
listening, the epoll reactor (the default on Linux, as under twistd).

The built-in server logs one C{log.msg} line per connection ("code 1
connection to ... authorized"); like C{twistd socks}' per-session line it goes
to a file (this process's stdout, which the harness points at a log file),
through the same text file observer twistd uses, flushed per event.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.protocols.socks import SOCKSv4Factory


def main() -> None:
    """Parse the arguments, listen, write the port file, run the reactor."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port-file", type=Path, required=True)
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(sys.stdout)], redirectStandardIO=False
    )
    factory = SOCKSv4Factory(None)
    factory.noisy = False
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    # Write then rename, so the harness never reads a partial number.
    partial = args.port_file.with_suffix(".partial")
    partial.write_text(str(port.getHost().port))
    os.replace(partial, args.port_file)
    reactor.run()


if __name__ == "__main__":
    main()
