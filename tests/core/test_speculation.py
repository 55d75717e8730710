"""Draft-free speculation's decisions on plain data: n-gram drafts, the adaptive length, and
how a step's room for drafts is shared with the step cost model."""

import pytest

from gemma_worker.core.scheduling import SlotView, plan_step
from gemma_worker.core.speculation import (
    Acceptance,
    NgramDrafter,
    expected_accepted,
    plan_drafts,
)
from gemma_worker.core.step_cost import StepCosts, step_passes


def test_a_repeated_span_is_drafted_from_its_earlier_occurrence() -> None:
    # "key = value ;" twice, then the start of it again: the rest of it is the draft
    d = NgramDrafter([5, 6, 7, 8, 9, 1, 5, 6, 7, 8, 9, 2, 5, 6], sizes=(2, 3))
    assert d.draft(3) == [7, 8, 9]  # after the latest earlier "5 6"
    assert d.draft(0) == []
    d.extend([7, 8])
    assert d.draft(2) == [9, 2]  # "6 7 8" last seen before "9 2"


def test_the_longest_suffix_wins_and_nothing_seen_drafts_nothing() -> None:
    d = NgramDrafter([1, 2, 3, 4, 9, 2, 3, 5, 1, 2, 3], sizes=(2, 3))
    assert d.draft(1) == [4]  # "1 2 3" beats the later "2 3" (followed by 5)
    assert NgramDrafter([1, 2, 3, 4]).draft(4) == []
    assert NgramDrafter([]).draft(4) == []


def test_a_lookup_names_the_length_of_the_match_that_found_the_draft() -> None:
    d = NgramDrafter([1, 2, 3, 4, 9, 2, 3, 5, 1, 2, 3], sizes=(2, 3))
    assert d.lookup(2) == (3, [4, 9])  # "1 2 3" matched
    d.extend([7, 2, 3])
    assert d.lookup(1) == (2, [7])  # only "2 3" matches ("7 2 3" was never seen before)
    assert d.lookup(0) == (0, [])
    assert NgramDrafter([1, 2, 3, 4]).lookup(4) == (0, [])


def test_a_loop_is_drafted_round_its_period() -> None:
    d = NgramDrafter([3, 4, 3, 4, 3, 4], sizes=(2,))
    assert d.draft(5) == [3, 4, 3, 4, 3]  # "3 4" last ended 2 tokens back: its period
    assert len(d) == 6
    d = NgramDrafter([1, 5, 6, 7, 2, 5, 6, 7, 2, 5, 6], sizes=(2,))
    assert d.draft(6) == [7, 2, 5, 6, 7, 2]


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        NgramDrafter(sizes=(0, 2))


def test_longer_ngrams_find_the_place_being_copied() -> None:
    # "a b" occurs twice; the 3-gram "x a b" only where the copy is
    d = NgramDrafter([7, 1, 2, 3, 4, 9, 1, 2, 5, 7, 1, 2], sizes=(2, 3))
    assert d.draft(2) == [3, 4]
    assert NgramDrafter([9, 1, 2, 3, 4, 9, 1, 2, 5, 7, 1, 2], sizes=(2,)).draft(1) == [5]


def test_acceptance_learns_from_verifications_and_recovers_while_resting() -> None:
    acc = Acceptance()
    prior = acc.rate
    assert 0.5 < prior < 1.0  # optimistic: a context match usually continues
    for _ in range(6):
        acc.observe(8, 8)
    assert acc.rate > prior
    for _ in range(12):
        acc.observe(8, 0)
    low = acc.rate
    assert low < 0.6
    # a lone stream stops drafting at that rate (the steps measured here)...
    assert plan_drafts({0: 48}, {0: low}, _costs(), room=64) == {}
    acc.observe(0, 0)  # nothing drafted: nothing learned
    assert acc.rate == low
    for _ in range(200):
        acc.rest()
    assert acc.rate == pytest.approx(prior, abs=0.02)
    assert plan_drafts({0: 48}, {0: acc.rate}, _costs(), room=64)  # ...and in time tries again


def test_expected_accepted_tokens() -> None:
    assert expected_accepted(0.5, 0) == 0.0
    assert expected_accepted(1.0, 7) == 7.0
    assert expected_accepted(0.5, 3) == pytest.approx(0.5 + 0.25 + 0.125)
    assert expected_accepted(0.9, 200) == pytest.approx(9.0, rel=1e-6)


#: What steps of each width cost on these CPUs (fast kernels, the embedded model), in s.
MEASURED = {1: 0.012, 2: 0.024, 4: 0.034, 5: 0.049, 8: 0.047, 9: 0.065, 16: 0.081,
            17: 0.101, 32: 0.136, 64: 0.233}  # fmt: skip


def _costs(widths: dict[int, float] = MEASURED) -> StepCosts:
    costs = StepCosts()
    for _ in range(3):
        for w, t in widths.items():
            costs.observe(w, t)
    return costs


def test_step_costs_follow_the_kernels_row_blocks() -> None:
    costs = _costs()
    assert StepCosts().estimate(4) is None
    assert costs.estimate(1) == pytest.approx(0.012)
    assert costs.estimate(3) == pytest.approx(0.036)  # row by row, like 1 and 2
    assert costs.estimate(9) == costs.estimate(12)  # a partial block costs a whole one
    for width in (16, 32, 64):  # the power law is within 20% of what was measured
        assert costs.estimate(width) == pytest.approx(MEASURED[width], rel=0.2)
    assert 0.5 < (costs.exponent or 0) < 0.9
    one = StepCosts()
    one.observe(1, 0.012)  # only one stream seen: wider steps from the prior exponent
    assert one.estimate(8) == pytest.approx(0.012 * 8**0.75)


def test_a_lone_stream_drafts_long_when_its_drafts_stand_and_not_when_they_fail() -> None:
    costs = _costs()
    good = plan_drafts({0: 48}, {0: 0.97}, costs, room=64)
    assert good[0] >= 15 and (1 + good[0]) % 4 == 0  # fills its row blocks
    assert plan_drafts({0: 48}, {0: 0.3}, costs, room=64) == {}
    assert plan_drafts({0: 48}, {0: 0.97}, costs, room=6) == {0: 6}  # the room bounds it
    assert plan_drafts({0: 48}, {0: 0.97}, StepCosts(), room=64) == {}  # nothing known yet


def test_beside_other_streams_drafts_must_pay_for_everyone() -> None:
    costs = _costs()
    rates = {s: 0.0 for s in range(8)}  # 8 streams, 7 without drafts
    rates[0] = 0.99
    # a lone drafter's tokens are a pass of their own: 47 ms + its pass never pays here
    assert plan_drafts({0: 48}, rates, costs, room=64) == {}
    # nor do guesses that would keep the step one pass: 16 rows cost 1.7x, the other seven
    # streams would lose more than 1/1.5 of their rate
    assert plan_drafts({0: 48}, rates, costs, room=64, caps=dict.fromkeys(range(8), 48)) == {}
    rates = dict.fromkeys(range(8), 0.97)  # all 8 copy: all draft, and the step widens
    both = plan_drafts(dict.fromkeys(range(8), 48), rates, costs, room=64)
    assert len(both) == 8 and sum(both.values()) <= 64
    assert len(set(both.values())) == 1  # equal shares: one pass through the model


def test_guesses_fill_a_step_to_one_pass_where_it_pays() -> None:
    """Four streams, three copying: the fourth's share of the step is filled with guesses
    (worth nothing to the plan) rather than leaving the drafts to a pass of their own (with
    a fairness bound loose enough that the fourth may lose half its rate)."""
    costs = _costs()
    rates = {0: 0.97, 1: 0.97, 2: 0.1, 3: 0.97}
    wants = {0: 48, 1: 48, 3: 48}
    ragged = plan_drafts(wants, rates, costs, room=64, step_factor=2.0)
    filled = plan_drafts(
        wants, rates, costs, room=64, caps=dict.fromkeys(range(4), 48), step_factor=2.0
    )
    assert 2 in filled and len(set(filled.values())) == 1
    speed = {}
    for name, plan in (("ragged", ragged), ("filled", filled)):
        counts = [(s, 1 + plan.get(s, 0)) for s in range(4)]
        cost = costs.estimate_step(counts)
        assert cost is not None
        speed[name] = sum(1 + min(plan.get(s, 0), wants.get(s, 0)) * 0.9 for s in range(4)) / cost
    assert speed["filled"] >= speed["ragged"]


def test_step_passes_follow_llamas_equal_split() -> None:
    eight = [(s, 1) for s in range(8)]
    assert step_passes(eight) == [8]
    assert step_passes([(s, 3) for s in range(8)]) == [24]
    assert step_passes([(0, 9), *eight[1:]]) == [8, 8]  # one drafts: a pass of its own
    assert step_passes([(s, 5 if s in (0, 4) else 1) for s in range(8)]) == [8, 4, 4]
    assert step_passes([(s, 5 if s < 4 else 1) for s in range(8)]) == [8, 16]
    assert step_passes([(0, 1), (1, 1), (3, 1)]) == [2, 1]  # a gap in the slots splits too
    assert step_passes([*eight[:7], (7, 600)]) == [8, 512, 87]  # n_ubatch bounds a pass
    assert step_passes([(0, 9), *eight[1:]], equal_split=False) == [16]  # one KV buffer
    assert step_passes([(0, 700)], equal_split=False) == [512, 188]


def test_a_step_of_several_passes_costs_them_all_and_teaches_each() -> None:
    costs = _costs()
    ragged = [(0, 9), *[(s, 1) for s in range(1, 8)]]
    assert costs.estimate_step(ragged) == pytest.approx(2 * (costs.estimate(8) or 0))
    before = costs.estimate(8)
    for _ in range(20):
        costs.observe_step(ragged, 4 * (before or 0))  # the machine got twice as slow
    assert (costs.estimate(8) or 0) > 1.5 * (before or 0)


def test_a_draft_widens_its_decoders_entry_and_comes_out_of_the_prefill_budget() -> None:
    slots = [
        SlotView(slot=0, order=1, prefill_remaining=0, draft=5),
        SlotView(slot=1, order=2, prefill_remaining=0),
        SlotView(slot=2, order=3, prefill_remaining=100),
    ]
    seen: list[tuple[int, int]] = []

    def beside(n: int, streams: int) -> int:
        seen.append((n, streams))
        return 20

    plan = plan_step(slots, 64, beside)
    assert [(e.slot, e.n_tokens, e.prefill) for e in plan] == [
        (0, 6, False),
        (1, 1, False),
        (2, 20, True),
    ]
    # the prefill budget is asked for beside all 7 decoding tokens, 3 sequences in the step
    assert seen[0] == (7, 3)
    plan = plan_step(slots, 10, beside)
    assert plan[-1].n_tokens == 3  # the batch's size bounds prefill after the drafts


def test_guesses_continue_from_the_last_token() -> None:
    drafter = NgramDrafter([5, 6, 7, 8, 5, 9], sizes=(3,))
    assert drafter.guess(0) == []
    assert drafter.guess(2, [6]) == [7, 8]  # what followed 6's latest earlier occurrence
    assert drafter.guess(3, [8]) == [5, 9, 9]  # runs to the end, then repeats its last
    assert drafter.guess(2) == [9, 9]  # after the sequence itself: 9 never came before
    assert drafter.guess(2, [42]) == [42, 42]  # never seen: the token again
