"""GBNF text -> llama.cpp's grammar elements, parsed exactly as llama.cpp parses it (sans-I/O).

Why a second parser: llama.cpp keeps its grammar's parse stacks inside the sampler, out of
reach. :mod:`gemma_worker.core.gbnf_walk` follows the same stacks in Python to know how much
text the answer still needs; for that the rules must be the very ones llama.cpp builds. This is
a port of ``llama_grammar_parser`` (``llama-grammar.cpp``): the same element types, the same
rewriting of groups and repetitions into generated rules, the same symbol ids. Token elements
(``<...>``, ``!<...>``) need a vocabulary and are refused (:class:`GbnfError`); our grammars
never use them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

__all__ = ["GbnfError", "Rules", "Type", "parse_gbnf"]

#: llama.cpp's ``MAX_REPETITION_THRESHOLD``.
MAX_REPETITIONS = 2000


class GbnfError(ValueError):
    """The text is not a grammar llama.cpp would accept (or uses token elements)."""


class Type(IntEnum):
    """``llama_gretype``."""

    END = 0
    ALT = 1
    RULE_REF = 2
    CHAR = 3
    CHAR_NOT = 4
    CHAR_RNG_UPPER = 5
    CHAR_ALT = 6
    CHAR_ANY = 7


Element = tuple[Type, int]


@dataclass(frozen=True, slots=True)
class Rules:
    """The parsed grammar: rule ``i`` is ``rules[i]``, a list of elements whose alternatives
    are separated by ``ALT`` and which ends with ``END``; ``root`` is the start rule's id."""

    rules: tuple[tuple[Element, ...], ...]
    root: int


def _word_char(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c == "-")


#: Escapes with hex digits, and how many.
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}
_SIMPLE_ESCAPES = {"t": 9, "r": 13, "n": 10, "\\": 92, '"': 34, "[": 91, "]": 93, "-": 45}


class _Parser:
    def __init__(self, src: str) -> None:
        self.src = src.split("\0", 1)[0] + "\0"  # the C string's end
        self.symbols: dict[str, int] = {}
        self.rules: list[list[Element]] = []

    # --- lexing ---------------------------------------------------------------------------
    def space(self, pos: int, newline_ok: bool) -> int:
        s = self.src
        while s[pos] in " \t#" or (newline_ok and s[pos] in "\r\n"):
            if s[pos] == "#":
                while s[pos] not in "\r\n\0":
                    pos += 1
            else:
                pos += 1
        return pos

    def name(self, pos: int) -> int:
        end = pos
        while _word_char(self.src[end]):
            end += 1
        if end == pos:
            raise GbnfError(f"expecting a name at offset {pos}")
        return end

    def integer(self, pos: int) -> int:
        end = pos
        while self.src[end].isascii() and self.src[end].isdigit():
            end += 1
        if end == pos:
            raise GbnfError(f"expecting an integer at offset {pos}")
        return end

    def char(self, pos: int) -> tuple[int, int]:
        s = self.src
        c = s[pos]
        if c != "\\":
            if c == "\0":
                raise GbnfError("unexpected end of input")
            return ord(c), pos + 1
        esc = s[pos + 1]
        size = _HEX_ESCAPES.get(esc)
        if size is not None:
            digits = s[pos + 2 : pos + 2 + size]
            if len(digits) != size or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise GbnfError(f"expecting {size} hex digits at offset {pos}")
            return int(digits, 16), pos + 2 + size
        code = _SIMPLE_ESCAPES.get(esc)
        if code is None:
            raise GbnfError(f"unknown escape at offset {pos}")
        return code, pos + 2

    # --- symbols ----------------------------------------------------------------------------
    def symbol(self, name: str) -> int:
        return self.symbols.setdefault(name, len(self.symbols))

    def generated(self, base: str) -> int:
        next_id = len(self.symbols)
        self.symbols[f"{base}_{next_id}"] = next_id
        return next_id

    def add_rule(self, rule_id: int, rule: list[Element]) -> None:
        while len(self.rules) <= rule_id:
            self.rules.append([])
        self.rules[rule_id] = rule

    # --- grammar ----------------------------------------------------------------------------
    def alternates(self, pos: int, rule_name: str, rule_id: int, nested: bool) -> int:
        rule: list[Element] = []
        pos = self.sequence(pos, rule_name, rule, nested)
        while self.src[pos] == "|":
            rule.append((Type.ALT, 0))
            pos = self.space(pos + 1, True)
            pos = self.sequence(pos, rule_name, rule, nested)
        rule.append((Type.END, 0))
        self.add_rule(rule_id, rule)
        return pos

    def repeat(
        self,
        rule: list[Element],
        last: int,
        rule_name: str,
        n_prev: int,
        bounds: tuple[int, int | None],
    ) -> int:
        """Rewrite the symbol at ``rule[last:]`` repeated ``lo`` to ``hi`` (``None``:
        unbounded) times, as llama.cpp does; the new ``n_prev`` rules count."""
        lo, hi = bounds
        if last == len(rule):
            raise GbnfError("expecting an item before a repetition")
        prev = rule[last:]
        total = hi if hi is not None and hi > 0 else (lo if lo > 0 else 1)
        if n_prev * total > MAX_REPETITIONS:
            raise GbnfError("too many repetitions")
        if lo == 0:
            del rule[last:]
        else:
            for _ in range(1, lo):
                rule.extend(prev)
        n_opt = 1 if hi is None else hi - lo
        last_rec = 0
        for i in range(n_opt):
            rec_id = self.generated(rule_name)
            rec = list(prev)
            if i > 0 or hi is None:
                rec.append((Type.RULE_REF, rec_id if hi is None else last_rec))
            rec += [(Type.ALT, 0), (Type.END, 0)]
            self.add_rule(rec_id, rec)
            last_rec = rec_id
        if n_opt > 0:
            rule.append((Type.RULE_REF, last_rec))
        return n_prev * total

    def sequence(self, pos: int, rule_name: str, rule: list[Element], nested: bool) -> int:
        s = self.src
        last = len(rule)
        n_prev = 1
        while (c := s[pos]) != "\0":
            if c == '"':
                pos += 1
                last, n_prev = len(rule), 1
                while s[pos] != '"':
                    if s[pos] == "\0":
                        raise GbnfError("unexpected end of input")
                    value, pos = self.char(pos)
                    rule.append((Type.CHAR, value))
                pos = self.space(pos + 1, nested)
            elif c == "[":
                pos += 1
                start = Type.CHAR
                if s[pos] == "^":
                    pos += 1
                    start = Type.CHAR_NOT
                last, n_prev = len(rule), 1
                while s[pos] != "]":
                    if s[pos] == "\0":
                        raise GbnfError("unexpected end of input")
                    value, pos = self.char(pos)
                    rule.append((Type.CHAR_ALT if last < len(rule) else start, value))
                    if s[pos] == "-" and s[pos + 1] != "]":
                        if s[pos + 1] == "\0":
                            raise GbnfError("unexpected end of input")
                        upper, pos = self.char(pos + 1)
                        rule.append((Type.CHAR_RNG_UPPER, upper))
                pos = self.space(pos + 1, nested)
            elif c in "<!":
                raise GbnfError("token elements are not supported")
            elif _word_char(c):
                end = self.name(pos)
                ref = self.symbol(s[pos:end])
                pos = self.space(end, nested)
                last, n_prev = len(rule), 1
                rule.append((Type.RULE_REF, ref))
            elif c == "(":
                pos = self.space(pos + 1, True)
                before = len(self.symbols)
                sub = self.generated(rule_name)
                pos = self.alternates(pos, rule_name, sub, True)
                n_prev = max(1, len(self.symbols) - before)
                last = len(rule)
                rule.append((Type.RULE_REF, sub))
                if s[pos] != ")":
                    raise GbnfError(f"expecting ')' at offset {pos}")
                pos = self.space(pos + 1, nested)
            elif c == ".":
                last, n_prev = len(rule), 1
                rule.append((Type.CHAR_ANY, 0))
                pos = self.space(pos + 1, nested)
            elif c in "*+?":
                pos = self.space(pos + 1, nested)
                times: tuple[int, int | None] = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
                n_prev = self.repeat(rule, last, rule_name, n_prev, times)
            elif c == "{":
                pos, lo, hi = self.bounds(pos, nested)
                n_prev = self.repeat(rule, last, rule_name, n_prev, (lo, hi))
            else:
                break
        return pos

    def bounds(self, pos: int, nested: bool) -> tuple[int, int, int | None]:
        """``{m}``, ``{m,}`` or ``{m,n}`` at ``pos``: (position after, m, n or ``None``)."""
        s = self.src
        pos = self.space(pos + 1, nested)
        end = self.integer(pos)
        lo = int(s[pos:end])
        pos = self.space(end, nested)
        hi: int | None = None
        if s[pos] == "}":
            hi = lo
        elif s[pos] == ",":
            pos = self.space(pos + 1, nested)
            if s[pos].isascii() and s[pos].isdigit():
                end = self.integer(pos)
                hi = int(s[pos:end])
                pos = self.space(end, nested)
            if s[pos] != "}":
                raise GbnfError(f"expecting '}}' at offset {pos}")
        else:
            raise GbnfError(f"expecting ',' at offset {pos}")
        if lo > MAX_REPETITIONS:
            raise GbnfError("too many repetitions")
        if hi is not None and hi > MAX_REPETITIONS:
            hi = None
        return self.space(pos + 1, nested), lo, hi

    def rule(self, pos: int) -> int:
        end = self.name(pos)
        name = self.src[pos:end]
        pos = self.space(end, False)
        rule_id = self.symbol(name)
        if self.src[pos : pos + 3] != "::=":
            raise GbnfError(f"expecting ::= at offset {pos}")
        pos = self.alternates(self.space(pos + 3, True), name, rule_id, False)
        if self.src[pos] == "\r":
            pos += 2 if self.src[pos + 1] == "\n" else 1
        elif self.src[pos] == "\n":
            pos += 1
        elif self.src[pos] != "\0":
            raise GbnfError(f"expecting a newline or the end at offset {pos}")
        return self.space(pos, True)


def parse_gbnf(text: str, root: str = "root") -> Rules:
    """Parse ``text`` as llama.cpp does; :class:`GbnfError` when llama.cpp would refuse it (an
    undefined rule, a missing ``root``...) or when it uses token elements."""
    p = _Parser(text)
    pos = p.space(0, True)
    while p.src[pos] != "\0":
        pos = p.rule(pos)
    for rule in p.rules:
        if not rule:
            raise GbnfError("undefined rule")
        for kind, value in rule:
            if kind == Type.RULE_REF and (value >= len(p.rules) or not p.rules[value]):
                raise GbnfError("undefined rule")
    if root not in p.symbols:
        raise GbnfError(f"no rule {root!r}")
    _refuse_left_recursion(p.rules)
    return Rules(tuple(tuple(r) for r in p.rules), p.symbols[root])


def _refuse_left_recursion(rules: list[list[Element]]) -> None:
    """``llama_grammar_detect_left_recursion``, with its notion of a rule that may be empty:
    one with a literally empty alternative (not one whose alternatives may all match
    nothing), so it refuses exactly the grammars llama.cpp refuses."""
    visited = [False] * len(rules)
    in_progress = [False] * len(rules)
    may_be_empty = [False] * len(rules)

    def detect(index: int) -> bool:
        if in_progress[index]:
            return True
        in_progress[index] = True
        rule = rules[index]
        at_start = True
        for kind, _ in rule:
            if kind in (Type.END, Type.ALT):
                if at_start:
                    may_be_empty[index] = True
                    break
                at_start = True
            else:
                at_start = False
        recurse = True
        for kind, value in rule:
            if kind == Type.RULE_REF and recurse:
                if detect(value):
                    return True
                if not may_be_empty[value]:
                    recurse = False
            elif kind in (Type.END, Type.ALT):
                recurse = True
            else:
                recurse = False
        in_progress[index] = False
        visited[index] = True
        return False

    for index in range(len(rules)):
        if not visited[index] and detect(index):
            raise GbnfError("the grammar is left-recursive")
