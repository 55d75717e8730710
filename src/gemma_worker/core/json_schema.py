"""JSON Schema -> llama.cpp GBNF grammars, refusing every schema feature the grammar cannot enforce.

Used for ``response_format`` (``json_schema`` / ``json_object``) and for tool calls. A schema is
checked and rewritten by :mod:`gemma_worker.core.schema_subset` (patterns by
:mod:`gemma_worker.core.schema_regex`), then converted by llama-cpp-python's ``SchemaConverter``
(``allow_fetch=False``, ``dotall=False``, ``raw_pattern=False``; its literal escaping fixed).

Enforced: ``type`` (one or a list), ``properties``, ``required``, ``additionalProperties``
(``false``; a schema or ``true`` only without ``properties``), ``enum``, ``const``, ``anyOf``,
``oneOf`` (as ``anyOf``: a value matching two branches is not rejected), ``allOf`` (one schema,
or open object schemas with disjoint ``properties``, merged), ``items``, ``prefixItems``,
``minItems``/``maxItems``, ``minLength``/``maxLength``, ``pattern`` (a regex subset), ``format``
(date, time, date-time, uuid), local ``$ref`` into ``$defs``/``definitions``. Ignored annotations:
title, description, default, examples, $schema, $comment, readOnly, writeOnly, deprecated,
discriminator, ``$id`` (root only), ``nullable: false``. Anything else raises
:class:`SchemaError` (e.g. minimum, not, patternProperties, uniqueItems, ``nullable: true``).

The grammar may be stricter than the schema: objects are closed unless ``additionalProperties``
opens them, required properties come first, tuples have exactly their prefix items, ``true`` or
``{}`` allow any value, numbers have at most 16 integer digits, and every value may be followed
by one space. It is looser only for ``oneOf`` (above) and for the date formats, which are checked
for shape: a date's day may be 01-31 in any month.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llama_cpp.llama_grammar import RESERVED_NAMES as _RESERVED
from llama_cpp.llama_grammar import BuiltinRule, SchemaConverter

from gemma_worker.core.gbnf_trie import trie_alternatives
from gemma_worker.core.schema_regex import SchemaError
from gemma_worker.core.schema_subset import ANY_VALUE, Node, Path, SchemaSubset

__all__ = [
    "JSON_OBJECT_GBNF",
    "MAX_PARALLEL_CALLS",
    "SchemaError",
    "ToolSpec",
    "check_schema",
    "schema_to_gbnf",
    "tool_call_gbnf",
]

MAX_PARALLEL_CALLS = 8
MAX_SCHEMA_BYTES = 64 * 1024  # serialized JSON
_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Free text ("auto") may not start with whitespace (anything str.isspace accepts), '{' or '['.
_TEXT_START = (
    r"[^\t\n\x0B\x0C\r\x1C-\x1F \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000{\[]"
)


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool the model may call: its function ``name`` and its arguments' JSON Schema
    (``{"type": "object", "properties": {}}`` for a tool without parameters)."""

    name: str
    parameters: Mapping[str, Any]
    description: str = ""


def _gbnf_literal(text: str) -> str:
    """A GBNF string literal matching exactly ``text``."""
    esc = {"\\": "\\\\", '"': '\\"'}
    return '"' + "".join(esc.get(c, c if c >= " " else f"\\x{ord(c):02X}") for c in text) + '"'


# The shipped ``char`` lets raw control characters (a newline...) into strings: invalid JSON.
# This is it with U+0000-U+001F excluded (same sampling speed).
_HEX = " [0-9a-fA-F]" * 4
_JSON_CHAR = BuiltinRule(r'[^"\\\x00-\x1F] | "\\" (["\\/bfnrt] | "u"' + _HEX + ")", [])


class _Converter(SchemaConverter):
    """The shipped converter with three fixes: string characters exclude raw control characters,
    literals escape backslashes and control characters (a constant or property name containing
    ``"``, ``\\`` or a newline came out mangled), and refs are looked up in the rewritten
    ``$defs`` (no ``resolve_refs`` walk, which would take ``enum``/``const`` data for refs and
    could try to fetch URLs)."""

    def __init__(self, defs: Mapping[str, Any]) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
        )
        self._refs.update({f"#/$defs/{k}": v for k, v in defs.items()})

    def _add_primitive(self, name: str, rule: BuiltinRule) -> str:
        return str(super()._add_primitive(name, _JSON_CHAR if name == "char" else rule))

    def _format_literal(self, literal: str) -> str:
        return _gbnf_literal(literal)

    def _generate_constant_rule(self, value: Any) -> str:
        return _gbnf_literal(json.dumps(value, ensure_ascii=False))

    def visit(self, schema: Mapping[str, Any], name: str) -> str:
        """An ``enum`` becomes one prefix tree of its values' JSON texts rather than one
        alternative per value: llama.cpp checks each candidate token against every live
        alternative, so a long enum's plain alternation costs seconds per sampled token."""
        if set(schema) == {"enum"} and len(schema["enum"]) > 1:
            rule_name = name + "-" if name in _RESERVED else name or "root"
            texts = {json.dumps(v, ensure_ascii=False) for v in schema["enum"]}
            return str(self._add_rule(rule_name, trie_alternatives(texts, _gbnf_literal)))  # type: ignore[no-untyped-call]
        return str(super().visit(schema, name))  # type: ignore[no-untyped-call]

    def rule(self, schema: Mapping[str, Any], name: str, where: str) -> str:
        """Visit rewritten ``schema`` as rule ``name``; return the rule name to use. Whatever
        the converter raises (it asserts, indexes and recurses freely) becomes SchemaError."""
        try:
            return str(self.visit(schema, name))
        except Exception as exc:
            # the converter's own words are Python's (KeyError: 'x'): not for clients
            raise SchemaError(
                "schema", where, "this combination of keywords could not be made a grammar"
            ) from exc

    def grammar(self, *rules: str) -> str:
        """The converter's rules plus ``rules`` (which must define ``root``)."""
        rules_text = self.format_grammar()  # type: ignore[no-untyped-call]
        return "\n".join([rules_text, *rules]) + "\n"


def _document(subset: SchemaSubset, schema: object, base: Path = ()) -> Node:
    """``schema`` checked and rewritten by ``subset`` (as plain JSON data, size-bounded), with
    its left recursion refused."""
    where = ".".join(base)
    schema = dict(schema) if isinstance(schema, Mapping) else schema
    if not isinstance(schema, dict):
        raise SchemaError("schema", where, "the root schema must be a JSON object")
    chunks, size = [], 0
    try:  # a plain JSON copy (string keys, no NaN, no cycles), encoded lazily: shared dicts
        for chunk in json.JSONEncoder(allow_nan=False).iterencode(schema):  # may stand for
            chunks.append(chunk)  # an exponentially large tree
            if (size := size + len(chunk)) > MAX_SCHEMA_BYTES:
                raise SchemaError("schema", where, f"larger than {MAX_SCHEMA_BYTES} bytes")
        doc = json.loads("".join(chunks))
    except SchemaError:
        raise
    except RecursionError:
        raise SchemaError("schema", where, "nested too deeply") from None
    except (TypeError, ValueError):
        raise SchemaError(
            "schema", where, "not JSON data (a NaN or infinite number, a cycle, a non-JSON value)"
        ) from None
    if doc != schema:
        raise SchemaError("schema", where, "not plain JSON data (non-string keys, tuples?)")
    root = subset.document(doc, base)
    _refuse_left_recursion(subset)
    return root


def _left_refs(node: Mapping[str, Any]) -> Iterator[str]:
    """The defs that ``node``'s text may start with."""
    if "$ref" in node:
        yield node["$ref"].rsplit("/", 1)[1]
    for alt in node.get("anyOf", ()):
        yield from _left_refs(alt)


def _refuse_left_recursion(subset: SchemaSubset) -> None:
    """llama.cpp refuses a grammar whose rule can reach itself before any character: a cycle of
    ``$ref``s through ``anyOf`` branches only (``A: {"anyOf": [{"$ref": "#/$defs/A"}, ...]}``)."""
    edges = {k: list(_left_refs(v)) for k, v in subset.defs.items()}
    done: set[str] = set()
    for start, targets in edges.items():
        stack, on_path = [(start, iter(targets))], {start}
        while stack:
            node, it = stack[-1]
            if (nxt := next(it, None)) is None:
                done.add(node)
                on_path.discard(node)
                stack.pop()
            elif nxt in on_path:
                raise SchemaError("$ref", subset.def_paths[nxt], "it recurs before any character")
            elif nxt not in done:
                on_path.add(nxt)
                stack.append((nxt, iter(edges[nxt])))


def _is_object(subset: SchemaSubset, node: Node) -> bool:
    """Whether rewritten ``node`` (following refs) only allows JSON objects."""
    for _ in range(len(subset.defs) + 1):
        if "$ref" not in node:
            return node.get("type") == "object"
        node = subset.defs[node["$ref"].rsplit("/", 1)[1]]
    return False


def check_schema(schema: object) -> None:
    """Raise :class:`SchemaError` unless every keyword in ``schema`` (recursively, definitions
    included) is enforced by the grammar or a pure annotation, every ``$ref`` is local and
    resolves, and the schema is bounded (depth 32, 64 KiB, repetition bounds 1000 each)."""
    _document(SchemaSubset(), schema)


def schema_to_gbnf(schema: Mapping[str, Any]) -> str:
    """The GBNF grammar (start rule ``root``) of the JSON texts that validate against
    ``schema``. Raises :class:`SchemaError` and nothing else."""
    subset = SchemaSubset()
    root = _document(subset, schema)
    converter = _Converter(subset.defs)
    return converter.grammar(f"root ::= {converter.rule(root, 'schema', '')}")


#: Any JSON object (``response_format: {"type": "json_object"}``).
JSON_OBJECT_GBNF = schema_to_gbnf({"type": "object"})


def tool_call_gbnf(tools: Sequence[ToolSpec], *, required: bool, parallel: bool) -> str:
    """The grammar of an answer that calls one of ``tools``, byte for byte
    ``{"name": "<name>", "arguments": <object matching that tool's parameters>}`` (the object
    may be followed by one space), or with ``parallel`` also ``[call, call, ...]`` (1 to 8
    calls, separated by exactly ``", "``): the instructions offer both forms. Unless
    ``required``, the answer may instead be free text, which is empty or starts with neither
    whitespace, ``{`` nor ``[``; either may follow ``[ \\t\\n]*``. Nothing can follow the last
    call. Raises :class:`SchemaError` (``where`` ``tools.<i>...``) for no tools, a name outside
    ``^[a-zA-Z0-9_-]{1,64}$``, a repeated name, or parameters that cannot be enforced or do not
    describe an object."""
    if not tools:
        raise SchemaError("tools", "", "at least one tool is needed")
    subset, calls = SchemaSubset(), []
    for i, tool in enumerate(tools):
        if not (isinstance(tool.name, str) and _NAME_RE.fullmatch(tool.name)):
            raise SchemaError("name", f"tools.{i}", "must match ^[a-zA-Z0-9_-]{1,64}$")
        if any(other.name == tool.name for other in tools[:i]):
            raise SchemaError("name", f"tools.{i}", f"{tool.name!r} is offered twice")
        base = ("tools", str(i), "parameters")
        root = _document(subset, tool.parameters or {"type": "object"}, base)
        root = {"type": "object"} if root == ANY_VALUE else root  # "anything" -> any object
        if not _is_object(subset, root):
            raise SchemaError("type", ".".join(base), "a tool's arguments must be an object")
        calls.append((tool.name, root))
    converter = _Converter(subset.defs)
    rules = []
    for i, (name, root) in enumerate(calls):
        head = _gbnf_literal(f'{{"name": "{name}", "arguments": ')
        args = converter.rule(root, f"tool{i}", f"tools.{i}.parameters")
        rules.append(f'tool-call-{i} ::= {head} {args} "}}"')
    rules.append("tool-call ::= " + " | ".join(f"tool-call-{i}" for i in range(len(calls))))
    more = f'(", " tool-call){{0,{MAX_PARALLEL_CALLS - 1}}}'
    rules.append(
        f'tool-calls ::= tool-call | "[" tool-call {more} "]"'
        if parallel
        else "tool-calls ::= tool-call"
    )
    if required:
        rules.append("root ::= tool-calls")
    else:
        rules.append(r"root ::= [ \t\n]* (tool-calls | free-text)")
        rules.append(f"free-text ::= ({_TEXT_START} .*)?")
    return converter.grammar(*rules)
