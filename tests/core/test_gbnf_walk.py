"""The GBNF parser and walk as plain data: the languages they accept and the shortest
completions they compute (valid, as short as claimed), without a model."""

from __future__ import annotations

import json
import random
from typing import Any

import jsonschema
import pytest

from gemma_worker.core.gbnf import GbnfError, Type, parse_gbnf
from gemma_worker.core.gbnf_lengths import INFINITE
from gemma_worker.core.gbnf_walk import MAX_STACKS, GrammarWalk, WalkState
from gemma_worker.core.json_schema import (
    JSON_OBJECT_GBNF,
    ToolSpec,
    schema_to_gbnf,
    tool_call_gbnf,
)

SCHEMAS: list[dict[str, Any]] = [
    {"type": "object"},
    {
        "type": "object",
        "properties": {
            "title": {"type": "string", "minLength": 3},
            "level": {"enum": ["low", "medium", "high"]},
            "items": {
                "type": "array",
                "minItems": 2,
                "items": {
                    "type": "object",
                    "properties": {"x": {"type": "integer"}, "y": {"type": ["string", "null"]}},
                    "required": ["x", "y"],
                },
            },
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
        "required": ["title", "level", "items"],
    },
    {
        "type": "object",
        "properties": {
            "when": {"type": "string", "format": "date-time"},
            "id": {"type": "string", "format": "uuid"},
            "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2,4}$"},
            "ratio": {"type": "number"},
            "ok": {"type": "boolean"},
            "name": {"const": 'fixed "quoted" é'},
        },
        "required": ["when", "id", "code", "ratio", "ok", "name"],
    },
    {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "v": {"type": "integer"},
                    "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                },
                "required": ["v", "kids"],
            }
        },
        "$ref": "#/$defs/node",
    },
    {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
    {"type": "string", "enum": ["ünïcödé", "x"]},
]

INSTANCES: list[tuple[int, Any]] = [
    (0, {"a": [1, 2, {"b": None}], "c": "d\n\u00e9"}),
    (1, {"title": "Web", "level": "high", "items": [{"x": 1, "y": None}, {"x": -22, "y": "q"}]}),
    (
        2,
        {
            "when": "2026-12-02T06:33:36Z",
            "id": "123e4567-e89b-12d3-a456-426614174000",
            "code": "ABC-123",
            "ratio": 1.5e3,
            "ok": False,
            "name": 'fixed "quoted" é',
        },
    ),
    (3, {"v": 1, "kids": [{"v": 2, "kids": []}]}),
    (4, ["a", "b"]),
]


def feed(walk: GrammarWalk, text: str | bytes, state: WalkState | None = None) -> WalkState:
    state = walk.initial() if state is None else state
    data = text.encode() if isinstance(text, str) else text
    for i in range(len(data)):
        nxt = walk.accept(state, data[i : i + 1])
        assert nxt is not None, f"refused at byte {i}: {data[: i + 1]!r}"
        state = nxt
    return state


def accepts(walk: GrammarWalk, text: str) -> bool:
    state: WalkState | None = walk.initial()
    for i, byte in enumerate(text.encode()):
        assert state is not None
        state = walk.accept(state, bytes([byte]))
        if state is None:
            return False
        del i
    return state is not None and walk.complete(state)


@pytest.mark.parametrize("index", range(len(SCHEMAS)))
def test_the_shortest_answer_is_valid_and_as_long_as_claimed(index: int) -> None:
    schema = SCHEMAS[index]
    walk = GrammarWalk.parse(schema_to_gbnf(schema))
    state = walk.initial()
    text = walk.shortest(state)
    assert text is not None
    assert len(text.encode()) == walk.needed_bytes(state) > 0
    jsonschema.validate(json.loads(text), schema)
    assert walk.complete(feed(walk, text))


@pytest.mark.parametrize(("index", "instance"), INSTANCES)
def test_every_prefix_of_a_valid_answer_completes_to_a_valid_one(index: int, instance: Any) -> None:
    """At every byte of a valid answer, the prefix + the shortest completion is valid JSON for
    the schema, and no completion the grammar allows is shorter (the needed bytes never drop
    by more than the byte just read)."""
    schema = SCHEMAS[index]
    walk = GrammarWalk.parse(schema_to_gbnf(schema))
    data = json.dumps(instance, ensure_ascii=False).encode()
    state = walk.initial()
    needed = walk.needed_bytes(state)
    for i in range(len(data)):
        nxt = walk.accept(state, data[i : i + 1])
        assert nxt is not None, data[: i + 1]
        state = nxt
        now = walk.needed_bytes(state)
        assert now >= needed - 1
        needed = now
        rest = walk.shortest(state)
        if rest is None:  # inside a multi-byte character
            assert state.n_remain > 0
            continue
        assert len(rest.encode()) == needed
        jsonschema.validate(json.loads(data[: i + 1] + rest.encode()), schema)
    assert walk.complete(state) and walk.needed_bytes(state) == 0


def test_random_valid_walks_stay_completable() -> None:
    """Random paths through the grammar (a random allowed byte at each step) can always be
    completed by their shortest completion, to valid JSON."""
    rng = random.Random(7)
    schema = SCHEMAS[1]
    walk = GrammarWalk.parse(schema_to_gbnf(schema))
    alphabet = sorted(set(b'{}[]",: abcdefghijklmnopqrstuvwxyz0123456789-.\\' + b"lownull"))
    for _ in range(30):
        state, text = walk.initial(), b""
        for _ in range(rng.randint(1, 120)):
            options = [b for b in alphabet if walk.accept(state, bytes([b])) is not None]
            if not options:
                break
            byte = rng.choice(options)
            nxt = walk.accept(state, bytes([byte]))
            assert nxt is not None
            state, text = nxt, text + bytes([byte])
        rest = walk.shortest(state)
        assert rest is not None
        jsonschema.validate(json.loads(text + rest.encode()), schema)


def test_a_split_character_is_owed_before_anything_else() -> None:
    walk = GrammarWalk.parse(schema_to_gbnf({"type": "string"}))
    state = feed(walk, b'"\xc3')
    assert state.n_remain == 1
    assert walk.shortest(state) is None
    assert walk.needed_bytes(state) == 2  # the last byte of the character, then the quote
    assert walk.accept(state, b"A") is None  # not a continuation byte
    state = feed(walk, b"\xa9", state)
    assert walk.shortest(state) == '"'
    assert walk.accept(walk.initial(), b'"\x80') is None  # a continuation byte first


def test_tool_calls_need_nothing_until_a_call_starts() -> None:
    tool = ToolSpec("read_logs", {"type": "object", "properties": {"host": {"type": "string"}}})
    walk = GrammarWalk.parse(tool_call_gbnf([tool], required=False, parallel=True))
    assert walk.needed_bytes(walk.initial()) == 0
    text = feed(walk, "Plain words, then {braces}")
    assert walk.needed_bytes(text) == 0 and walk.complete(text)
    call = feed(walk, ' {"na')
    assert walk.shortest(call) == 'me": "read_logs", "arguments": {}}'
    many = feed(walk, '[{"name": "read_logs", "arguments": {}}, ')
    assert walk.shortest(many) == '{"name": "read_logs", "arguments": {}}]'
    forced = GrammarWalk.parse(tool_call_gbnf([tool], required=True, parallel=False))
    assert forced.shortest(forced.initial()) == '{"name": "read_logs", "arguments": {}}'


def test_repetitions_accept_exactly_their_counts() -> None:
    walk = GrammarWalk.parse('root ::= "x"{2,4} [0-9]+ "-"? ("ab" | "c")*\n')
    assert [accepts(walk, "x" * n + "1") for n in range(1, 6)] == [
        False,
        True,
        True,
        True,
        False,
    ]
    assert accepts(walk, "xx123-ababc") and not accepts(walk, "xx--")
    assert walk.shortest(walk.initial()) == "xx0"


def test_character_classes_and_escapes() -> None:
    walk = GrammarWalk.parse(r'root ::= [^"\\\x00-\x1F] [a-c\-] "\u00e9" . [\]]' + "\n")
    assert accepts(walk, "zb\u00e9\U0001f600]")
    assert accepts(walk, "q-\u00e9x]")
    assert not accepts(walk, '"b\u00e9x]') and not accepts(walk, "\nb\u00e9x]")
    assert walk.shortest(walk.initial()) == "aa\u00e9a]"
    # a class with no one-byte member stands in with its cheapest member
    wide = GrammarWalk.parse("root ::= [^\\x00-\\x7F]\n")
    assert wide.shortest(wide.initial()) == "\u0080"


def test_comments_newlines_and_rule_order() -> None:
    walk = GrammarWalk.parse(
        '# a comment\nroot ::= ( item\n  | "-" )  # trailing\nitem ::= [a-z]\n'
    )
    assert accepts(walk, "q") and accepts(walk, "-") and not accepts(walk, "qq")


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("root ::= missing\n", "undefined rule"),
        ('item ::= "x"\n', "no rule 'root'"),
        ("root ::= <token>\n", "token elements"),
        ('root ::= "\\q"\n', "unknown escape"),
        ('root ::= "open\n', "end of input"),
        ("root ::= [a-\n", "end of input"),
        ('root ::= "x"{1,2\n', "expecting '}'"),
        ('root ::= "x"{5000}\n', "too many repetitions"),
        ('root ::= * "x"\n', "before a repetition"),
        ('root = "x"\n', "::="),
    ],
)
def test_invalid_grammars_are_refused(text: str, what: str) -> None:
    with pytest.raises(GbnfError, match=what):
        GrammarWalk.parse(text)


def test_left_recursion_is_refused_as_llama_cpp_refuses_it() -> None:
    """llama.cpp counts a rule as possibly empty only with a literally empty alternative."""
    with pytest.raises(GbnfError, match="left-recursive"):
        GrammarWalk.parse('root ::= empty root "x" | "y"\nempty ::= "z" |\n')
    with pytest.raises(GbnfError, match="left-recursive"):
        GrammarWalk.parse("root ::= root [a] | [b]\n")
    GrammarWalk.parse('root ::= g* "x"\ng ::= "ab" | c\nc ::= "c" |\n')  # accepted by both


@pytest.mark.parametrize("pattern", ["^(ab|c?)*$", "^(a?b?)*$", "^(a*)+$", "^x(y?)*$"])
def test_a_repeated_group_that_may_match_nothing(pattern: str) -> None:
    """``R ::= G R |`` with ``G`` able to match nothing: the shortest answer is the empty
    repetition (not an endless ``G R``), and the stacks come back to themselves finitely."""
    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": pattern}}}
    schema["required"] = ["s"]
    walk = GrammarWalk.parse(schema_to_gbnf(schema))
    text = walk.shortest(walk.initial())
    assert text is not None
    jsonschema.validate(json.loads(text), schema)
    body = "x" if pattern.startswith("^x") else ""
    for word in ("ab", "c", "abcab", "a", "b", "ba", "aaa", "yy"):
        candidate = '{"s": "' + body + word + '"}'
        try:
            jsonschema.validate(json.loads(candidate), schema)
        except jsonschema.ValidationError:
            continue
        state = feed(walk, candidate[:-2])
        assert walk.shortest(state) == '"}'


def test_stacks_that_multiply_are_refused_not_followed() -> None:
    """Nested optional groups double the live stacks at each level: past MAX_STACKS the walk
    raises instead of taking seconds per token (the budget is then off for that answer)."""
    depth = 14
    text = "root ::= " + "(" * depth + '"a"?' + "){2}" * depth + ' "b"\n'
    assert 2**depth > MAX_STACKS
    walk = GrammarWalk.parse(text)
    with pytest.raises(GbnfError, match="too many parse stacks"):
        state = walk.initial()
        walk.accept(state, b"a")


def test_a_grammar_with_no_finite_answer_needs_infinitely_much() -> None:
    walk = GrammarWalk.parse('root ::= "a" root\n')
    assert walk.needed_bytes(walk.initial()) == INFINITE
    assert walk.shortest(walk.initial()) is None


def test_the_parse_matches_llama_cpp_layout() -> None:
    """Groups and repetitions become generated rules, as llama.cpp numbers them."""
    rules = parse_gbnf('root ::= ("a" | "b")* x\nx ::= [0-9]\n')
    assert rules.root == 0
    kinds = [[kind for kind, _ in rule] for rule in rules.rules]
    # root: ref(repetition) ref(x) END; 1: the group; 2: its repetition; 3: x
    assert kinds[0] == [Type.RULE_REF, Type.RULE_REF, Type.END]
    assert kinds[1] == [Type.CHAR, Type.ALT, Type.CHAR, Type.END]
    assert kinds[2] == [Type.RULE_REF, Type.RULE_REF, Type.ALT, Type.END]
    assert len(rules.rules) == 4


def test_json_object_grammar_closes_open_values() -> None:
    walk = GrammarWalk.parse(JSON_OBJECT_GBNF)
    state = feed(walk, '{"a": [1, {"b": "tex')
    rest = walk.shortest(state)
    assert rest == '"}]}'
    assert json.loads('{"a": [1, {"b": "tex' + rest) == {"a": [1, {"b": "tex"}]}
