"""Turns formula text into tokens.

Lexical rules (semantics.md §1.2): `//` comments to end of line, any
whitespace including line breaks, decimal numbers, double-quoted strings
without escapes, names that may start with `$`.  Block comments are not part
of the documented language and are refused (Shoal decision).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .errors import syntax_error

NUMBER = "number"
STRING = "string"
NAME = "name"
OP = "op"
END = "end"


class Token(NamedTuple):
    kind: str
    text: str
    position: int


# Longest operators first so `<=` is not read as `<` then `=`.
_OPERATORS = ("&&", "||", "<=", ">=", "==", "!=", "+", "-", "*", "/", "!", "<", ">", "?", ":", "(", ")", ",", ".", ";", "=")

_SCANNER = re.compile(
    r"""
    (?P<space>[ \t\r\n\f\v]+)
  | (?P<comment>//[^\n]*)
  | (?P<block>/\*)
  | (?P<number>[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)
  | (?P<string>"[^"\n]*")
  | (?P<name>\$?[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>"""
    + "|".join(re.escape(op) for op in _OPERATORS)
    + r""")
    """,
    re.VERBOSE,
)


def tokenize(source: str) -> list[Token]:
    """All tokens of `source`, ending with an END token; raises FormulaError."""
    tokens: list[Token] = []
    position = 0
    length = len(source)
    match = _SCANNER.match
    while position < length:
        found = match(source, position)
        if found is None:
            char = source[position]
            if char == '"':
                raise syntax_error("unterminated string literal", position, source)
            raise syntax_error(f"unexpected character {char!r}", position, source)
        kind = found.lastgroup
        text = found.group()
        if kind == "block":
            raise syntax_error("block comments are not supported; use //", position, source)
        if kind == "number":
            # A number running straight into a name (`5x`) is a typo, not two tokens.
            end = found.end()
            if end < length and (source[end].isalnum() or source[end] in "_$."):
                raise syntax_error(f"malformed number near {source[position:end + 1]!r}", position, source)
            tokens.append(Token(NUMBER, text, position))
        elif kind == "string":
            tokens.append(Token(STRING, text[1:-1], position))
        elif kind == "name":
            tokens.append(Token(NAME, text, position))
        elif kind == "op":
            tokens.append(Token(OP, text, position))
        position = found.end()
    tokens.append(Token(END, "", length))
    return tokens
