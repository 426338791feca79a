"""C{python -m twisted_socks COMMAND}: the project's command-line tools."""

from __future__ import annotations

import sys


def main() -> int:
    """Dispatch to a subcommand."""
    commands = {
        "serve": "run the server in the foreground (the options of twistd socks)",
        "check": "rule tester: validate a rules file, test a request",
        "sessions": "print a running server's sessions (from its --status endpoint)",
        "passwd": "add a user to a password file (--users), or change a password",
    }
    if sys.argv[1:] == ["--version"]:
        from .app._tap import versionLine

        print(versionLine())
        return 0
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print("usage: python -m twisted_socks COMMAND ... | --version", file=sys.stderr)
        for name, text in commands.items():
            print(f"  {name:8} {text}", file=sys.stderr)
        return 2
    if sys.argv[1] == "serve":
        # Imported alone: the launcher decides what else the process loads.
        from .app._serve import main as serve

        return serve(sys.argv[2:], programName="python -m twisted_socks serve")
    if sys.argv[1] == "sessions":
        from .app._sessionscli import main as sessions

        return sessions(sys.argv[2:])
    if sys.argv[1] == "passwd":
        from .app._passwdcli import main as passwd

        return passwd(sys.argv[2:])
    from .policy._check import main as check

    return check(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
