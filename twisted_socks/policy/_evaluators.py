"""
The shell constructs and commands that evaluate text as code, arithmetic, an
array subscript or a command: a template with C{%} tokens must contain none
of them, however its values are quoted. Pure functions of text, no Twisted.

Quoting makes a value one inert word where it lands; it cannot stop a
command from later evaluating that word (C{set -- %u; eval "$1"}), so
L{evaluatingConstruct} refuses such a template whole, before the quoting
scan (C{_shellquote}) looks at where each token stands.
"""

from __future__ import annotations

import re
import shlex

__all__ = ["evaluatingConstruct"]

#: Words that make a template with tokens unsafe wherever they appear. Each
#: names a shell builtin or a program that evaluates text as code,
#: arithmetic or an array subscript, or that runs its arguments as a
#: command: a value that reached it, directly or through a variable
#: (C{set -- %u; eval "$1"}), would run, however it was quoted.
_EVALUATORS = frozenset(
    {
        # Shell builtins that evaluate text, arithmetic or subscripts.
        *("eval", "let", "trap", "source", "alias", "declare", "typeset"),
        *("local", "readonly", "read", "readarray", "mapfile", "unset"),
        *("getopts", "coproc"),
        # Builtins and programs that run their arguments as a command.
        *("exec", "command", "builtin", "env", "nohup", "nice", "timeout"),
        *("setsid", "stdbuf", "ionice", "chrt", "taskset", "sudo", "doas"),
        *("su", "runuser", "chroot", "flock", "watch", "xargs", "parallel"),
        *("script", "unbuffer", "ssh", "rsh", "-exec", "-execdir", "-ok"),
        "-okdir",
        # Interpreters of a program given as an argument.
        *("sh", "bash", "dash", "ash", "ksh", "mksh", "zsh", "busybox", "csh"),
        *("tcsh", "fish", "awk", "gawk", "mawk", "nawk", "perl", "python"),
        *("python3", "ruby", "php", "node", "tclsh", "lua", "expect", "sed"),
    }
)
#: Text that starts shell arithmetic (C{$((}, C{((}, C{$[}), a bash
#: conditional (C{[[}, whose operands may be arithmetic), or an assignment
#: to an array element (C{name[...]=}, whose subscript is arithmetic).
_EVALUATING_SYNTAX = re.compile(
    r"\$\(\(|\(\(|\$\[|\[\[|[A-Za-z_][A-Za-z0-9_]*\[[^\]]*\]\+?="
)
_RAW_WORD = re.compile(r"[^\s;&|()<>`]+")
# "." reads a file of commands, but only as a command name.
_DOT_COMMAND = re.compile(r"(?:^|[;&|(\n{])\s*\.\s")


def _words(template: str) -> list[str]:
    """
    The words of C{template} after quote removal, split at operators too:
    C{'eval'} and C{e"val"} are both C{eval}, C{"run via ssh"} is not
    C{ssh}. Comments are kept (a word in one is refused too, which is
    only stricter). Unbalanced quotes: every run of non-blank text.
    """
    lexer = shlex.shlex(template, posix=True, punctuation_chars=True)
    lexer.commenters = ""
    try:
        return list(lexer)
    except ValueError:
        return [
            raw.replace("'", "").replace('"', "").replace("\\", "")
            for raw in _RAW_WORD.findall(template)
        ]


def evaluatingConstruct(template: str) -> str | None:
    """
    What, in C{template}, would evaluate a value as code, if anything.

    Scanned on the raw text, quotes and all, so that it holds whatever the
    quoting state, and before any construct the quoter cannot follow.
    """
    if (match := _EVALUATING_SYNTAX.search(template)) is not None:
        return f"'{match.group()}'"
    if _DOT_COMMAND.search(template):
        return "the '.' command"
    words = {word.rsplit("/", 1)[-1] for word in _words(template)}
    if found := sorted(words & _EVALUATORS):
        return f"'{found[0]}'"
    # bash's test -v/-R and printf -v take a variable name, subscript and
    # all, and evaluate the subscript.
    if words & {"test", "[", "printf"} and words & {"-v", "-R"}:
        return "a -v or -R option of test or printf"
    return None
