import json
import random

import pytest

from gemma_worker.core.tool_stream import (
    ContentDelta,
    ToolCall,
    ToolCallArguments,
    ToolCallStart,
    ToolCallStream,
    ToolDelta,
    parse_tool_answer,
)

#: (name, arguments JSON exactly as generated)
SAMPLE_CALLS: list[tuple[str, str]] = [
    ("get_weather", '{"city": "Paris", "unit": "celsius"}'),
    ("empty-args", "{}"),
    ("braces_in_strings", '{"code": "if (x) { y(); }", "q": "a } b ] c { [", "e": "}"}'),
    ("escapes", r'{"s": "say \"hi\" } \\", "t": "\\\"}", "u": "\u00e9\n"}'),
    ("nested_2", '{\n  "a": {"b": [1, {"c": [[], {}]}, "x]"]},\n  "d": [{"e": null}]\n}'),
    ("unicode", '{"text": "ünïcødé ✓ 日本語 🚀", "n": -1.5e3, "ok": true}'),
]


def call_text(name: str, arguments: str) -> str:
    return f'{{"name": "{name}", "arguments": {arguments}}}'


def parallel_text(calls: list[tuple[str, str]]) -> str:
    return "[" + ", ".join(call_text(n, a) for n, a in calls) + "]"


def run(pieces: list[str], *, enabled: bool = True) -> tuple[ToolCallStream, list[ToolDelta]]:
    stream = ToolCallStream(enabled=enabled)
    deltas: list[ToolDelta] = []
    for piece in pieces:
        deltas += stream.feed(piece)
    deltas += stream.finish()
    return stream, deltas


def random_split(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, min(len(text) - 1, 12))))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def splits(text: str, seed: int) -> tuple[list[str], list[str], list[str]]:
    """``text`` in one piece, one character at a time, and in random pieces."""
    return [text], list(text), random_split(text, random.Random(seed))


def summary(deltas: list[ToolDelta]) -> tuple[str, list[tuple[int, str]], dict[int, str]]:
    """Joined content, the starts in order, each call's joined arguments."""
    content = "".join(d.text for d in deltas if isinstance(d, ContentDelta))
    starts = [(d.index, d.name) for d in deltas if isinstance(d, ToolCallStart)]
    arguments: dict[int, str] = {}
    for d in deltas:
        if isinstance(d, ToolCallArguments):
            assert d.text, "no empty argument pieces"
            assert any(i == d.index for i, _ in starts), "arguments before their start"
            arguments[d.index] = arguments.get(d.index, "") + d.text
    return content, starts, arguments


def test_sample_arguments_are_valid_json() -> None:
    for _, arguments in SAMPLE_CALLS:
        assert isinstance(json.loads(arguments), dict)


@pytest.mark.parametrize(("name", "arguments"), SAMPLE_CALLS)
def test_single_call_whole_and_char_by_char(name: str, arguments: str) -> None:
    text = call_text(name, arguments)
    whole_stream, whole = run([text])
    chars_stream, chars = run(list(text))
    expected = ("", [(0, name)], {0: arguments})
    assert summary(whole) == expected
    assert summary(chars) == expected
    assert whole == [ToolCallStart(0, name), ToolCallArguments(0, arguments)]
    for stream in (whole_stream, chars_stream):
        assert stream.is_tool_call
        assert stream.calls == [ToolCall(0, name, arguments, complete=True)]


def test_random_splits_of_single_and_parallel_answers() -> None:
    answers: list[tuple[str, list[tuple[str, str]]]] = []
    for name, args in SAMPLE_CALLS:
        answers.append((call_text(name, args), [(name, args)]))
        answers.append((" \n\t" + call_text(name, args), [(name, args)]))
    answers.append((parallel_text(SAMPLE_CALLS), SAMPLE_CALLS))
    answers.append(("\n" + parallel_text(SAMPLE_CALLS[2:4]), SAMPLE_CALLS[2:4]))
    answers.append((parallel_text(SAMPLE_CALLS[:1]), SAMPLE_CALLS[:1]))
    for seed in range(40):
        rng = random.Random(seed)
        for text, calls in answers:
            stream, deltas = run(random_split(text, rng))
            content, starts, arguments = summary(deltas)
            assert content == ""
            assert starts == [(i, n) for i, (n, _) in enumerate(calls)]
            assert arguments == {i: a for i, (_, a) in enumerate(calls)}
            assert stream.calls == [ToolCall(i, n, a, True) for i, (n, a) in enumerate(calls)]


def test_parallel_calls_in_order_with_indices() -> None:
    text = parallel_text([("a", '{"x": 1}'), ("b_2", "{}"), ("c-3", '{"y": [1, 2]}')])
    stream, deltas = run([text])
    assert deltas == [
        ToolCallStart(0, "a"),
        ToolCallArguments(0, '{"x": 1}'),
        ToolCallStart(1, "b_2"),
        ToolCallArguments(1, "{}"),
        ToolCallStart(2, "c-3"),
        ToolCallArguments(2, '{"y": [1, 2]}'),
    ]
    assert [c.name for c in stream.calls] == ["a", "b_2", "c-3"]
    assert all(c.complete for c in stream.calls)


def test_start_only_after_name_and_arguments_literal() -> None:
    stream = ToolCallStream(enabled=True)
    prefix = '{"name": "get_weather", "arguments": '
    for i, ch in enumerate(prefix[:-1]):
        assert stream.feed(ch) == [], f"emitted early at {prefix[: i + 1]!r}"
        assert stream.calls == []
    assert stream.is_tool_call
    assert stream.feed(prefix[-1]) == [ToolCallStart(0, "get_weather")]
    assert stream.calls == [ToolCall(0, "get_weather", "", complete=False)]


def test_name_split_across_pieces_is_not_emitted_partially() -> None:
    stream = ToolCallStream(enabled=True)
    assert stream.feed('{"name": "get_') == []
    assert stream.feed('weather", "argu') == []
    assert stream.feed('ments": {"a"') == [
        ToolCallStart(0, "get_weather"),
        ToolCallArguments(0, '{"a"'),
    ]


def test_arguments_are_streamed_incrementally() -> None:
    stream = ToolCallStream(enabled=True)
    assert stream.feed('{"name": "f", "arguments": {"a": ') == [
        ToolCallStart(0, "f"),
        ToolCallArguments(0, '{"a": '),
    ]
    assert stream.feed('"x}') == [ToolCallArguments(0, '"x}')]  # inside a string: not the end
    assert stream.calls == [ToolCall(0, "f", '{"a": "x}', complete=False)]
    assert stream.feed('\\"') == [ToolCallArguments(0, '\\"')]
    assert stream.feed('"}') == [ToolCallArguments(0, '"}')]
    assert stream.calls == [ToolCall(0, "f", '{"a": "x}\\""}', complete=False)]  # no closing } yet
    assert stream.feed("}") == []
    assert stream.calls == [ToolCall(0, "f", '{"a": "x}\\""}', complete=True)]
    assert stream.finish() == []


def test_escape_split_across_pieces() -> None:
    stream, deltas = run(['{"name": "f", "arguments": {"s": "a\\', '"}', '"}', "}"])
    _, _, arguments = summary(deltas)
    assert arguments == {0: '{"s": "a\\"}"}'}
    assert stream.calls[0].complete


def test_wrapper_punctuation_is_never_emitted() -> None:
    text = parallel_text([("a", '{"k": "v"}'), ("b", '{"k": [1]}')])
    _, deltas = run(list(text))
    emitted = "".join(d.text for d in deltas if isinstance(d, ToolCallArguments))
    assert emitted == '{"k": "v"}{"k": [1]}'


@pytest.mark.parametrize("lead", [" ", "\n", "\t \n  "])
def test_leading_whitespace_before_a_call_is_dropped(lead: str) -> None:
    stream = ToolCallStream(enabled=True)
    assert stream.feed(lead) == []
    assert not stream.is_tool_call
    assert stream.feed('{"name": "f", "arguments": {}}') == [
        ToolCallStart(0, "f"),
        ToolCallArguments(0, "{}"),
    ]
    assert stream.finish() == []
    assert stream.is_tool_call


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world.",
        "  \n Bonjour {not a call} [1]",
        "The answer is {x} and [y].",
        "a",
        "\n\n2 + 2 = 4",
        "🚀 launch",
    ],
)
def test_plain_text_answers_are_content(text: str) -> None:
    for pieces in splits(text, 7):
        stream, deltas = run(pieces)
        assert all(isinstance(d, ContentDelta) and d.text for d in deltas)
        assert summary(deltas) == (text, [], {})
        assert not stream.is_tool_call
        assert stream.calls == []


def test_leading_whitespace_is_held_then_emitted_with_the_text() -> None:
    stream = ToolCallStream(enabled=True)
    assert stream.feed("  ") == []
    assert stream.feed("\n") == []
    assert stream.feed(" Hi") == [ContentDelta("  \n Hi")]
    assert stream.feed(" {there}") == [ContentDelta(" {there}")]
    assert stream.finish() == []


def test_whitespace_only_answer_is_flushed_at_finish() -> None:
    stream = ToolCallStream(enabled=True)
    assert stream.feed(" \n") == []
    assert stream.finish() == [ContentDelta(" \n")]
    assert not stream.is_tool_call


def test_empty_answer() -> None:
    stream, deltas = run([])
    assert deltas == []
    assert not stream.is_tool_call
    assert stream.calls == []
    assert run([""])[1] == []
    assert parse_tool_answer("") == ("", [])


@pytest.mark.parametrize(
    "cut",
    [
        '{"name": "f", "arguments": {"a": [1, {"b": "x}',
        '{"name": "f", "arguments": {"a": 1}',
        '{"name": "f", "arguments": ',
    ],
)
def test_truncated_call_is_incomplete(cut: str) -> None:
    stream, deltas = run(list(cut))
    arguments = cut.removeprefix('{"name": "f", "arguments": ')
    assert summary(deltas) == ("", [(0, "f")], {0: arguments} if arguments else {})
    assert stream.is_tool_call
    assert stream.calls == [ToolCall(0, "f", arguments, complete=False)]


def test_truncated_before_the_name_is_complete_has_no_calls() -> None:
    stream, deltas = run(['{"name": "get_wea'])
    assert deltas == []
    assert stream.is_tool_call
    assert stream.calls == []


def test_truncated_parallel_answer_keeps_the_finished_calls() -> None:
    text = parallel_text([("a", '{"x": 1}'), ("b", '{"y": 2}')])
    cut = text[: text.index('{"y"') + 3]
    stream, _ = run([cut])
    assert stream.calls == [ToolCall(0, "a", '{"x": 1}', True), ToolCall(1, "b", '{"y', False)]


@pytest.mark.parametrize(
    "text",
    [
        '{"x": 1}',  # a JSON object, not a call
        '{"name":"f","arguments":{}}',  # wrong spacing
        '{"name": "bad name", "arguments": {}}',  # space in the name
        '{"name": "", "arguments": {}}',  # empty name
        '{"name": "f", "arguments": [1, 2]}',  # arguments not an object
        '{"name": "f", "arguments": {"a": [1}}',  # mismatched bracket
        '{"name": "f", "arguments": {"a": 1}, "extra": 2}',  # no closing brace after arguments
        '{"name": "f", "arguments": {}} and some text',  # text after the call
        '[{"name": "f", "arguments": {}},{"name": "g", "arguments": {}}]',  # wrong separator
        '[{"name": "f", "arguments": {}}] trailing',
        "[1] is a citation",
        '  \n{"name": "f", "argumentz": {}}',
    ],
)
def test_malformed_call_text_falls_back_to_content_without_loss(text: str) -> None:
    for pieces in splits(text, 3):
        stream, deltas = run(pieces)
        contents = [d for d in deltas if isinstance(d, ContentDelta)]
        assert "".join(d.text for d in contents) == text
        assert not stream.is_tool_call
        assert stream.calls == []
        if pieces == [text]:
            assert deltas[-1] == ContentDelta(text)
    assert parse_tool_answer(text) == (text, [])


def test_fallback_emits_received_text_once_then_passes_through() -> None:
    stream = ToolCallStream(enabled=True)
    assert stream.feed(' {"name": "f", "arguments": {"a"') == [
        ToolCallStart(0, "f"),
        ToolCallArguments(0, '{"a"'),
    ]
    assert stream.feed(": ]") == [ContentDelta(' {"name": "f", "arguments": {"a": ]')]
    assert stream.feed(" more") == [ContentDelta(" more")]
    assert stream.finish() == []
    assert not stream.is_tool_call


def test_trailing_whitespace_after_the_call_is_ignored() -> None:
    stream, deltas = run(['{"name": "f", "arguments": {}}', "\n "])
    assert summary(deltas) == ("", [(0, "f")], {0: "{}"})
    assert stream.calls == [ToolCall(0, "f", "{}", True)]
    stream, deltas = run([parallel_text([("f", "{}"), ("g", "{}")]), "\n"])
    assert summary(deltas) == ("", [(0, "f"), (1, "g")], {0: "{}", 1: "{}"})
    assert stream.is_tool_call


def test_nothing_but_whitespace_may_follow_the_closing_bracket() -> None:
    text = parallel_text([("f", "{}")]) + ', {"name": "g", "arguments": {}}'
    assert parse_tool_answer(text) == (text, [])


def test_disabled_passes_everything_through() -> None:
    text = '{"name": "f", "arguments": {}}'
    stream = ToolCallStream(enabled=False)
    assert stream.feed(text[:5]) == [ContentDelta(text[:5])]
    assert stream.feed("  ") == [ContentDelta("  ")]
    assert stream.feed("") == []
    assert stream.finish() == []
    assert not stream.is_tool_call
    assert stream.calls == []


def test_parse_tool_answer() -> None:
    assert parse_tool_answer("  Hello {x}") == ("  Hello {x}", [])
    assert parse_tool_answer('\n{"name": "f", "arguments": {"a": "}"}}') == (
        "",
        [ToolCall(0, "f", '{"a": "}"}', True)],
    )
    text = parallel_text(SAMPLE_CALLS)
    content, calls = parse_tool_answer(text)
    assert content == ""
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        (n, json.loads(a)) for n, a in SAMPLE_CALLS
    ]
    assert parse_tool_answer('{"name": "f", "arguments": {"a"') == (
        "",
        [ToolCall(0, "f", '{"a"', False)],
    )
