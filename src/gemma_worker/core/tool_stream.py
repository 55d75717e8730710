"""Splitting a streamed answer into content and tool calls (sans-I/O).

When tools are offered, the answer is generated under a grammar that makes it either plain text
or tool calls in one fixed format, byte for byte::

    {"name": "<name>", "arguments": <JSON object>}                  one call
    [{"name": "f", "arguments": {...}}, {"name": "g", ...}]         several calls

with an optional ``[ \\t\\n\\r]*`` before it in "auto" mode. A name is one or more of
``[a-zA-Z0-9_-]``. A plain-text answer is anything whose first non-whitespace character is neither
``{`` nor ``[``.

:class:`ToolCallStream` is fed the answer in arbitrary pieces and returns :data:`ToolDelta` values
as soon as they are known: leading whitespace is held back until the first other character
decides between content and calls; a call's start once its name and the ``", "arguments": ``
literal have arrived; its arguments JSON as it arrives, nothing held back (string, escape and
nesting state are tracked so the end of the object is recognised where it happens). The wrapper
punctuation around the arguments is never emitted, nor is whitespace after the last call.

Robustness: text in call mode that breaks the format (possible only without the grammar) does
not raise. The stream falls back to content: it emits everything received so far, the leading
whitespace and the consumed wrapper included, as one :class:`ContentDelta`, and passes
everything after it through as content. Deltas emitted before the fallback (a call's start and
arguments) are not taken back; afterwards :attr:`ToolCallStream.is_tool_call` is false and
:attr:`ToolCallStream.calls` is empty, so the answer reads as plain text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, auto

#: Whitespace allowed before the call(s), held back until the first other character.
_LEADING_WHITESPACE = frozenset(" \t\n\r")
#: Characters of a tool name.
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
#: Every call starts with this literal, then the name.
_CALL_OPEN = '{"name": "'
#: After the name's closing quote, before the arguments object.
_ARGUMENTS_KEY = ', "arguments": '
#: Between two calls of a parallel answer.
_SEPARATOR = ", "
_CLOSERS = {"}": "{", "]": "["}


@dataclass(frozen=True, slots=True)
class ContentDelta:
    """Plain answer text."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    """A call's name is known; ``index`` is its 0-based position in the answer."""

    index: int
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallArguments:
    """A piece of call ``index``'s arguments JSON; the pieces of a call, in order, join to its
    arguments exactly as generated."""

    index: int
    text: str


ToolDelta = ContentDelta | ToolCallStart | ToolCallArguments


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call as far as it arrived. ``complete``: its arguments object and closing ``}`` did."""

    index: int
    name: str
    arguments: str
    complete: bool


@dataclass(slots=True)
class _Call:
    index: int
    name: str
    arguments: list[str] = field(default_factory=list)
    complete: bool = False


class _State(Enum):
    LEAD = auto()  # only leading whitespace so far
    CONTENT = auto()  # plain text: everything passes through
    LITERAL = auto()  # matching a fixed literal, then going to ``_after``
    NAME = auto()  # inside the name
    ARGUMENTS = auto()  # inside the arguments object
    CLOSE = auto()  # expecting the call's closing ``}``
    NEXT = auto()  # parallel: expecting ``, `` and another call, or ``]``
    DONE = auto()  # the answer's calls are all complete


class ToolCallStream:
    """Feed the answer in pieces; get back content and tool-call deltas as they become known.

    See the module docstring for the format and the fallback on malformed text.
    """

    __slots__ = (
        "_after",
        "_calls",
        "_depth",
        "_enabled",
        "_escape",
        "_in_string",
        "_literal",
        "_name",
        "_parallel",
        "_pos",
        "_received",
        "_state",
    )

    def __init__(self, *, enabled: bool) -> None:
        """``enabled=False``: everything is content, passed through without any buffering."""
        self._enabled = enabled
        self._state = _State.LEAD if enabled else _State.CONTENT
        self._received: list[str] = []  # every piece fed before content mode was settled
        self._calls: list[_Call] = []
        self._parallel = False
        self._literal = ""
        self._pos = 0
        self._after = _State.NAME
        self._name: list[str] = []
        self._depth: list[str] = []  # open ``{`` / ``[`` of the arguments, innermost last
        self._in_string = False
        self._escape = False

    @property
    def is_tool_call(self) -> bool:
        """Whether the answer is tool calls: call mode was entered and did not fall back."""
        return self._state not in (_State.LEAD, _State.CONTENT)

    @property
    def calls(self) -> list[ToolCall]:
        """The calls whose name has arrived, complete or not, in order (empty after fallback)."""
        return [ToolCall(c.index, c.name, "".join(c.arguments), c.complete) for c in self._calls]

    def feed(self, text: str) -> list[ToolDelta]:
        """Add ``text``; return the deltas that can be emitted now, in order: at most one
        :class:`ContentDelta` and one :class:`ToolCallArguments` per call, none empty."""
        if not text:
            return []
        if self._state is _State.CONTENT:
            return [ContentDelta(text)]
        self._received.append(text)
        out: list[ToolDelta] = []
        args_from = -1  # start in ``text`` of argument text not yet added to ``out``
        if self._state is _State.ARGUMENTS:
            args_from = 0
        for i, ch in enumerate(text):
            state = self._state
            if state is _State.ARGUMENTS:
                if self._arguments_char(ch):
                    self._flush_arguments(out, text[args_from : i + 1])
                    args_from = -1
                    self._state = _State.CLOSE
                elif not self._depth:  # mismatched closer
                    return self._fall_back(out)
                continue
            if state is _State.LEAD:
                if ch in _LEADING_WHITESPACE:
                    continue
                if ch == "{":
                    self._expect(_CALL_OPEN, 1, _State.NAME)
                elif ch == "[":
                    self._parallel = True
                    self._expect(_CALL_OPEN, 0, _State.NAME)
                else:
                    out.append(ContentDelta("".join(self._received)))
                    self._to_content()
                    return out
            elif state is _State.LITERAL:
                if ch != self._literal[self._pos]:
                    return self._fall_back(out)
                self._pos += 1
                if self._pos == len(self._literal):
                    self._state = self._after
                    if self._after is _State.ARGUMENTS:
                        args_from = i + 1
                        self._start_call(out)
            elif state is _State.NAME:
                if ch == '"' and self._name:
                    self._expect(_ARGUMENTS_KEY, 0, _State.ARGUMENTS)
                elif ch in _NAME_CHARS:
                    self._name.append(ch)
                else:
                    return self._fall_back(out)
            elif state is _State.CLOSE:
                if ch in _LEADING_WHITESPACE:
                    continue  # the grammar lets a space follow the arguments object
                if ch != "}":
                    return self._fall_back(out)
                self._calls[-1].complete = True
                self._state = _State.NEXT if self._parallel else _State.DONE
            elif state is _State.NEXT:
                if ch == "]":
                    self._state = _State.DONE
                elif ch == _SEPARATOR[0]:
                    self._expect(_SEPARATOR + _CALL_OPEN, 1, _State.NAME)
                else:
                    return self._fall_back(out)
            elif ch not in _LEADING_WHITESPACE:  # DONE: only trailing whitespace may follow
                return self._fall_back(out)
        if args_from >= 0:
            self._flush_arguments(out, text[args_from:])
        return out

    def finish(self) -> list[ToolDelta]:
        """End of generation: release held-back content (an answer of only whitespace is
        content). In call mode there is nothing more to emit: an incomplete call stays so."""
        if self._state is not _State.LEAD:
            return []
        held = "".join(self._received)
        self._to_content()
        return [ContentDelta(held)] if held else []

    def _expect(self, literal: str, pos: int, after: _State) -> None:
        self._state = _State.LITERAL
        self._literal = literal
        self._pos = pos
        self._after = after

    def _start_call(self, out: list[ToolDelta]) -> None:
        call = _Call(len(self._calls), "".join(self._name))
        self._name.clear()
        self._calls.append(call)
        self._depth.clear()
        self._in_string = self._escape = False
        out.append(ToolCallStart(call.index, call.name))

    def _arguments_char(self, ch: str) -> bool:
        """Track one character of the arguments; true when it closes the arguments object.

        A mismatched or misplaced character leaves the depth empty without closing the object.
        """
        if self._in_string:
            if self._escape:
                self._escape = False
            elif ch == "\\":
                self._escape = True
            elif ch == '"':
                self._in_string = False
            return False
        if not self._depth:  # the first character must open the object
            if ch == "{":
                self._depth.append(ch)
            return False
        if ch == '"':
            self._in_string = True
        elif ch in "{[":
            self._depth.append(ch)
        elif ch in _CLOSERS:
            if self._depth[-1] != _CLOSERS[ch]:
                self._depth.clear()
                return False
            self._depth.pop()
            return not self._depth
        return False

    def _flush_arguments(self, out: list[ToolDelta], piece: str) -> None:
        if piece:
            call = self._calls[-1]
            call.arguments.append(piece)
            out.append(ToolCallArguments(call.index, piece))

    def _fall_back(self, out: list[ToolDelta]) -> list[ToolDelta]:
        """Malformed call-mode text: everything received so far becomes content, once."""
        out.append(ContentDelta("".join(self._received)))
        self._calls.clear()
        self._to_content()
        return out

    def _to_content(self) -> None:
        self._state = _State.CONTENT
        self._received.clear()


def parse_tool_answer(text: str) -> tuple[str, list[ToolCall]]:
    """A whole (non-streamed) answer as ``(content, calls)``, read as :class:`ToolCallStream`
    reads it: a tool-call answer has empty content; a plain or malformed one has no calls."""
    stream = ToolCallStream(enabled=True)
    deltas = stream.feed(text) + stream.finish()
    content = "".join(d.text for d in deltas if isinstance(d, ContentDelta))
    return content, stream.calls
