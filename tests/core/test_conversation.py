from gemma_worker.core.conversation import Conversation, Turn, turns_to_drop


def test_nothing_dropped_when_it_fits() -> None:
    calls: list[int] = []
    assert turns_to_drop(5, lambda d: calls.append(d) or True) == 0
    assert calls == [0]


def test_fewest_turns_dropped() -> None:
    sizes = [100, 80, 60, 40, 20]  # prompt size after dropping d turns
    for budget, expected in [(90, 1), (60, 2), (41, 3), (20, 4)]:
        assert turns_to_drop(4, lambda d, b=budget: sizes[d] <= b) == expected


def test_none_when_even_the_input_alone_is_too_big() -> None:
    assert turns_to_drop(3, lambda d: False) is None
    assert turns_to_drop(0, lambda d: False) is None


def test_few_evaluations_for_a_long_history() -> None:
    calls: list[int] = []

    def fits(d: int) -> bool:
        calls.append(d)
        return d >= 700

    assert turns_to_drop(1000, fits) == 700
    assert len(calls) <= 13


def test_without_oldest_keeps_the_system_prompt() -> None:
    conv = Conversation("now", "chat", (Turn("a", "b"), Turn("c", "d")), system="sys")
    trimmed = conv.without_oldest(1)
    assert trimmed.history == (Turn("c", "d"),)
    assert (trimmed.system, trimmed.input, trimmed.format) == ("sys", "now", "chat")
