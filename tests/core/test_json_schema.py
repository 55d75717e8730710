"""JSON Schema -> GBNF: what converts, what is refused, and that the grammars are real.

"Real" means compiled by llama.cpp against the embedded model's vocabulary and run on sample
texts token by token, and the grammar's verdict compared with the ``jsonschema`` validator's.
"""

from __future__ import annotations

import ctypes
import enum
import json
import socket
from collections.abc import Iterator
from typing import Any, Literal

import jsonschema
import llama_cpp
import pytest
from llama_cpp.llama_grammar import SchemaConverter
from pydantic import BaseModel, Field

from gemma_worker.core.json_schema import (
    JSON_OBJECT_GBNF,
    SchemaError,
    ToolSpec,
    check_schema,
    schema_to_gbnf,
    tool_call_gbnf,
)
from gemma_worker.engine.model_files import resolve_model_path

Vocab = Any  # a ctypes llama_vocab pointer


@pytest.fixture(scope="module")
def vocab() -> Iterator[Vocab]:
    """The embedded model's vocabulary alone (no weights)."""
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(resolve_model_path(None)).encode(), params)
    assert model, "could not load the model's vocabulary"
    yield llama_cpp.llama_model_get_vocab(model)
    llama_cpp.llama_model_free(model)


def _piece(vocab: Vocab, token: int) -> bytes:
    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
    assert n >= 0
    return buf.raw[:n]


def _tokens(vocab: Vocab, text: str) -> list[int]:
    data = text.encode()
    buf = (llama_cpp.llama_token * (len(data) + 16))()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, len(buf), False, False)
    assert n >= 0
    tokens = list(buf[:n])
    assert b"".join(_piece(vocab, t) for t in tokens) == data, f"no round trip: {text!r}"
    return tokens


def _allowed(grammar: Any, token: int) -> bool:
    """Whether the grammar sampler keeps ``token`` (it sets a rejected token's logit to -inf)."""
    data = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 0.0, 0.0))
    candidates = llama_cpp.llama_token_data_array(data, 1, -1, False)
    llama_cpp.llama_sampler_apply(grammar, ctypes.byref(candidates))
    return bool(data[0].logit != float("-inf"))


def compiles(vocab: Vocab, gbnf: str) -> bool:
    grammar = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    if not grammar:
        return False
    llama_cpp.llama_sampler_free(grammar)
    return True


def grammar_accepts(vocab: Vocab, gbnf: str, text: str) -> bool:
    """Whether a model under ``gbnf`` could write exactly ``text`` and then stop. Each token is
    first offered alone to the sampler's ``apply``; only a kept one is ``accept``-ed (accepting a
    rejected token throws inside llama.cpp, which would abort the process)."""
    grammar = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    assert grammar, "the grammar does not compile"
    try:
        for token in _tokens(vocab, text):
            if not _allowed(grammar, token):
                return False
            llama_cpp.llama_sampler_accept(grammar, token)
        return _allowed(grammar, llama_cpp.llama_vocab_eos(vocab))
    finally:
        llama_cpp.llama_sampler_free(grammar)


def valid(schema: dict[str, Any], text: str) -> bool:
    """The reference verdict: ``text`` is JSON and validates against ``schema``."""
    try:
        instance = json.loads(text)
    except ValueError:
        return False
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER  # date and uuid are checked
    return bool(jsonschema.Draft202012Validator(schema, format_checker=checker).is_valid(instance))


def assert_verdicts(vocab: Vocab, schema: dict[str, Any], good: list[str], bad: list[str]) -> None:
    """The grammar accepts every ``good`` text and rejects every ``bad`` one, and the reference
    validator agrees (so the samples mean what they claim)."""
    gbnf = schema_to_gbnf(schema)
    for text in good:
        assert valid(schema, text), text
        assert grammar_accepts(vocab, gbnf, text), text
    for text in bad:
        assert not grammar_accepts(vocab, gbnf, text), text


# --- pydantic -----------------------------------------------------------------------------------


class Color(enum.StrEnum):
    RED = "red"
    GREEN = "green"


class Address(BaseModel):
    street: str
    zip_code: str = Field(pattern=r"^\d{5}$")


class Node(BaseModel):
    value: int
    children: list[Node] = []


class Person(BaseModel):
    name: str = Field(max_length=20, description="full name")
    color: Color
    tags: list[str]
    home: Address = Field(description="where they live")
    kind: Literal["person"]
    tree: Node
    nickname: str | None = None
    work: Address | None = None


def _person(**changes: Any) -> str:
    data: dict[str, Any] = {
        "name": "Ada",
        "color": "red",
        "tags": ["x", "y"],
        "home": {"street": "Main St", "zip_code": "12345"},
        "kind": "person",
        "tree": {"value": 1, "children": [{"value": 2, "children": []}]},
        "nickname": None,
        "work": {"street": "Side St", "zip_code": "54321"},
    }
    data.update(changes)
    return json.dumps({k: v for k, v in data.items() if v != "-"})


PERSON_GOOD = [
    _person(),
    _person(nickname="A", work=None),
    _person(nickname="-", work="-"),
    Person.model_validate_json(_person()).model_dump_json(),  # compact, no spaces
]
PERSON_BAD = [
    _person(color="blue"),
    _person(home={"street": "Main St", "zip_code": "1234x"}),
    _person(name="x" * 21),
    _person(kind="robot"),
    _person(tags="x"),
    _person(home="-"),
    _person(tree={"value": 1.5}),
    _person(extra=1),
    _person(home=None),
]


def test_a_pydantic_model_becomes_a_grammar_that_enforces_it(vocab: Vocab) -> None:
    schema = Person.model_json_schema()
    assert {"$defs", "$ref", "anyOf", "enum", "const", "pattern"} <= set(
        json.dumps(schema).split('"')
    )
    check_schema(schema)
    assert_verdicts(vocab, schema, PERSON_GOOD, PERSON_BAD)


def test_openai_strict_schemas_of_pydantic_models_convert(vocab: Vocab) -> None:
    strict = pytest.importorskip("openai.lib._pydantic").to_strict_json_schema(Person)
    assert strict["additionalProperties"] is False
    assert_verdicts(vocab, strict, PERSON_GOOD[:2], [*PERSON_BAD, _person(nickname="-")])


def test_json_object_grammar_is_any_object(vocab: Vocab) -> None:
    assert grammar_accepts(vocab, JSON_OBJECT_GBNF, '{"a": [1, {"b": null}], "c": "d\\n"}')
    assert grammar_accepts(vocab, JSON_OBJECT_GBNF, "{}")
    for text in ("[1]", '"x"', '{"a":}', "{} {}", ""):
        assert not grammar_accepts(vocab, JSON_OBJECT_GBNF, text), text


# --- refused ------------------------------------------------------------------------------------

REFUSED: list[tuple[str, object]] = [
    ("minimum", {"type": "integer", "minimum": 0}),
    ("maximum", {"type": "number", "maximum": 1}),
    ("exclusiveMinimum", {"type": "number", "exclusiveMinimum": 0}),
    ("exclusiveMaximum", {"type": "number", "exclusiveMaximum": 0}),
    ("multipleOf", {"type": "integer", "multipleOf": 2}),
    ("not", {"not": {"type": "string"}}),
    ("if", {"if": {"type": "string"}, "then": {"maxLength": 2}}),
    ("then", {"type": "string", "then": {"maxLength": 2}}),
    ("else", {"type": "string", "else": {"maxLength": 2}}),
    ("patternProperties", {"type": "object", "patternProperties": {"^x": {}}}),
    ("propertyNames", {"type": "object", "propertyNames": {"maxLength": 3}}),
    ("dependentRequired", {"properties": {"a": {}}, "dependentRequired": {"a": ["b"]}}),
    ("dependentSchemas", {"properties": {"a": {}}, "dependentSchemas": {"a": {}}}),
    ("uniqueItems", {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}),
    ("contains", {"type": "array", "contains": {"type": "integer"}}),
    ("minProperties", {"type": "object", "minProperties": 1}),
    ("maxProperties", {"type": "object", "maxProperties": 1}),
    ("unevaluatedProperties", {"properties": {}, "unevaluatedProperties": False}),
    ("format", {"type": "string", "format": "email"}),
    ("format", {"type": "integer", "format": "int32"}),
    ("frobnicate", {"type": "string", "frobnicate": 1}),
    ("nullable", {"type": "string", "nullable": True}),
    ("$id", {"$id": "https://example.com/nested", "type": "string"}),
    # keywords the converter would silently drop next to another one
    ("maxLength", {"type": "string", "pattern": "^a+$", "maxLength": 3}),
    ("maxLength", {"type": ["string", "null"], "maxLength": 3}),
    ("maxLength", {"type": "string", "format": "date", "maxLength": 3}),
    ("type", {"type": "object", "anyOf": [{"properties": {}}]}),
    ("oneOf", {"anyOf": [{"type": "string"}], "oneOf": [{"type": "integer"}]}),
    ("type", {"$ref": "#/$defs/A", "type": "object"}),
    ("minItems", {"type": "array", "minItems": 2, "prefixItems": [{}]}),
    ("maxItems", {"type": "array", "maxItems": 1, "prefixItems": [{}, {}]}),
    ("items", {"prefixItems": [{}], "items": {"type": "string"}}),
    (
        "additionalProperties",
        {"properties": {"a": {}}, "additionalProperties": {"type": "integer"}},
    ),
    ("required", {"type": "object", "required": ["a"]}),
    ("required", {"properties": {"a": {}}, "required": ["b"]}),
    ("type", {"type": "integer", "enum": [1, "a"]}),
    ("type", {"type": "uuid"}),  # the converter would accept its internal rule names as types
    ("const", {"const": "a", "enum": ["b"]}),
    ("enum", {"enum": []}),
    ("anyOf", {"anyOf": []}),
    ("maxLength", {"type": "string", "maxLength": 5000}),
    ("minItems", {"type": "array", "minItems": -1}),
    ("minLength", {"type": "string", "minLength": 3, "maxLength": 2}),
    ("schema", False),
    ("schema", 1),
    ("allOf", {"allOf": [{"type": "string"}, {"type": "string"}]}),
    ("allOf", {"allOf": [{"properties": {"a": {}}}, {"properties": {"a": {}}}]}),
    ("allOf", {"allOf": [{"properties": {}, "additionalProperties": False}, {"properties": {}}]}),
    ("pattern", {"type": "string", "pattern": "^(?=a)a$"}),
]


@pytest.mark.parametrize(
    ("keyword", "sub"), REFUSED, ids=[f"{k}-{i}" for i, (k, _) in enumerate(REFUSED)]
)
def test_a_keyword_that_cannot_be_enforced_is_refused_by_name(keyword: str, sub: object) -> None:
    schema = {"type": "object", "properties": {"x": sub}, "$defs": {"A": {}}}
    for call in (check_schema, schema_to_gbnf):
        with pytest.raises(SchemaError) as caught:
            call(schema)
        err = caught.value
        assert (err.keyword, err.where) == (keyword, "properties.x")
        assert err.message == f"'{keyword}' (at properties.x) cannot be enforced"
        assert str(err).startswith(err.message)


def test_refusal_inside_definitions_names_their_path() -> None:
    schema = {"$defs": {"Age": {"type": "integer", "minimum": 0}}, "type": "object"}
    with pytest.raises(SchemaError) as caught:
        check_schema(schema)  # even a definition nothing refers to is checked
    assert (caught.value.keyword, caught.value.where) == ("minimum", "$defs.Age")
    assert str(caught.value).startswith("'minimum' (at $defs.Age) cannot be enforced")


def test_property_names_and_values_are_data_not_keywords(vocab: Vocab) -> None:
    schema = {
        "type": "object",
        "properties": {
            "minimum": {"type": "integer"},
            "properties": {"type": "string"},
            "$ref": {"enum": [{"$ref": "https://example.com/x"}, {"not": 1}]},
            "if": {"const": {"minimum": 1, "$ref": "#/nowhere"}},
        },
        "required": ["minimum", "properties", "$ref"],
        "default": {"$ref": "https://example.com/evil"},
        "examples": [{"not": {}}],
        "title": "T",
    }
    head = '{"minimum": 3, "properties": "p", "$ref": '
    good = [
        head + '{"$ref": "https://example.com/x"}}',
        head + '{"not": 1}, "if": {"minimum": 1, "$ref": "#/nowhere"}}',
    ]
    bad = [head + '{"not": 2}}', '{"minimum": 3}', head + '{"not": 1}, "if": {"minimum": 1}}']
    assert_verdicts(vocab, schema, good, bad)


# --- references and limits ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref",
    ["https://example.com/schema.json", "other.json#/$defs/A", "#anchor", "#/$defs/Missing", 7],
)
def test_remote_anchored_and_dangling_refs_are_refused(
    ref: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args: object) -> None:
        raise AssertionError("tried to fetch a schema")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    schema = {"type": "object", "properties": {"x": {"$ref": ref}}, "$defs": {"A": {}}}
    with pytest.raises(SchemaError) as caught:
        schema_to_gbnf(schema)
    assert (caught.value.keyword, caught.value.where) == ("$ref", "properties.x")


def test_refs_are_json_pointers_and_cannot_be_confused_with_rule_names(vocab: Vocab) -> None:
    # The bare converter binds a ref to any rule that already has the def's name: "child" to
    # the property rule "Node" (at the root), "text" to the primitive "string", "other" to
    # "$defs/Node" (same last segment).
    schema = {
        "type": "object",
        "properties": {
            "Node": {"type": "string", "maxLength": 2},
            "child": {"$ref": "#/$defs/Node"},
            "text": {"$ref": "#/$defs/string"},
            "other": {"$ref": "#/definitions/Node"},
            "slash": {"$ref": "#/$defs/a~1b"},
            "space": {"$ref": "#/$defs/My%20Model"},
        },
        "required": ["Node", "child", "text", "other", "slash", "space"],
        "$defs": {
            "Node": {"type": "object", "properties": {"v": {"type": "integer"}}, "required": ["v"]},
            "string": {"enum": ["s"]},
            "a/b": {"type": "boolean"},
            "My Model": {"type": "null"},
        },
        "definitions": {"Node": {"type": "integer"}},
    }
    base = '"Node": "ab", "child": {"v": 1}, "text": "s", "other": 5, "slash": true, "space": null'
    good = ["{" + base + "}"]
    bad = [
        "{" + base.replace('{"v": 1}', '"ab"') + "}",
        "{" + base.replace('"text": "s"', '"text": "t"') + "}",
        "{" + base.replace('"other": 5', '"other": {"v": 1}') + "}",
    ]
    assert_verdicts(vocab, schema, good, bad)


def test_recursive_definitions_work_but_left_recursion_is_refused(vocab: Vocab) -> None:
    schema = {
        "type": "object",
        "properties": {"v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#"}}},
        "required": ["v"],
    }
    good = ['{"v": 1, "kids": [{"v": 2}, {"v": 3, "kids": []}]}']
    assert_verdicts(vocab, schema, good, ['{"v": 1, "kids": [{"w": 2}]}'])
    looped = {
        "$defs": {"A": {"anyOf": [{"$ref": "#/$defs/A"}, {"type": "null"}]}},
        "$ref": "#/$defs/A",
    }
    with pytest.raises(SchemaError) as caught:
        schema_to_gbnf(looped)
    assert (caught.value.keyword, caught.value.where) == ("$ref", "$defs.A")


def test_depth_and_size_are_bounded() -> None:
    def nested(levels: int) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string"}
        for _ in range(levels):
            schema = {"type": "array", "items": schema}
        return schema

    check_schema(nested(32))
    with pytest.raises(SchemaError) as caught:
        check_schema(nested(33))
    assert caught.value.keyword == "schema"
    assert "deeper than 32" in str(caught.value)
    with pytest.raises(SchemaError, match="65536"):
        check_schema({"enum": ["x" * 70_000]})
    many = {
        "type": "object",
        "properties": {f"p{i}": {"maxLength": 1000, "type": "string"} for i in range(101)},
    }
    with pytest.raises(SchemaError, match="too large a grammar"):
        check_schema(many)
    optional = {"type": "object", "properties": {f"p{i}": {} for i in range(448)}}
    with pytest.raises(SchemaError, match="too large a grammar"):  # the converter is quadratic
        check_schema(optional)
    optional["required"] = ["p0"]
    check_schema(optional)
    shared: dict[str, Any] = {"type": "string"}
    for _ in range(64):  # a DAG standing for 2**64 nodes
        shared = {"type": "object", "properties": {"a": shared, "b": shared}}
    with pytest.raises(SchemaError, match="65536"):
        check_schema(shared)
    cyclic: dict[str, Any] = {"type": "object"}
    cyclic["properties"] = {"self": cyclic}
    odd: object
    for odd in (cyclic, {"const": float("nan")}, {"properties": {1: {}}}, {"enum": [(1, 2)]}):
        with pytest.raises(SchemaError, match="JSON"):
            check_schema(odd)


def test_the_largest_allowed_bounds_still_compile(vocab: Vocab) -> None:
    schema = {
        "type": "object",
        "properties": {
            "s": {"type": "string", "minLength": 1, "maxLength": 1000},
            "a": {"type": "array", "items": {"type": "integer"}, "maxItems": 1000},
            "p": {"type": "string", "pattern": "^(a{0,497}(b)?)?$"},
        },
    }
    assert compiles(vocab, schema_to_gbnf(schema))


@pytest.mark.parametrize(
    "failure", [AssertionError("x"), ValueError("x"), KeyError("x"), RecursionError(), TypeError()]
)
def test_converter_failures_become_schema_errors(
    failure: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: object, schema: object, name: str) -> str:
        raise failure

    monkeypatch.setattr(SchemaConverter, "visit", broken)
    with pytest.raises(SchemaError) as caught:
        schema_to_gbnf({"type": "string"})
    assert caught.value.__cause__ is failure
    assert caught.value.keyword == "schema"
    with pytest.raises(SchemaError):
        tool_call_gbnf([ToolSpec("f", {"type": "object"})], required=True, parallel=False)


# --- what the grammar enforces (and where it is stricter than the schema) -----------------------


def _prop(sub: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {"x": sub}, "required": ["x"]}


def _x(value: str) -> str:
    return '{"x": ' + value + "}"


def test_constants_with_quotes_backslashes_and_non_ascii_are_exact(vocab: Vocab) -> None:
    value = 'a"b\\c\nd é😀'  # the bare converter mangles this into a grammar for other text
    good = [_x(json.dumps(value, ensure_ascii=False))]
    bad = [_x(json.dumps(value).replace("\\n", "\n")), _x('"a\\"b\\\\c"'), _x('"a"b\\c"')]
    assert_verdicts(vocab, _prop({"const": value}), good, bad)
    keys = {"type": "object", "properties": {'q"\\': {"enum": [1, "two", None, [3]]}}}
    assert_verdicts(vocab, keys, ['{"q\\"\\\\": [3]}', '{"q\\"\\\\": null}', "{}"], ['{"q": 1}'])


def test_strings_never_hold_raw_control_characters(vocab: Vocab) -> None:
    # The converter's own "char" rule lets a raw newline into a string: invalid JSON.
    free_keys = [JSON_OBJECT_GBNF, schema_to_gbnf({"additionalProperties": {"type": "string"}})]
    string_x = [schema_to_gbnf(_prop(sub)) for sub in ({"type": "string"}, {"maxLength": 9}, {})]
    for gbnf in free_keys + string_x:
        assert grammar_accepts(vocab, gbnf, '{"x": "a\\nb\\u0001"}')
        for raw in ("\n", "\t", "\x01", "\x1f"):
            assert not grammar_accepts(vocab, gbnf, '{"x": "a' + raw + 'b"}'), raw
    for gbnf in free_keys:
        assert grammar_accepts(vocab, gbnf, '{"k\\t": "v"}')
        assert not grammar_accepts(vocab, gbnf, '{"k\t": "v"}')


def test_empty_true_and_annotation_only_schemas_allow_any_value(vocab: Vocab) -> None:
    # the bare converter allows only objects for {} and fails on {"title": ...}
    for sub in ({}, {"title": "anything", "description": "d"}):
        good = [_x(v) for v in ("1", '"s"', "[1, true]", '{"a": null}', "null", "-2.5e3")]
        assert_verdicts(vocab, _prop(sub), good, [_x(""), _x("nul")])
    schema = {"type": "object", "properties": {"x": True}, "required": ["x"]}
    assert_verdicts(vocab, schema, [_x("[]")], [])


def test_objects_are_closed_unless_additional_properties_opens_them(vocab: Vocab) -> None:
    closed = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert valid(closed, '{"a": 1, "b": 2}')  # JSON Schema allows it; the grammar is stricter
    assert_verdicts(vocab, closed, ['{"a": 1}', "{}"], ['{"a": 1, "b": 2}', '{"a": "1"}'])
    mapping = {"type": "object", "additionalProperties": {"type": "integer"}}
    assert_verdicts(vocab, mapping, ['{"k": 1, "l": 2}', "{}"], ['{"k": "1"}'])
    assert_verdicts(vocab, {"type": "object"}, ['{"k": [1]}'], ["[]"])


def test_lengths_items_tuples_and_type_lists(vocab: Vocab) -> None:
    assert_verdicts(
        vocab,
        _prop({"type": "string", "minLength": 2, "maxLength": 3}),
        [_x('"ab"'), _x('"abc"'), _x('"a\\n"')],
        [_x('"a"'), _x('"abcd"'), _x("12")],
    )
    assert_verdicts(
        vocab,
        _prop({"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 2}),
        [_x("[true]"), _x("[true, false]")],
        [_x("[]"), _x("[true, true, true]"), _x("[1]")],
    )
    assert_verdicts(
        vocab,
        _prop({"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]}),
        [_x('["a", 1]')],
        [_x('["a"]'), _x('[1, "a"]'), _x('["a", 1, 2]')],
    )
    assert_verdicts(
        vocab,
        _prop({"type": ["string", "null"], "enum": ["a", None]}),
        [_x('"a"'), _x("null")],
        [_x('"b"'), _x("1")],
    )
    assert_verdicts(
        vocab, _prop({"type": ["integer", "boolean"]}), [_x("3"), _x("false")], [_x("3.5")]
    )


def test_formats(vocab: Vocab) -> None:
    cases = {
        "date": ('"2024-02-29"', '"2024-2-29"'),
        "time": ('"23:59:59Z"', '"24:00:00Z"'),
        "date-time": ('"2024-02-29T12:00:00.123+02:00"', '"2024-02-29 12:00:00Z"'),
        "uuid": ('"123e4567-e89b-12d3-a456-426614174000"', '"123e4567e89b12d3a456426614174000"'),
    }
    for fmt, (good, bad) in cases.items():
        schema = _prop({"type": "string", "format": fmt})
        assert_verdicts(vocab, schema, [_x(good)], [_x(bad), _x('"x"')])
    # Known limit of the converter's date rule: any month has days 01-31.
    schema = _prop({"type": "string", "format": "date"})
    assert not valid(schema, _x('"2024-02-30"'))
    assert grammar_accepts(vocab, schema_to_gbnf(schema), _x('"2024-02-30"'))


def test_all_of_one_part_or_merged_open_objects(vocab: Vocab) -> None:
    defs = {
        "A": {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
        "Color": {"enum": ["red", "green"]},
    }
    merged = {
        "allOf": [
            {"$ref": "#/$defs/A"},
            {"properties": {"b": {"type": "integer"}}, "required": ["b"]},
        ],
        "$defs": defs,
    }
    assert_verdicts(
        vocab, merged, ['{"a": "x", "b": 1}'], ['{"a": "x"}', '{"a": "x", "b": 1, "c": 2}']
    )
    single = _prop({"allOf": [{"$ref": "#/$defs/Color"}], "description": "pydantic v1 style"})
    assert_verdicts(vocab, {**single, "$defs": defs}, [_x('"red"')], [_x('"blue"')])


def test_one_of_is_enforced_as_any_of(vocab: Vocab) -> None:
    schema = _prop({"oneOf": [{"type": "integer"}, {"type": "number"}]})
    assert not valid(schema, _x("1"))  # matches both branches: JSON Schema says no
    assert grammar_accepts(vocab, schema_to_gbnf(schema), _x("1"))  # the grammar cannot tell
    assert_verdicts(vocab, schema, [_x("1.5")], [_x('"1"')])


# --- patterns -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "good", "bad"),
    [
        (r"^\d{3}\.\d$", ["123.4"], ["123x4", "1234", "12.34"]),
        ("^a|b$", ["a", "b"], ["ab", ""]),  # bare converter: a top-level | escapes the quotes
        ("ab", ["ab", "xxabyy", "a ab"], ["a b", "ba"]),  # unanchored: search semantics
        ("^(?:x|yz)+-[A-F0-9_]{2,3}$", ["xyz-A0", "x-F_F"], ["x-a0", "-A0", "x-A"]),
        (r"^[^x]+$", ["abc", "é"], ["x", "ax"]),
        (r"^\w\s\w$", ["a b", "_ 9"], ["ab", "a-b"]),
        (r"^a]}$", ["a]}"], ["a]"]),  # a stray ] or } makes the bare converter loop forever
        (r"^[\-.]\$\x41\u00e9*?$", ["-$A", ".$Aéé"], ["-$a"]),
    ],
)
def test_patterns(vocab: Vocab, pattern: str, good: list[str], bad: list[str]) -> None:
    schema = _prop({"type": "string", "pattern": pattern})
    assert_verdicts(vocab, schema, [_x(json.dumps(s, ensure_ascii=False)) for s in good], [])
    gbnf = schema_to_gbnf(schema)
    for text in bad:
        assert not grammar_accepts(vocab, gbnf, _x(json.dumps(text, ensure_ascii=False))), text


@pytest.mark.parametrize("pattern", [r"^.+$", r"^[^a]+$", r"^[ -~]+$", "b"])
def test_patterns_never_produce_invalid_json(vocab: Vocab, pattern: str) -> None:
    gbnf = schema_to_gbnf(_prop({"type": "string", "pattern": pattern}))
    assert grammar_accepts(vocab, gbnf, _x('"b"'))
    for broken in ('"b"b"', '"b\\"', '"b\nb"', '"b\\b"'):  # raw quote, backslash, newline
        assert not grammar_accepts(vocab, gbnf, _x(broken)), broken


@pytest.mark.parametrize(
    "pattern",
    [
        "^(?=a)a$",
        "^(?<n>a)$",
        r"^(a)\1$",
        r"^\bword$",
        r"^\D$",
        r"^\S+$",
        "^a{2000}$",
        "^a{0,400}b{0,400}$",
        "^a**$",
        "^a*+$",
        "^[a-$",
        "^(a$",
        "^a)$",
        "^a$b$",
        "^[]$",
        '^"$',
        r"^\\$",
        "^a|$",
        "^{1}$",
        "^a{1$",
        "^[z-a]$",
        5,
        "a" * 501,
    ],
)
def test_unsupported_patterns_are_refused(pattern: object) -> None:
    with pytest.raises(SchemaError) as caught:
        check_schema(_prop({"type": "string", "pattern": pattern}))
    assert (caught.value.keyword, caught.value.where) == ("pattern", "properties.x")


# --- tool calls ---------------------------------------------------------------------------------

WEATHER = ToolSpec(
    "get_weather",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
ADD = ToolSpec(
    "add-2",
    {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
        "additionalProperties": False,
    },
)
CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
CALL_ADD = '{"name": "add-2", "arguments": {"a": 1, "b": 2}}'
WRONG_CALLS = [
    '{"name": "add-2", "arguments": {"city": "Paris"}}',  # another tool's arguments
    '{"name": "nope", "arguments": {"city": "Paris"}}',
    '{"name":"get_weather","arguments":{"city":"Paris"}}',  # the format is fixed, spaces included
    '{"arguments": {"city": "Paris"}, "name": "get_weather"}',
    '{"name": "get_weather", "arguments": {"city": "Paris"}}  ',
    CALL + "\nDone.",
    '{"name": "get_weather", "arguments": "Paris"}',
]


def test_the_call_format_is_fixed_literals() -> None:
    gbnf = tool_call_gbnf([WEATHER, ADD], required=False, parallel=True)
    assert '"{\\"name\\": \\"get_weather\\", \\"arguments\\": "' in gbnf
    assert '"{\\"name\\": \\"add-2\\", \\"arguments\\": "' in gbnf
    assert 'tool-calls ::= tool-call | "[" tool-call (", " tool-call){0,7} "]"' in gbnf
    assert "root ::= [ \\t\\n]* (tool-calls | free-text)" in gbnf
    required = tool_call_gbnf([WEATHER], required=True, parallel=False)
    assert "root ::= tool-calls\n" in required
    assert "tool-calls ::= tool-call\n" in required
    assert "free-text" not in required


def test_required_single_call(vocab: Vocab) -> None:
    gbnf = tool_call_gbnf([WEATHER, ADD], required=True, parallel=False)
    assert grammar_accepts(vocab, gbnf, CALL)
    assert grammar_accepts(vocab, gbnf, CALL_ADD)
    # the converter lets one space follow any value, the arguments object included
    assert grammar_accepts(vocab, gbnf, '{"name": "add-2", "arguments": {"a": 1, "b": 2} }')
    for text in [*WRONG_CALLS, " " + CALL, "Hello", "", f"[{CALL}]", f"{CALL}, {CALL}"]:
        assert not grammar_accepts(vocab, gbnf, text), text


def test_auto_allows_text_or_a_call(vocab: Vocab) -> None:
    gbnf = tool_call_gbnf([WEATHER, ADD], required=False, parallel=False)
    for text in [CALL, " \n\t" + CALL_ADD, "Hello!", "", "  \n", "It is {sunny} [really]", "é{"]:
        assert grammar_accepts(vocab, gbnf, text), text
    for text in [*WRONG_CALLS, "{oops}", "[1]", " {x", f"[{CALL}]"]:
        assert not grammar_accepts(vocab, gbnf, text), text


def test_auto_text_never_starts_with_whitespace_a_parser_would_skip(vocab: Vocab) -> None:
    gbnf = tool_call_gbnf([WEATHER], required=False, parallel=False)
    spaces = [chr(c) for c in range(0x3001) if chr(c).isspace()]
    assert len(spaces) == 29
    for space in spaces:  # after skipping it, a parser must not find a non-call '{'
        expected = space in " \t\n"  # leading whitespace the grammar allows before a call
        assert grammar_accepts(vocab, gbnf, space + CALL) is expected, hex(ord(space))
        assert not grammar_accepts(vocab, gbnf, space + "{oops}"), hex(ord(space))


def test_parallel_calls(vocab: Vocab) -> None:
    gbnf = tool_call_gbnf([WEATHER, ADD], required=True, parallel=True)
    for n in (1, 2, 8):
        text = "[" + ", ".join(([CALL, CALL_ADD] * 4)[:n]) + "]"
        assert grammar_accepts(vocab, gbnf, text), text
    # The instructions offer one object or an array: both are accepted.
    assert grammar_accepts(vocab, gbnf, CALL)
    nine = "[" + ", ".join([CALL] * 9) + "]"
    for text in [nine, "[]", f"[{CALL},{CALL}]", f"[{CALL}, ]", f"[{CALL}] ", f"[ {CALL}]"]:
        assert not grammar_accepts(vocab, gbnf, text), text
    auto = tool_call_gbnf([WEATHER], required=False, parallel=True)
    assert grammar_accepts(vocab, auto, f"\n[{CALL}, {CALL}]")
    assert grammar_accepts(vocab, auto, CALL)
    assert grammar_accepts(vocab, auto, "No call needed.")


def test_tool_arguments_follow_each_schema(vocab: Vocab) -> None:
    anything = ToolSpec("anything", {})
    nested = ToolSpec("nested", {"$ref": "#/$defs/P", "$defs": {"P": ADD.parameters}})
    gbnf = tool_call_gbnf([anything, nested], required=True, parallel=False)
    assert grammar_accepts(vocab, gbnf, '{"name": "anything", "arguments": {"x": [1]}}')
    assert grammar_accepts(vocab, gbnf, '{"name": "nested", "arguments": {"a": 1, "b": 2}}')
    assert not grammar_accepts(vocab, gbnf, '{"name": "anything", "arguments": [1]}')
    assert not grammar_accepts(vocab, gbnf, '{"name": "nested", "arguments": {"a": 1}}')


@pytest.mark.parametrize(
    ("tools", "keyword", "where"),
    [
        ([], "tools", ""),
        ([ToolSpec("get weather", {})], "name", "tools.0"),
        ([ToolSpec("", {})], "name", "tools.0"),
        ([ToolSpec("x" * 65, {})], "name", "tools.0"),
        ([ToolSpec("wetter_ä", {})], "name", "tools.0"),
        ([ToolSpec('a"b', {})], "name", "tools.0"),
        ([WEATHER, ADD, WEATHER], "name", "tools.2"),
        ([WEATHER, ToolSpec("s", {"type": "string"})], "type", "tools.1.parameters"),
        ([WEATHER, ToolSpec("s", {"anyOf": [{"type": "object"}]})], "type", "tools.1.parameters"),
        (
            [
                ToolSpec(
                    "f", {"type": "object", "properties": {"n": {"type": "integer", "maximum": 3}}}
                )
            ],
            "maximum",
            "tools.0.parameters.properties.n",
        ),
    ],
)
def test_bad_tools_are_refused(tools: list[ToolSpec], keyword: str, where: str) -> None:
    for required in (True, False):
        with pytest.raises(SchemaError) as caught:
            tool_call_gbnf(tools, required=required, parallel=False)
        assert (caught.value.keyword, caught.value.where) == (keyword, where)
