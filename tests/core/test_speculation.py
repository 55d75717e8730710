"""Draft-free speculation's decisions on plain data: n-gram drafts, the adaptive length and
the speculative-sampling rule (exact output distribution)."""

import numpy as np
import pytest

from gemma_worker.core.speculation import DraftLength, NgramDrafter, accept_draft


def test_a_repeated_span_is_drafted_from_its_earlier_occurrence() -> None:
    # "key = value ;" twice, then the start of it again: the rest of it is the draft
    d = NgramDrafter([5, 6, 7, 8, 9, 1, 5, 6, 7, 8, 9, 2, 5, 6], min_n=2, max_n=3)
    assert d.draft(3) == [7, 8, 9]  # after the latest earlier "5 6"
    assert d.draft(0) == []
    d.extend([7, 8])
    assert d.draft(2) == [9, 2]  # "6 7 8" last seen before "9 2"


def test_the_longest_suffix_wins_and_nothing_seen_drafts_nothing() -> None:
    d = NgramDrafter([1, 2, 3, 4, 9, 2, 3, 5, 1, 2, 3], min_n=2, max_n=3)
    assert d.draft(1) == [4]  # "1 2 3" beats the later "2 3" (followed by 5)
    assert NgramDrafter([1, 2, 3, 4]).draft(4) == []
    assert NgramDrafter([]).draft(4) == []


def test_a_draft_never_reads_past_the_sequence_and_periodic_text_drafts_its_period() -> None:
    d = NgramDrafter([3, 4, 3, 4, 3, 4], min_n=2, max_n=2)
    assert d.draft(8) == [3, 4]  # "3 4" last ended 2 tokens back: only 2 follow it
    assert len(d) == 6


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        NgramDrafter(min_n=3, max_n=2)


def test_the_length_follows_acceptance_and_failing_drafts_switch_it_off() -> None:
    length = DraftLength(max_len=8, floor=0.3, cooldown=3)
    assert length.next() == 8
    length.observe(8, 8)
    assert length.next() == 8
    for _ in range(2):
        length.observe(8, 2)  # 25% accepted: the average falls
    assert 1 <= length.next() < 8
    for _ in range(5):
        length.observe(4, 0)
    # off for the cooldown: two steps without drafting, then a one-token probe
    assert [length.next() for _ in range(3)] == [0, 0, 1]
    length.observe(1, 1)
    assert length.next() >= 1
    length.observe(0, 0)  # nothing drafted: nothing learned


def test_accepting_a_point_mass_draft_keeps_the_models_distribution_exactly() -> None:
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    for draft in range(len(probs)):
        # P(emit y) = P(accept) [y = draft] + P(reject) * rest(y), integrated over u
        rest = probs.copy()
        rest[draft] = 0
        rest /= rest.sum()
        exact = np.where(np.arange(4) == draft, probs[draft], 0) + (1 - probs[draft]) * rest
        assert np.allclose(exact, probs)
        # and the function draws it: many draws, tight bounds
        rng = np.random.default_rng(draft)
        counts = np.zeros(4)
        n = 40_000
        for _ in range(n):
            _, token = accept_draft(probs, draft, float(rng.random()), rng)
            counts[token] += 1
        assert np.max(np.abs(counts / n - probs)) < 0.01


def test_a_certain_draft_is_always_accepted() -> None:
    rng = np.random.default_rng(0)
    assert accept_draft(np.array([0.0, 1.0, 0.0]), 1, 0.999, rng) == (True, 1)
    assert accept_draft(np.array([0.2, 0.8, 0.0]), 2, 0.0, rng)[0] is False
