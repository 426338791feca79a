"""
The C{%} tokens of sockd.conf shell commands: finding them and quoting
their values. Pure functions of text, no Twisted, so the rules parser can
refuse an unsafe command when the file is loaded.

Several values come from the client (its USERID, the SOCKS4A hostname, the
names reverse DNS gives). The original C{percent_x.c} pasted them into the
command as they were, so a USERID of C{x; rm -rf /} ran C{rm -rf /}. Here
every value is quoted for the place it lands in the command, and a token
where no quoting can make a value inert is refused (L{UnsafeTemplate}).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

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


class UnsafeTemplate(ValueError):
    """
    A token sits where no quoting can make its value inert.

    Whether a template is refused depends only on the template, never on the
    values, so that an administrator finds out when the rules are loaded
    (L{checkTemplate}), not when a hostile client first shows up.
    """


# Shell states while scanning a template; see _Quoter.
_UNQUOTED = "unquoted"
_SINGLE = "single-quoted"
_DOUBLE = "double-quoted"
_COMMENT = "comment"
_OPAQUE = "opaque"

# Characters that end a word and start an operator.
_OPERATORS = frozenset(";&|()<>")
_BLANKS = frozenset(" \t\n")
# Operators after which the next word is a command name again.
_COMMAND_SEPARATORS = frozenset(";&|(\n")
# Reserved words after which the next word is still a command name.
_PREFIX_WORDS = frozenset(
    {"!", "{", "if", "then", "else", "elif", "do", "while", "until", "time"}
)
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\+?=")

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


def _evaluatingConstruct(template: str) -> str | None:
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


class _Quoter:
    """
    Follow the shell's quoting state through a template, to quote each value
    for the place where it lands.

    C{shlex.quote} is right for a token outside quotes. Inside quotes it is
    not: C{'%u'} would become C{''x; rm -rf /''}, which runs C{rm}, and
    C{"%u"} would leave C{$(...)} live. Yet a template may well put tokens
    in quotes (C{mail -s 'SOCKS: %u@%A' root}), so inside quotes
    the quote is closed, the C{shlex.quote}d value follows, and the quote is
    reopened: the shell joins the pieces into one word.

    Only POSIX quoting is followed: backslash, single and double quotes and
    comments. Past anything whose inside is parsed by other rules
    (backquotes, C{$(} within double quotes, braced parameters, C{$'},
    C{$"}, here-documents, a C{#} right after an operator, where shells
    differ) the state is unknown, and every later token is refused rather
    than guessed at. Refused too: a token right after a backslash or a C{$},
    which would change how its first character is read. C{$(} outside
    double quotes needs no special care: its inside is quoted by the same
    rules as the outside.

    Where a token may stand is an allow-list, not a list of known-bad
    places: a token is accepted only inside an argument word of a simple
    command (or an assignment's value), unquoted or in single or double
    quotes, which the shell reads as text and nothing more. Everything the
    scan does not recognise as such a place (a construct whose quoting is
    not followed, a command name, a redirection target) refuses the token.
    A list of bad places misses one sooner or later; this way what is
    missed is a template refused, not a value run. Quoting cannot protect
    a value that the shell later evaluates as code, arithmetic or an array
    subscript, directly or from a variable (C{$(( %u ))}, C{set -- %u;
    let n=$1}), so a template with a token must not contain any of those
    constructs or commands at all (L{_evaluatingConstruct}).
    """

    def __init__(self) -> None:
        self.state = _UNQUOTED
        self.opaqueReason = ""
        # The previous character was an unquoted (or double-quoted) backslash
        # that escapes the next one.
        self.escaped = False
        # The next character starts a word (so a "#" starts a comment).
        self.wordStart = True
        self.wordStartBeforeEscape = True
        self.afterOperator = False
        self.previous = ""
        # Words of the current simple command, to know where a token lands:
        # inside a word, whether that word is the command name (or could
        # be: an assignment before it, a reserved word) or the target of a
        # redirection; such a value would choose the program or the file.
        self.inWord = False
        self.expectingCommand = True
        self.redirecting = False
        self.word = ""
        self.wordIsCommand = False
        self.wordIsTarget = False
        self.cases = 0
        # Open parentheses: for "$(", the word it sits in, to go on with.
        # (None: a subshell or a case pattern's parenthesis.)
        self.frames: list[tuple[str, bool, bool, bool] | None] = []

    def _startWord(self) -> None:
        if not self.inWord:
            self.inWord = True
            self.word = ""
            self.wordIsCommand = self.expectingCommand
            self.wordIsTarget = self.redirecting
            self.redirecting = False

    def _endWord(self) -> None:
        if not self.inWord:
            return
        self.inWord = False
        if self.wordIsCommand and self.word in ("case", "esac"):
            self.cases += 1 if self.word == "case" else -1
        if self.word == "{":
            # A group or a function's body ("f() {", "function f {"): a
            # command follows, wherever the brace stands.
            self.expectingCommand = True
            return
        # Redirections ("2>/dev/null"), assignments and reserved words may
        # come before the command name.
        if self.wordIsCommand and not (
            self.wordIsTarget
            or self.word in _PREFIX_WORDS
            or _ASSIGNMENT.match(self.word)
        ):
            self.expectingCommand = False

    def _opaque(self, reason: str) -> None:
        self.state = _OPAQUE
        self.opaqueReason = reason

    def feed(self, char: str) -> None:
        """Advance over one literal character of the expanded command."""
        state = self.state
        previous, self.previous = self.previous, char
        if state == _UNQUOTED:
            self._unquoted(char, previous)
        elif state == _SINGLE:
            if char == "'":
                self.state = _UNQUOTED
            else:
                self.word += char
        elif state == _DOUBLE:
            self._double(char, previous)
        elif state == _COMMENT:
            if char == "\n":
                self.state = _UNQUOTED
                self.wordStart = True
                self.afterOperator = False
                self._endWord()
                self.expectingCommand = True

    def _unquoted(self, char: str, previous: str) -> None:
        if self.escaped:
            self.escaped = False
            # Backslash-newline is a line continuation: both vanish.
            self.wordStart = self.wordStartBeforeEscape if char == "\n" else False
            self.afterOperator = False
            self.previous = ""
            if char != "\n":
                self._startWord()
                self.word += char
            return
        self._structure(char, previous)
        if previous == "$" and char in "{'\"":
            self._opaque(f"$ followed by {char}")
            return
        if char == "\\":
            self.escaped = True
            self.wordStartBeforeEscape = self.wordStart
        elif char == "'":
            self.state = _SINGLE
        elif char == '"':
            self.state = _DOUBLE
        elif char == "`":
            self._opaque("backquote")
            return
        elif char == "#" and self.wordStart:
            if self.afterOperator:
                self._opaque("# after an operator")
                return
            self.state = _COMMENT
        elif char == "<" and previous == "<":
            self._opaque("here-document")
            return
        if char in _BLANKS:
            self.wordStart = True
            self.afterOperator = False
        elif char in _OPERATORS:
            self.wordStart = True
            self.afterOperator = True
        elif char != "\\":
            self.wordStart = False
            self.afterOperator = False

    def _structure(self, char: str, previous: str) -> None:
        """Follow words and commands over one unquoted character."""
        if char == "(" and previous == "$" and self.inWord:
            # "$(": a command inside the word, which goes on after ")".
            self.frames.append(
                (
                    self.word,
                    self.wordIsCommand,
                    self.wordIsTarget,
                    self.expectingCommand,
                )
            )
            self.inWord = False
            self.expectingCommand = True
            return
        frame = self.frames[-1] if char == ")" and self.frames else None
        if frame is not None:
            self._endWord()
            self.frames.pop()
            self.word, self.wordIsCommand, self.wordIsTarget = frame[:3]
            self.expectingCommand = frame[3]
            self.inWord = True
            return
        if char in _BLANKS or char in _OPERATORS:
            if char in "<>" and self.inWord and self.word.isdigit():
                self.wordIsTarget = True  # "2>": a descriptor, no command
            self._endWord()
            if char == "(":
                self.frames.append(None)
            elif char == ")" and self.frames:
                self.frames.pop()
            if char in "<>":
                self.redirecting = True
            elif char in "&|" and previous in ("<", ">"):
                pass  # 2>&1, >|: still the same redirection
            elif char in _COMMAND_SEPARATORS:
                self.expectingCommand = True
                self.redirecting = False
            elif char == ")":
                # In a case item, a command follows the pattern's ")".
                self.expectingCommand = self.cases > 0
        elif char == "#" and self.wordStart:
            pass  # a comment, not a word
        else:
            self._startWord()
            if char not in "'\"\\":
                self.word += char

    def _double(self, char: str, previous: str) -> None:
        if char != '"' or self.escaped:
            self.word += char
        if self.escaped:
            self.escaped = False
            self.previous = ""
        elif char == "\\":
            self.escaped = True
        elif char == '"':
            self.state = _UNQUOTED
            self.wordStart = False
            self.afterOperator = False
        elif char == "`":
            self._opaque("backquote")
        elif previous == "$" and char in "({":
            self._opaque(f"${char} inside double quotes")

    def quote(self, value: str, letter: str) -> str:
        """
        Return C{value} written so that, where the scan now stands, the shell
        reads it as exactly C{value}; or raise L{UnsafeTemplate}.
        """
        state = self.state
        if state == _OPAQUE:
            raise UnsafeTemplate(
                f"%{letter} follows a {self.opaqueReason}, whose quoting is not "
                "followed; put the token outside it"
            )
        if state == _COMMENT:
            # Ignored by the shell, but a newline would end the comment.
            return shlex.quote(value).replace("\n", " ")
        if state != _SINGLE and (self.escaped or self.previous == "$"):
            raise UnsafeTemplate(
                f"%{letter} right after {'a backslash' if self.escaped else '$'}"
            )
        self._startWord()
        if self.wordIsTarget:
            raise UnsafeTemplate(
                f"%{letter} in the file name of a redirection, which the "
                "client's text would choose"
            )
        if self.wordIsCommand and not _ASSIGNMENT.match(self.word):
            raise UnsafeTemplate(
                f"%{letter} in a command name, which would run the client's "
                "text as a program; pass it as an argument"
            )
        # A stand-in for the value: it keeps "X=%u" an assignment.
        self.word += "\0"
        quoted = shlex.quote(value)
        self.previous = ""
        if state == _UNQUOTED:
            self.wordStart = False
            self.afterOperator = False
            return quoted
        if value and quoted == value:
            # Only characters inert in any quotes: no need to break out.
            return value
        mark = "'" if state == _SINGLE else '"'
        return mark + quoted + mark


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
    L{_Quoter}), so C{'SOCKS: %u'} keeps working. Values are not scanned
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
    quoter = _Quoter()
    out: list[str] = []
    expanded = ""
    pieces = _pieces(template)
    letters = [text for kind, text in pieces if kind == "token" and text in values]
    if letters and (construct := _evaluatingConstruct(template)) is not None:
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
    if expanded and quoter.state == _UNQUOTED and quoter.escaped:
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
