"""
C{./dev}, the project's entry point: a mistyped command is an error (usage
on standard error, exit status 2), not a silent success.

Only the paths that exit before any set-up are run here: the others build
a virtualenv and install Debian packages.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

DEV = Path(__file__).resolve().parent.parent / "dev"


def runDev(*args: str) -> subprocess.CompletedProcess[str]:
    """Run C{./dev ARGS} to completion (bounded); its output as text."""
    return subprocess.run([str(DEV), *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("command", ["bogus", "tests", "--version"])
def test_unknownCommandIsAUsageError(command: str) -> None:
    """
    An unknown command prints which, and the usage, on standard error, and
    exits 2; nothing is set up and nothing goes to standard output.
    """
    result = runDev(command)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"dev: unknown command '{command}'\n")
    assert "./dev test  [pytest arguments]" in result.stderr


def test_noCommandIsAUsageError() -> None:
    """
    No command at all is a mistake too (a script that lost its argument):
    the usage on standard error, exit status 2.
    """
    result = runDev()
    assert result.returncode == 2
    assert result.stdout == ""
    assert "./dev serve [twistd socks options]" in result.stderr


@pytest.mark.parametrize("command", ["help", "-h", "--help"])
def test_helpPrintsTheUsage(command: str) -> None:
    """Asked for, the usage goes to standard output, with exit status 0."""
    result = runDev(command)
    assert result.returncode == 0
    assert result.stdout.startswith("The project's one entry point")
    assert "./dev bench [bench options]" in result.stdout
    assert result.stderr == ""
