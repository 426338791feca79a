"""
The C{%} tokens of sockd.conf shell commands: finding them and quoting
their values. Pure functions of text, no Twisted, so the rules parser can
refuse an unsafe command when the file is loaded.

Several values come from the client (its USERID, the SOCKS4A hostname, the
names reverse DNS gives). The original C{percent_x.c} pasted them into the
command as they were, so a USERID of C{x; rm -rf /} ran C{rm -rf /}. Here
every value is quoted for the place it lands in the command, and a token
where no quoting can make a value inert is refused (L{UnsafeTemplate}).

This module finds the tokens and puts the quoted values in; where a token
lands and how to quote it there is the scan of L{ShellQuoter}, and which
commands evaluate text whatever its quoting is L{evaluatingConstruct}.
"""

from __future__ import annotations

from collections.abc import Mapping

from ._evaluators import evaluatingConstruct
from ._shellquote import ShellQuoter, UnsafeTemplate

__all__ = ["TOKENS", "UnsafeTemplate", "checkTemplate", "expandTokens", "tokensUsed"]

#: The letters of the C{%} tokens (C{%%} aside), as in CSTC sockd's
#: C{percent_x.c}:
#:   - C{A}: the client's name by reverse DNS, or its address if it has none;
#:   - C{a}: the client's address;
#:   - C{c}: the command, C{connect} or C{bind};
#:   - C{p}: the server's process id;
#:   - C{S}: the service name of the destination port (C{http}), or the number;
#:   - C{s}: the destination port number;
#:   - C{U}: the user name that the client's ident server reported, or empty;
#:   - C{u}: the USERID that the client sent;
#:   - C{Z}: the destination's name (the SOCKS4A hostname, else reverse DNS),
#:     or its address;
#:   - C{z}: the destination address.
TOKENS = frozenset("AacpSsUuZz")


def _pieces(template: str) -> list[tuple[str, str]]:
    """
    Split C{template} into C{("text", characters)} and C{("token", letter)}.

    C{%%} is the text C{%}; C{%} and any other character, or a C{%} at the
    end, is text too: only L{expandTokens}'s keys decide what is a token.
    """
    pieces: list[tuple[str, str]] = []
    i = 0
    while i < len(template):
        j = template.find("%", i)
        if j < 0:
            pieces.append(("text", template[i:]))
            break
        if j > i:
            pieces.append(("text", template[i:j]))
        if j + 1 == len(template):
            pieces.append(("text", "%"))
            break
        letter = template[j + 1]
        pieces.append(("text", "%") if letter == "%" else ("token", letter))
        i = j + 2
    return pieces


def expandTokens(template: str, values: Mapping[str, str]) -> str:
    """
    Replace the C{%} tokens of a shell command template, quoting every value.

    Each C{%X} whose letter C{X} is a key of C{values} is replaced by
    C{values[X]}, quoted with C{shlex.quote} so that the shell reads it back
    as exactly that text, as a single argument when the token stands alone.
    A token inside single or double quotes is quoted for that place too (see
    L{ShellQuoter}), so C{'SOCKS: %u'} keeps working. Values are not scanned
    again: a USERID of C{%z} stays C{%z}. C{%%} becomes C{%}. A C{%} followed
    by anything else, such as C{%q}, is kept as it is (tcp_wrappers'
    C{percent_x.c}, which sockd's derives from, silently dropped it): a
    template written for another tool (C{date +%F}) then passes through
    unchanged, and a mistyped token shows in the logged command.

    Quoting does not stop a value from being an option: write C{-- %u} or
    C{@%A} rather than a bare token after a command that takes options.

    @param template: the command, as written in the rules file.
    @param values: token letters to their text (see L{TOKENS}); text may hold
        anything, including lone surrogates from C{surrogateescape}.
    @return: the command for C{sh -c}.
    @raise UnsafeTemplate: a token sits where its quoting cannot be known
        (inside backquotes, for instance); this depends only on C{template}
        and the keys of C{values}.
    """
    quoter = ShellQuoter()
    out: list[str] = []
    expanded = ""
    pieces = _pieces(template)
    letters = [text for kind, text in pieces if kind == "token" and text in values]
    if letters and (construct := evaluatingConstruct(template)) is not None:
        raise UnsafeTemplate(
            f"%{letters[0]} in a command with {construct}, which evaluates "
            "text as code, arithmetic or a command, even quoted: the "
            "client's text could run; use the token elsewhere"
        )
    for kind, text in pieces:
        if kind == "token" and text in values:
            out.append(quoter.quote(values[text], text))
            expanded = expanded or text
            continue
        if kind == "token":
            text = "%" + text
        for char in text:
            quoter.feed(char)
        out.append(text)
    if expanded and quoter.endsEscaped:
        # bash keeps a backslash at the very end of "sh -c" text as itself,
        # unless a quoted string earlier on the command spans lines: then
        # it drops it. A value with a newline in it would change what the
        # command prints, so the template is refused whatever the values.
        raise UnsafeTemplate(
            f"the command ends with a backslash (after %{expanded}), which "
            "bash reads differently when a value holds a newline; remove it"
        )
    return "".join(out)


def tokensUsed(template: str) -> frozenset[str]:
    """
    Which of the L{TOKENS} C{template} uses.

    Callers use this to do only the lookups a command needs: C{%A} and C{%Z}
    may need reverse DNS, C{%S} the services database.

    @param template: a shell command template.
    @return: the letters of the tokens in it, C{%%} not counted.
    """
    return frozenset(
        text for kind, text in _pieces(template) if kind == "token" and text in TOKENS
    )


def checkTemplate(template: str) -> None:
    """
    Refuse a template now if L{expandTokens} would refuse it later.

    @param template: a shell command template, as in a rules file.
    @raise UnsafeTemplate: with the reason, for the administrator.
    """
    expandTokens(template, dict.fromkeys(TOKENS, ""))
