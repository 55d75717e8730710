"""Checking a JSON Schema and rewriting it into what llama-cpp-python's converter maps exactly.

The converter's ``visit`` picks ONE branch per schema node (``$ref``, ``oneOf``/``anyOf``, type
list, ``const``, ``enum``, object, ``allOf``, array, ``pattern``, ``format``, lengths, primitive)
and silently ignores every keyword that branch does not read. So each node must fit one branch
exactly, or :class:`SchemaError` names the first keyword that would be ignored. The rewrite also
avoids the converter's surprises: ``{}``/``true`` become "any value" (the converter allows only
objects for ``{}`` and asserts on ``{"title": ...}``), ``const`` becomes ``enum``, patterns are
translated (:mod:`gemma_worker.core.schema_regex`), and every ``$ref`` points at a unique
``#/$defs/ref-N-...`` (the converter takes a def for any rule that already has its name).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import partial
from typing import Any
from urllib.parse import unquote

from llama_cpp.llama_grammar import STRING_FORMAT_RULES

from gemma_worker.core.schema_regex import SchemaError, translate

MAX_DEPTH = 32  # schema nesting levels
MAX_REPEAT = 1000  # a minLength/maxLength/minItems/maxItems value (llama.cpp fails at ~1500)
MAX_REPEAT_TOTAL = 100_000  # length/item/pattern bounds + optional properties² / 2, all together

ANNOTATIONS = frozenset(
    "title description default examples $schema $comment readOnly writeOnly deprecated "  # noqa: SIM905
    "discriminator $defs definitions $id nullable".split()
)
REFUSED = frozenset(
    "minimum maximum exclusiveMinimum exclusiveMaximum multipleOf not if then else "  # noqa: SIM905
    "patternProperties propertyNames dependentRequired dependentSchemas dependencies uniqueItems "
    "contains minContains maxContains minProperties maxProperties unevaluatedProperties "
    "unevaluatedItems additionalItems".split()
)
TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
ANY_VALUE: dict[str, Any] = {"type": list(TYPES)}
FORMATS = frozenset(
    {"uuid", *(k.removesuffix("-string") for k in STRING_FORMAT_RULES if k.endswith("-string"))}
)
_OBJECT = frozenset({"properties", "required", "additionalProperties"})
_ARRAY = frozenset({"items", "prefixItems", "minItems", "maxItems"})
_STRING = frozenset({"pattern", "format", "minLength", "maxLength"})
_KNOWN = _OBJECT | _ARRAY | _STRING | {"$ref", "anyOf", "oneOf", "allOf", "const", "enum", "type"}

Path = tuple[str, ...]
Node = dict[str, Any]
_canon = partial(json.dumps, sort_keys=True)  # JSON equality: 1 is not true


def _is_type(value: Any, types: list[Any]) -> bool:
    """Whether JSON ``value`` is an instance of one of the JSON Schema ``types``."""
    if isinstance(value, bool):
        return "boolean" in types
    if isinstance(value, int | float):
        integer = isinstance(value, int) or value.is_integer()
        return "number" in types or ("integer" in types and integer)
    kinds = {str: "string", type(None): "null", dict: "object", list: "array"}
    return kinds.get(type(value)) in types


def _strip(schema: Mapping[str, Any]) -> Node:
    return {k: v for k, v in schema.items() if k not in ANNOTATIONS}


def _opt(key: str, value: int | None) -> Node:
    return {} if value is None else {key: value}


def _check_required(props: Mapping[str, Any], required: object, where: str) -> None:
    names = required if isinstance(required, list) else [None]
    if not all(isinstance(r, str) for r in names) or not set(names) <= props.keys():
        raise SchemaError("required", where, "must list names from 'properties'")


class SchemaSubset:
    """Checks schema documents; the rewritten definitions of all of them collect in :attr:`defs`
    under unique ids (so several documents can share one converter)."""

    def __init__(self) -> None:
        self.defs: dict[str, Node] = {}
        self.def_paths: dict[str, str] = {}  # def id -> its dotted path, for messages
        self._budget = MAX_REPEAT_TOTAL
        self._doc: Node = {}
        self._base: Path = ()
        self._ids: dict[Path, str] = {}
        self._todo: list[tuple[str, Any, Path]] = []

    def document(self, doc: Node, base: Path = ()) -> Node:
        """Check one whole schema, plain JSON data, and return it rewritten; raises
        :class:`SchemaError`. ``base`` prefixes every ``where`` (e.g. ``("tools", "0", ...)``)."""
        self._doc, self._base, self._ids, self._todo = doc, base, {}, []
        root = self._node(doc, (), 0)
        while self._todo:
            ident, target, path = self._todo.pop()
            self.defs[ident] = self._node(target, path, 0)
        return root

    def _path(self, path: Path) -> str:
        return ".".join(self._base + path)

    def _node(self, schema: object, path: Path, depth: int) -> Node:
        where = self._path(path)
        if depth > MAX_DEPTH:
            raise SchemaError("schema", where, f"nested deeper than {MAX_DEPTH} levels")
        if schema is True:
            return dict(ANY_VALUE)
        if not isinstance(schema, dict):
            raise SchemaError("schema", where, "a schema must be an object or true")
        for key in ("$defs", "definitions"):
            if not isinstance(defs := schema.get(key, {}), dict):
                raise SchemaError(key, where, "must be an object")
            for name in defs:
                self._enqueue((*path, key, name), where)
        if "$id" in schema and path:
            raise SchemaError("$id", where, "allowed only at the root")
        if schema.get("nullable", False) is not False:
            raise SchemaError("nullable", where, 'use anyOf with {"type": "null"}')
        kw, t = _strip(schema), schema.get("type")
        types = t if isinstance(t, list) else [t]
        if "type" in kw and (not types or any(x not in TYPES for x in types)):
            raise SchemaError("type", where, f"not a JSON type or a list of them: {t!r}"[:200])
        if "$ref" in kw:
            self._only(kw, {"$ref"}, where, "'$ref'")
            return {"$ref": "#/$defs/" + self._enqueue(self._pointer(kw["$ref"], where), where)}
        for key in ("anyOf", "oneOf"):
            if key in kw:
                self._only(kw, {key}, where, f"'{key}'")
                alts = enumerate(self._list(kw, key, where))
                return {"anyOf": [self._node(s, (*path, key, str(i)), depth + 1) for i, s in alts]}
        if "allOf" in kw:
            return self._all_of(kw, path, depth)
        if "const" in kw or "enum" in kw:
            self._only(kw, {"const", "enum", "type"}, where, "'const'/'enum'")
            values = self._list(kw, "enum", where) if "enum" in kw else [kw["const"]]
            if "const" in kw and _canon(kw["const"]) not in map(_canon, values):
                raise SchemaError("const", where, "not one of the 'enum' values")
            values = [kw["const"]] if "const" in kw else values
            if bad := [
                v for v in values if not _is_type(v, types if "type" in kw else list(TYPES))
            ]:
                raise SchemaError("type", where, f"{_canon(bad[0])[:60]} is not of this type")
            return {"enum": values}
        if isinstance(t, list) or not kw:
            self._only(kw, {"type"}, where, "a list of types")
            return {"type": types if kw else list(TYPES)}
        if t == "object" or (t is None and kw.keys() & _OBJECT):
            return self._object(kw, path, depth)
        if t == "array" or (t is None and kw.keys() & _ARRAY):
            return self._array(kw, path, depth)
        if t == "string" or (t is None and kw.keys() & _STRING):
            return self._string(kw, where)
        self._only(kw, {"type"}, where, f"type {t!r}")
        return {"type": t}

    @staticmethod
    def _only(kw: Node, allowed: set[str], where: str, context: str) -> None:
        """Refuse the first keyword of ``kw`` outside ``allowed`` (the converter would drop it)."""
        for key in kw:
            if key not in allowed:
                why = f"not supported with {context}" if key in _KNOWN else "unknown keyword"
                raise SchemaError(
                    key, where, "no grammar can express it" if key in REFUSED else why
                )

    @staticmethod
    def _list(kw: Node, key: str, where: str) -> list[Any]:
        if not isinstance(value := kw[key], list) or not value:
            raise SchemaError(key, where, "must be a non-empty array")
        return value

    def _pointer(self, ref: object, where: str) -> Path:
        if not isinstance(ref, str) or not ref.startswith("#") or ref[1:2] not in ("", "/"):
            raise SchemaError("$ref", where, f"only local '#/...' refs, not {str(ref)[:80]!r}")
        segments = unquote(ref[1:]).split("/")[1:]
        return tuple(s.replace("~1", "/").replace("~0", "~") for s in segments)

    def _resolve(self, path: Path, where: str) -> Any:
        target: Any = self._doc
        for seg in path:
            index = int(seg) if re.fullmatch(r"[0-9]{1,9}", seg) else None
            if isinstance(target, list) and index is not None and index < len(target):
                target = target[index]
            elif isinstance(target, dict) and seg in target:
                target = target[seg]
            else:
                raise SchemaError("$ref", where, f"'#/{'/'.join(path)}' does not resolve")
        return target

    def _enqueue(self, path: Path, where: str) -> str:
        """The def id of the subschema at ``path`` (checked and rewritten once, later)."""
        if path not in self._ids:
            target = self._resolve(path, where)
            name = re.sub("[^A-Za-z0-9]+", "-", path[-1] if path else "root").strip("-")[:40]
            ident = self._ids[path] = f"ref-{len(self.def_paths)}-{name or 'def'}"
            self.def_paths[ident] = self._path(path)
            self._todo.append((ident, target, path))
        return self._ids[path]

    def _object(self, kw: Node, path: Path, depth: int) -> Node:
        where = self._path(path)
        self._only(kw, {"type", *_OBJECT}, where, "an object schema")
        if not isinstance(props := kw.get("properties", {}), dict):
            raise SchemaError("properties", where, "must map property names to schemas")
        _check_required(props, required := kw.get("required", []), where)
        if (extra := kw.get("additionalProperties", False)) is not False:
            if props:
                raise SchemaError("additionalProperties", where, "only false next to properties")
            value = self._node(extra, (*path, "additionalProperties"), depth + 1)
            return {"type": "object", "additionalProperties": value}
        if "properties" not in kw and "additionalProperties" not in kw:
            return {"type": "object"}  # any object
        self._spend(len(props.keys() - set(required)) ** 2 // 2, where)  # converter: quadratic
        cleaned = {k: self._node(v, (*path, "properties", k), depth + 1) for k, v in props.items()}
        return {"type": "object", "properties": cleaned, "required": required}

    def _all_of(self, kw: Node, path: Path, depth: int) -> Node:
        """One part: that part. Several: open object schemas (or refs to them) with disjoint
        properties, merged into one closed object whose properties stay refs (checked once)."""
        where, parts = self._path(path), self._list(kw, "allOf", self._path(path))
        self._only(kw, {"allOf"} if len(parts) == 1 else {"allOf", "type"}, where, "'allOf'")
        if len(parts) == 1:
            return self._node(parts[0], (*path, "allOf", "0"), depth + 1)
        merged: Node = {"type": "object", "properties": {}, "required": []}
        for i, raw in enumerate(parts):
            at: Path = (*path, "allOf", str(i))
            if isinstance(part := raw, dict) and "$ref" in part:
                self._only(_strip(part), {"$ref"}, where, "'$ref'")
                part = self._resolve(at := self._pointer(part["$ref"], where), where)
            sub = _strip(part) if isinstance(part, dict) else {}
            if (
                kw.get("type", "object") != "object"
                or sub.get("type", "object") != "object"
                or (sub.get("additionalProperties", True) is not True)
                or not isinstance(props := sub.get("properties"), dict)
            ):
                raise SchemaError("allOf", where, "only open object schemas with properties merge")
            self._only(sub, {"type", *_OBJECT}, where, "'allOf'")
            _check_required(props, sub.get("required", []), where)
            for name in props:
                if name in merged["properties"]:
                    raise SchemaError("allOf", where, f"property {name!r} is in two parts")
                ident = self._enqueue((*at, "properties", name), where)
                merged["properties"][name] = {"$ref": f"#/$defs/{ident}"}
            merged["required"] += sub.get("required", [])
        return merged

    def _array(self, kw: Node, path: Path, depth: int) -> Node:
        where = self._path(path)
        self._only(kw, {"type", *_ARRAY}, where, "an array schema")
        lo, hi = self._bounds(kw, "minItems", "maxItems", where)
        key = "prefixItems" if "prefixItems" in kw else "items"
        if not isinstance(tup := kw.get(key, True), list):
            if key == "prefixItems":
                raise SchemaError(key, where, "must be an array")
            items = self._node(tup, (*path, "items"), depth + 1)
            return {"type": "array", "items": items, "minItems": lo} | _opt("maxItems", hi)
        if key == "prefixItems" and not isinstance(kw.get("items", False), bool):
            raise SchemaError("items", where, "only true or false next to 'prefixItems'")
        if not lo <= len(tup) <= (len(tup) if hi is None else hi):
            bound = "minItems" if lo > len(tup) else "maxItems"
            raise SchemaError(bound, where, "a tuple has exactly its prefix items")
        prefix = [self._node(s, (*path, key, str(i)), depth + 1) for i, s in enumerate(tup)]
        return {"type": "array", "prefixItems": prefix}

    def _string(self, kw: Node, where: str) -> Node:
        self._only(kw, {"type", *_STRING}, where, "a string schema")
        for key in ("pattern", "format"):
            if key in kw:
                self._only(kw, {"type", key}, where, f"'{key}'")
        if "pattern" in kw:
            regex, cost = translate(kw["pattern"], where)
            self._spend(cost, where)
            return {"type": "string", "pattern": regex}
        if "format" in kw:
            if not isinstance(kw["format"], str) or kw["format"] not in FORMATS:
                raise SchemaError("format", where, f"unsupported format {kw['format']!r}"[:100])
            return {"type": "string", "format": kw["format"]}
        lo, hi = self._bounds(kw, "minLength", "maxLength", where)
        return {"type": "string"} | _opt("minLength", lo or None) | _opt("maxLength", hi)

    def _bounds(self, kw: Node, lo_key: str, hi_key: str, where: str) -> tuple[int, int | None]:
        for key in (lo_key, hi_key):
            if type(value := kw.get(key, 0)) is not int or not 0 <= value <= MAX_REPEAT:
                raise SchemaError(key, where, f"must be an integer from 0 to {MAX_REPEAT}")
        lo, hi = kw.get(lo_key, 0), kw.get(hi_key)
        if hi is not None and lo > hi:
            raise SchemaError(lo_key, where, f"greater than {hi_key!r}")
        self._spend(lo if hi is None else hi, where)
        return lo, hi

    def _spend(self, cost: int, where: str) -> None:
        self._budget -= cost
        if self._budget < 0:
            raise SchemaError("schema", where, "too large a grammar (lengths, items, properties)")
