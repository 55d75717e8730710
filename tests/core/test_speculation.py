"""Draft-free speculation's decisions on plain data: n-gram drafts, the adaptive length, and
how a step's room for drafts is shared with the step cost model."""

import pytest

from gemma_worker.core.scheduling import SlotView, plan_step
from gemma_worker.core.speculation import (
    DraftLength,
    NgramDrafter,
    break_even,
    grant_drafts,
)
from gemma_worker.core.step_cost import CostModel


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


def _cost(fixed: float, per_token: float) -> CostModel:
    cost = CostModel()
    for n in (1, 2, 4, 8, 16):
        cost.observe(n, fixed + per_token * n)
    return cost


def test_the_break_even_acceptance_grows_with_the_streams_in_the_step() -> None:
    cost = _cost(fixed=0.008, per_token=0.0005)
    assert break_even(cost, 1) == pytest.approx(0.0005 / 0.0085)
    assert break_even(cost, 16) == pytest.approx(0.008 / 0.016)
    assert break_even(CostModel(), 4) == 0.0  # nothing known: drafts are tried


def test_drafts_go_where_they_pay_best_first_within_the_step_budget() -> None:
    cost = _cost(fixed=0.0085, per_token=0.001)
    wants = {0: 8, 1: 8, 2: 8}
    acceptance = {0: 0.9, 1: 0.5, 2: 0.1, 3: 0.0}  # slot 3 decodes without a draft
    # 4 rows: 12.5 ms plain, break-even 0.32; budget (1.5 - 1) * 12.5 / 1 = 6 tokens
    granted = grant_drafts(wants, acceptance, cost, room=100)
    assert granted == {0: 6}
    assert grant_drafts(wants, acceptance, cost, room=100, step_factor=3.0) == {0: 8, 1: 8}
    assert grant_drafts(wants, acceptance, cost, room=3) == {0: 3}  # the batch's room
    # nothing known of the costs yet: every draft is tried, within the room
    assert grant_drafts(wants, acceptance, CostModel(), room=20) == {0: 8, 1: 8, 2: 4}


def test_a_draft_widens_its_decoders_entry_and_comes_out_of_the_prefill_budget() -> None:
    slots = [
        SlotView(slot=0, order=1, prefill_remaining=0, draft=5),
        SlotView(slot=1, order=2, prefill_remaining=0),
        SlotView(slot=2, order=3, prefill_remaining=100),
    ]
    seen: list[int] = []

    def beside(n: int) -> int:
        seen.append(n)
        return 20

    plan = plan_step(slots, 64, beside)
    assert [(e.slot, e.n_tokens, e.prefill) for e in plan] == [
        (0, 6, False),
        (1, 1, False),
        (2, 20, True),
    ]
    assert seen == [7]  # the prefill budget is asked for beside all 7 decoding tokens
    plan = plan_step(slots, 10, beside)
    assert plan[-1].n_tokens == 3  # the batch's size bounds prefill after the drafts
