"""Packing embedding inputs into batches, and pacing them beside another engine."""

from gemma_worker.core.embed_batching import EmbedPacer, PendingInputs, Pick, pack


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
    pacer.observe(1000, 0.5)  # 0.5 ms a token
    assert pacer.budget(None) == 2048
    assert pacer.budget(0.02) == 30  # 0.75 x (2 - 1) x 20 ms / 0.5 ms
    assert pacer.budget(0.0001) == 1
