from gemma_worker.core.pacing import PrefillPacer


def test_without_costs_the_budget_is_the_chunk_limit() -> None:
    pacer = PrefillPacer(gap_factor=2.0, max_chunk=256)
    assert pacer.budget(7) == 256
    pacer.observe(7, 0, 0.040)  # decode cost known, prompt cost not yet
    assert pacer.budget(7) == 256


def test_budget_keeps_a_mixed_step_within_the_gap_factor() -> None:
    pacer = PrefillPacer(gap_factor=2.0, max_chunk=256)
    pacer.observe(7, 0, 0.040)
    pacer.observe(0, 512, 512 * 0.002)  # a prompt alone: 2 ms per token
    # room beside 7 streams: (2.0 - 1) * 40 ms = 40 ms = 20 tokens at 2 ms
    assert pacer.budget(7) == 20
    assert 0.040 + pacer.budget(7) * 0.002 <= 2.0 * 0.040


def test_mixed_steps_teach_the_prompt_cost_net_of_decoding() -> None:
    pacer = PrefillPacer(gap_factor=3.0, max_chunk=256)
    pacer.observe(4, 0, 0.030)
    for _ in range(30):
        pacer.observe(4, 50, 0.030 + 50 * 0.001)  # 1 ms per prompt token on top
    assert pacer.budget(4) == 60  # (3 - 1) * 30 ms / 1 ms


def test_budget_follows_a_slower_machine() -> None:
    pacer = PrefillPacer(gap_factor=2.0, max_chunk=256)
    pacer.observe(2, 0, 0.020)
    pacer.observe(0, 100, 0.100)
    fast = pacer.budget(2)
    for _ in range(30):
        pacer.observe(0, 100, 0.400)
    assert pacer.budget(2) < fast


def test_budget_is_bounded_both_ways() -> None:
    pacer = PrefillPacer(gap_factor=2.0, max_chunk=64, min_chunk=8)
    pacer.observe(1, 0, 0.010)
    pacer.observe(0, 10, 10.0)  # a very slow prompt token
    assert pacer.budget(1) == 8
    pacer = PrefillPacer(gap_factor=50.0, max_chunk=64)
    pacer.observe(1, 0, 0.100)
    pacer.observe(0, 100, 0.001)
    assert pacer.budget(1) == 64


def test_unknown_stream_count_uses_the_nearest_seen() -> None:
    pacer = PrefillPacer(gap_factor=2.0, max_chunk=1000)
    pacer.observe(2, 0, 0.020)
    pacer.observe(8, 0, 0.050)
    pacer.observe(0, 100, 0.100)
    assert pacer.budget(7) == pacer.budget(8) == 50
    assert pacer.budget(1) == pacer.budget(2) == 20
