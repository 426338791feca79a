"""
The quoting scan of a shell command template: it follows the shell's quoting
state and the words of each simple command through the template, to quote
each C{%} token's value for the place where it lands, or refuse the token.
Pure functions of text, no Twisted.

L{ShellQuoter} follows the quoting (backslash, single and double quotes,
comments, and what it cannot follow); L{CommandWords} follows the words (is
this word a command name, an argument, a redirection target?). Which
commands evaluate text whatever its quoting is another question, answered
before this scan (C{_evaluators}).
"""

from __future__ import annotations

import re
import shlex

__all__ = ["CommandWords", "ShellQuoter", "UnsafeTemplate"]


class UnsafeTemplate(ValueError):
    """
    A token sits where no quoting can make its value inert.

    Whether a template is refused depends only on the template, never on the
    values, so that an administrator finds out when the rules are loaded
    (C{checkTemplate}), not when a hostile client first shows up.
    """


# Shell states while scanning a template; see ShellQuoter.
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


class CommandWords:
    """
    The words of the current simple command, to know where a token lands:
    inside a word, whether that word is the command name (or could be: an
    assignment before it, a reserved word) or the target of a redirection;
    such a value would choose the program or the file.

    L{ShellQuoter} feeds it the unquoted characters and adds the quoted
    ones to the current word.

    @ivar word: the current word so far, quotes removed.
    @ivar inWord: whether a word has started and not ended.
    @ivar wordIsCommand: whether the current word stands where a command
        name may.
    @ivar wordIsTarget: whether the current word is a redirection's target.
    @ivar expectingCommand: whether the next word stands where a command
        name may.
    """

    def __init__(self) -> None:
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

    def start(self) -> None:
        """Start a word here, unless one has started."""
        if not self.inWord:
            self.inWord = True
            self.word = ""
            self.wordIsCommand = self.expectingCommand
            self.wordIsTarget = self.redirecting
            self.redirecting = False

    def end(self) -> None:
        """End the current word, if any, and see what may follow it."""
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

    def feed(self, char: str, previous: str, wordStart: bool) -> None:
        """
        Follow words and commands over one unquoted character, C{previous}
        the one before it, C{wordStart} whether it starts a word.
        """
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
            self.end()
            self.frames.pop()
            self.word, self.wordIsCommand, self.wordIsTarget = frame[:3]
            self.expectingCommand = frame[3]
            self.inWord = True
            return
        if char in _BLANKS or char in _OPERATORS:
            if char in "<>" and self.inWord and self.word.isdigit():
                self.wordIsTarget = True  # "2>": a descriptor, no command
            self.end()
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
        elif char == "#" and wordStart:
            pass  # a comment, not a word
        else:
            self.start()
            if char not in "'\"\\":
                self.word += char

    def addToken(self, letter: str) -> None:
        """
        Put the value of the token C{%letter} into the word here.

        @raise UnsafeTemplate: if that word is a command name or the file
            name of a redirection.
        """
        self.start()
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


class ShellQuoter:
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
    constructs or commands at all (C{evaluatingConstruct}).
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
        # Where a token would land: which word, of which command.
        self.words = CommandWords()

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
                self.words.word += char
        elif state == _DOUBLE:
            self._double(char, previous)
        elif state == _COMMENT:
            if char == "\n":
                self.state = _UNQUOTED
                self.wordStart = True
                self.afterOperator = False
                self.words.end()
                self.words.expectingCommand = True

    def _unquoted(self, char: str, previous: str) -> None:
        if self.escaped:
            self.escaped = False
            # Backslash-newline is a line continuation: both vanish.
            self.wordStart = self.wordStartBeforeEscape if char == "\n" else False
            self.afterOperator = False
            self.previous = ""
            if char != "\n":
                self.words.start()
                self.words.word += char
            return
        self.words.feed(char, previous, self.wordStart)
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

    def _double(self, char: str, previous: str) -> None:
        if char != '"' or self.escaped:
            self.words.word += char
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
        self.words.addToken(letter)
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

    @property
    def endsEscaped(self) -> bool:
        """Whether the text so far ends with an unquoted escaping backslash."""
        return self.state == _UNQUOTED and self.escaped
