"""JSON Schema ``pattern`` -> the regex subset llama-cpp-python's ``SchemaConverter`` maps exactly.

The converter copies a pattern almost verbatim into GBNF, inside the JSON string's quotes. That is
wrong in several ways (``\\d`` and ``\\.`` are not GBNF escapes; ``.`` and ``[^...]`` can produce a
raw quote, backslash or control character, i.e. invalid JSON; a top-level ``|`` escapes the
quotes; a stray ``]`` or ``}`` makes it loop forever). So the pattern is parsed here and re-emitted
in a form where every character is a plain letter, digit or space, or an explicit class written
with ``\\x``/``\\u``/``\\U`` escapes that never contains a JSON-unsafe character.

Supported: ``^``/``$`` only at the very ends (a missing one means anything may precede/follow,
as JSON Schema's search semantics say); literal characters; ``.``; classes ``[...]``/``[^...]``;
``\\d``, ``\\w`` and ``\\s`` (ASCII digits, ASCII word characters, the space only); ``\\xHH``,
``\\uHHHH``, ``\\t\\n\\r\\f\\v\\0``, escaped punctuation; groups ``(...)``/``(?:...)``; ``|``;
``* + ? {n} {n,} {n,m}`` (a lazy ``?`` is accepted: same language). Refused: lookarounds,
backreferences, ``\\b``, ``\\D \\W \\S``, possessive quantifiers, empty alternatives. Where the
translation is narrower than the regex (``\\s``, ``.``, negated classes, classes with unsafe
characters) the grammar is stricter, never looser.
"""

from __future__ import annotations

import re
from typing import NoReturn

MAX_PATTERN = 500  # pattern length, and the sum of its quantifier bounds (llama.cpp's limit ~2000)
MAX_GROUP_DEPTH = 32

_JSON_UNSAFE = [(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C)]  # must be escaped inside JSON strings
_CLASS_ESCAPES = {"d": [(48, 57)], "w": [(48, 57), (65, 90), (95, 95), (97, 122)], "s": [(32, 32)]}
_CONTROL_ESCAPES = {"t": 9, "n": 10, "v": 11, "f": 12, "r": 13, "0": 0}
_QUANT_RE = re.compile(r"\{([0-9]{1,4})(,?)([0-9]{0,4})\}")

Ranges = list[tuple[int, int]]


class SchemaError(ValueError):
    """A schema that cannot be enforced. ``message`` names the keyword and where it is, e.g.
    "'minimum' (at properties.age) cannot be enforced"; ``keyword`` and ``where`` hold them
    (``where``: dotted path inside the schema, "" for the root); ``str()`` adds ``reason``.
    Defined here, the lowest of the schema modules; :mod:`gemma_worker.core.json_schema`
    exports it."""

    def __init__(self, keyword: str, where: str, reason: str = "") -> None:
        self.keyword, self.where, self.reason = keyword, where, reason
        self.message = f"'{keyword}' (at {where or 'the root'}) cannot be enforced"
        super().__init__(self.message + (f": {reason}" if reason else ""))


def translate(pattern: object, where: str) -> tuple[str, int]:
    """``(regex, cost)``: ``pattern`` rewritten for the converter (anchored at both ends, body in
    one group) and the sum of its repetition bounds. Raises :class:`SchemaError` (``pattern``
    at ``where``) for a pattern outside the subset."""
    parser = _Parser(pattern, where)
    return parser.normalized, parser.cost


def _subtract(ranges: Ranges, holes: Ranges) -> Ranges:
    """Code point ``ranges`` without the sorted ``holes``."""
    out = []
    for first, hi in ranges:
        lo = first
        for h_lo, h_hi in holes:
            if h_lo <= hi and h_hi >= lo:
                if h_lo > lo:
                    out.append((lo, h_lo - 1))
                lo = max(lo, h_hi + 1)
        if lo <= hi:
            out.append((lo, hi))
    return out


def _char(code: int) -> str:
    """A class endpoint in GBNF: an ASCII letter or digit as is, anything else escaped."""
    if chr(code).isascii() and chr(code).isalnum():
        return chr(code)
    if code < 0x100:
        return f"\\x{code:02X}"
    return f"\\u{code:04X}" if code < 0x10000 else f"\\U{code:08X}"


class _Parser:
    def __init__(self, source: object, where: str) -> None:
        self.pos, self.cost, self.where = 0, 0, where
        if not isinstance(source, str) or len(source) > MAX_PATTERN:
            self.fail(f"must be a string of at most {MAX_PATTERN} characters")
        start, end = source.startswith("^"), source.endswith("$")
        end = end and (len(source[:-1]) - len(source[:-1].rstrip("\\"))) % 2 == 0
        self.src = source[1 if start else 0 : len(source) - 1 if end else len(source)]
        body = self.alternation(0)
        if self.pos < len(self.src):
            self.fail("unbalanced ')'")
        anything = self.emit(True, [])
        self.normalized = (
            f"^{'' if start else anything + '*'}({body}){'' if end else anything + '*'}$"
        )

    def fail(self, reason: str) -> NoReturn:
        raise SchemaError("pattern", self.where, reason)

    def peek(self) -> str:
        return self.src[self.pos : self.pos + 1]

    def take(self) -> str:
        if self.pos >= len(self.src):
            self.fail("unexpected end of pattern")
        self.pos += 1
        return self.src[self.pos - 1]

    def alternation(self, depth: int) -> str:
        if depth > MAX_GROUP_DEPTH:
            self.fail("groups nested too deeply")
        branches = [self.sequence(depth)]
        while self.peek() == "|":
            self.pos += 1
            branches.append(self.sequence(depth))
        return "|".join(branches)

    def sequence(self, depth: int) -> str:
        items = []
        while self.peek() not in ("", "|", ")"):
            items.append(self.atom(depth) + self.quantifier())
        if not items:
            self.fail("empty alternatives are not supported")
        return "".join(items)

    def atom(self, depth: int) -> str:
        c = self.take()
        if c == "(":
            if self.peek() == "?":
                if not self.src.startswith("?:", self.pos):
                    self.fail("lookarounds, named groups and inline flags are not supported")
                self.pos += 2
            inner = self.alternation(depth + 1)
            if self.take() != ")":
                self.fail("missing ')'")
            return f"({inner})"
        if c in "*+?{":
            self.fail(f"nothing to repeat before {c!r} (escape a literal one)")
        if c in "^$":
            self.fail("'^' and '$' are supported only at the very start and end")
        if c == "[":
            return self.char_class()
        if c == ".":  # anything but line breaks (ECMA-262's four; Python's \n is among them)
            return self.emit(True, [(0x2028, 0x2029)])
        return self.emit(False, self.escape() if c == "\\" else [(ord(c), ord(c))])

    def escape(self) -> Ranges:
        c = self.take()
        if c in _CLASS_ESCAPES:
            return _CLASS_ESCAPES[c]
        if c in ("x", "u"):
            digits = self.src[self.pos : self.pos + (2 if c == "x" else 4)]
            if len(digits) != (2 if c == "x" else 4) or not re.fullmatch("[0-9a-fA-F]+", digits):
                self.fail(f"bad \\{c} escape")
            self.pos += len(digits)
            return [(int(digits, 16), int(digits, 16))]
        if c in _CONTROL_ESCAPES or (c.isascii() and not c.isalnum()):
            code = _CONTROL_ESCAPES.get(c, ord(c))
            return [(code, code)]
        self.fail(f"escape \\{c} is not supported")

    def char_class(self) -> str:
        negated = self.peek() == "^"
        self.pos += negated
        ranges: Ranges = []
        while (c := self.take()) != "]":
            if c == "[":
                self.fail("'[' inside a character class must be escaped")
            lo = self.escape() if c == "\\" else [(ord(c), ord(c))]
            if self.peek() == "-" and self.src[self.pos + 1 : self.pos + 2] not in ("]", ""):
                self.pos += 1
                c = self.take()
                hi = self.escape() if c == "\\" else [(ord(c), ord(c))]
                if len(lo) != 1 or len(hi) != 1 or lo[0][0] != lo[0][1] or hi[0][0] < lo[0][0]:
                    self.fail("invalid range in a character class")
                lo = [(lo[0][0], hi[0][0])]
            ranges += lo
        if not ranges:
            self.fail("empty character class")
        return self.emit(negated, ranges)

    def emit(self, negated: bool, ranges: Ranges) -> str:
        """A plain letter/digit/space, or a class that never yields a JSON-unsafe character."""
        ranges = ranges + _JSON_UNSAFE if negated else _subtract(ranges, _JSON_UNSAFE)
        if not ranges:
            self.fail("it can only match characters that JSON strings must escape")
        one = ranges[0] if len(ranges) == 1 and not negated else (-1, -2)
        if one[0] == one[1] and re.fullmatch("[A-Za-z0-9 ]", chr(one[0])):
            return chr(one[0])  # a plain letter, digit or space
        body = "".join(_char(a) if a == b else f"{_char(a)}-{_char(b)}" for a, b in ranges)
        return f"[{'^' if negated else ''}{body}]"

    def quantifier(self) -> str:
        c = self.peek()
        if c in ("*", "+", "?"):
            self.pos += 1
            out, cost = c, 1
        elif c == "{" and (m := _QUANT_RE.match(self.src, self.pos)):
            lo, hi = int(m[1]), ((int(m[3]) if m[3] else None) if m[2] else int(m[1]))
            if hi is not None and hi < lo:
                self.fail(f"bad repetition {m[0]}")
            self.pos, out, cost = m.end(), m[0], max(lo, hi or 0, 1)
        elif c == "{":
            self.fail("'{' must start {n}, {n,} or {n,m} (escape a literal one)")
        else:
            return ""
        self.pos += self.peek() == "?"  # lazy: the same language
        self.cost += cost
        if self.cost > MAX_PATTERN:
            self.fail(f"its repetition bounds add up to more than {MAX_PATTERN}")
        return out
