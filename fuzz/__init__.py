"""
Fuzzing the three parsers that read untrusted input: the SOCKS4/4A request
codec, the RFC 1413 ident response parser and the rules file grammar.

L{fuzz.targets} holds the targets (seeds, a token dictionary, and the oracle
that says what each parser may and may not do with an input) and a small
deterministic mutation fuzzer, optionally guided by line-pair coverage of
the parser modules.  C{tests/test_fuzz.py} runs it with a fixed seed and a
budget that fits in the normal test run; C{python -m fuzz} runs it for as
long as one likes (see C{docs/reliability.md} for the recorded long run).
"""
