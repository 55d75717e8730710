"""Packing embedding inputs into batches, and pacing them beside another engine."""

import pytest

from gemma_worker.core.embed_batching import EmbedPacer, PendingInputs, Pick, pack
from gemma_worker.core.step_cost import CostModel


def test_inputs_are_taken_round_robin_across_requests() -> None:
    big = PendingInputs([10] * 6)
    small = PendingInputs([10, 10])
    picks = pack([big, small], max_tokens=1000, max_seqs=64)
    assert picks[:4] == [Pick(0, 0), Pick(1, 0), Pick(0, 1), Pick(1, 1)]
    assert len(picks) == 8 and big.done and small.done


def test_a_batch_stops_at_its_token_and_sequence_budgets() -> None:
    reqs = [PendingInputs([30, 30, 30]), PendingInputs([30, 30])]
    first = pack(reqs, max_tokens=100, max_seqs=64)
    assert first == [Pick(0, 0), Pick(1, 0), Pick(0, 1)]
    second = pack(reqs, max_tokens=1000, max_seqs=1, start=1)
    assert second == [Pick(1, 1)]
    assert pack(reqs, max_tokens=1000, max_seqs=64) == [Pick(0, 2)]
    assert all(r.done for r in reqs)


def test_a_request_whose_next_input_does_not_fit_lets_the_others_go_on() -> None:
    reqs = [PendingInputs([10, 500]), PendingInputs([10, 10, 10])]
    picks = pack(reqs, max_tokens=100, max_seqs=64)
    assert picks == [Pick(0, 0), Pick(1, 0), Pick(1, 1), Pick(1, 2)]
    assert reqs[0].next == 1  # its long input is the next batch's first
    assert pack(reqs, max_tokens=100, max_seqs=64) == [Pick(0, 1)]  # alone, whatever its size


def test_the_pacer_keeps_batches_short_beside_another_engine() -> None:
    pacer = EmbedPacer(gap_factor=2.0, max_tokens=2048)
    assert pacer.budget(None) == 2048
    assert pacer.budget(0.02) == 1  # cost unknown yet: one input at a time
    pacer.observe(1000, 0.5)  # 0.5 ms a token, nothing to tell a fixed cost apart
    assert pacer.budget(None) == 2048
    assert pacer.budget(0.02) == 20  # 0.5 x (2 - 1) x 20 ms / 0.5 ms
    assert pacer.budget(0.0001) == 1


def test_the_cost_model_fits_a_decodes_fixed_cost() -> None:
    model = CostModel()
    for n in (20, 50, 100, 400, 1000):
        model.observe(n, 0.004 + 0.0002 * n)  # 4 ms + 0.2 ms a token
    assert model.fixed == pytest.approx(0.004)
    assert model.per_token == pytest.approx(0.0002)
    assert model.tokens_within(0.014) == 50  # (14 - 4) / 0.2, not 14 / 0.2
    assert model.tokens_within(0.003) == 0


def test_the_pacer_plans_around_the_fixed_cost() -> None:
    pacer = EmbedPacer(gap_factor=2.0, max_tokens=512)
    for n in (16, 64, 256, 512):
        pacer.observe(n, 0.003 + 0.00025 * n)
    # half of a 30 ms turn is 15 ms: 3 ms fixed, then 48 tokens at 0.25 ms
    assert pacer.budget(0.030) == 48
    assert pacer.budget(0.004) == 1  # below the fixed cost: still one input, work goes on


def test_the_cost_model_forgets_old_batches_and_ignores_noise() -> None:
    model = CostModel(window=4)
    model.observe(1000, 0.1)
    for _ in range(4):
        model.observe(50, 0.02)  # all alike: proportional
    assert model.fixed == 0.0 and model.per_token == pytest.approx(0.0004)
    model.observe(100, 0.01)  # bigger but cheaper (noise): no negative fixed cost
    assert model.fixed >= 0.0 and model.per_token is not None and model.per_token > 0


def test_the_cost_model_refits_after_new_batches() -> None:
    model = CostModel()
    for n in (100, 100, 100):
        model.observe(n, 0.02)
    assert model.fixed == 0.0 and model.per_token == pytest.approx(0.0002)
    for n in (20, 400, 1000):
        model.observe(n, 0.01 + 0.0001 * n)
    # the new batches' spread shows a fixed cost: the figures are fitted anew
    assert model.fixed > 0.005
    assert model.seconds(1000) == pytest.approx(model.fixed + 1000 * model.per_token)
