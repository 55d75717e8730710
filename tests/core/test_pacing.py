from gemma_worker.core.pacing import PrefillPacer


def test_without_costs_the_budget_is_the_chunk_limit() -> None:
    pacer = PrefillPacer(gap_factor=2.0, max_chunk=256)
    assert pacer.budget(7, 7) == 256
    pacer.observe(7, 0, 0.040)  # decode cost known, prompt cost not yet
    assert pacer.budget(7, 8) == 256


def test_budget_keeps_a_mixed_step_within_the_gap_factor() -> None:
    pacer = PrefillPacer(gap_factor=2.0, max_chunk=256)
    pacer.observe(7, 0, 0.040)
    pacer.observe(0, 512, 512 * 0.002)  # a prompt alone: 2 ms per token
    # beside 7 streams and one prompt (the decode cost so far is 40 ms for 7 tokens):
    # 2.0 x 8/7 x 40 ms - 40 ms = 51 ms = 25 tokens at 2 ms
    assert pacer.budget(7, 8) == 25
    assert 0.040 + pacer.budget(7, 8) * 0.002 <= 2.0 * 0.040 * 8 / 7


def test_a_prompt_pass_has_a_fixed_cost() -> None:
    """Prompt tokens beside streams run as a pass of their own: a few tokens cost a fixed
    part too, which the budget leaves room for."""
    pacer = PrefillPacer(gap_factor=2.0, max_chunk=1000)
    pacer.observe(4, 0, 0.040)
    pacer.observe(4, 0, 0.040)
    for n in (10, 50, 10, 50):
        pacer.observe(4, n, 0.040 + 0.020 + n * 0.001)  # 20 ms + 1 ms per token on top
    # 2.0 x 40 ms - 40 ms = 40 ms: 20 ms fixed, 20 tokens at 1 ms
    assert pacer.budget(4, 4) == 20


def test_a_burst_of_prompts_is_paced_against_the_step_they_will_make() -> None:
    """One stream decodes, seven prompts wait: the step may take what a step of all eight
    streams will, not a few tokens beside a lone stream's fast step."""
    pacer = PrefillPacer(gap_factor=2.0, max_chunk=1000)
    for n, seconds in ((1, 0.025), (8, 0.066), (1, 0.025), (8, 0.066)):
        pacer.observe(n, 0, seconds)
    for n in (100, 500, 100, 500):
        pacer.observe(0, n, 0.010 + n * 0.002)
    lone = pacer.budget(1, 1)
    burst = pacer.budget(1, 8)
    assert lone == 8  # 2 x 25 ms - 25 ms leaves 15 ms: 10 fixed + 2 tokens; min_chunk rules
    assert burst == 48  # 2 x 66 ms - 25 ms = 107 ms: 10 fixed + 48 tokens at 2 ms


def test_streams_that_speculate_make_the_company_step_wider() -> None:
    """Drafting streams bring several tokens each to a step: the step a burst of prompts
    will make is as wide as theirs, not one token per stream."""
    plain = PrefillPacer(gap_factor=2.0, max_chunk=1000)
    drafting = PrefillPacer(gap_factor=2.0, max_chunk=1000)
    for pacer, per_stream in ((plain, 1), (drafting, 8)):
        for _ in range(40):  # 1-stream and 8-stream steps: 20 ms + 3 ms per token
            pacer.observe(per_stream, 0, 0.020 + 0.003 * per_stream, n_streams=1)
            pacer.observe(8 * per_stream, 0, 0.020 + 0.024 * per_stream, n_streams=8)
        for n in (100, 500, 100, 500):
            pacer.observe(0, n, 0.010 + n * 0.001)
    assert plain.stream_width == 1.0
    assert 7.5 < drafting.stream_width <= 8.0
    # one stream decodes (8 tokens, 44 ms), seven prompts wait: the company's step is
    # 8 x 8 tokens (212 ms), so 2 x 212 - 44 = 380 ms: 10 fixed + 370 tokens at 1 ms
    assert drafting.budget(8, 8) == 370
    # without drafts: 2 x 44 ms (8 x 1 token) - 23 ms = 65 ms: 10 fixed + 55 tokens
    assert plain.budget(1, 8) == 55


def test_mixed_steps_teach_the_prompt_cost_net_of_decoding() -> None:
    pacer = PrefillPacer(gap_factor=3.0, max_chunk=256)
    pacer.observe(4, 0, 0.030)
    for n in (30, 60) * 15:
        pacer.observe(4, n, 0.030 + n * 0.001)  # 1 ms per prompt token on top
    assert pacer.budget(4, 4) == 60  # (3 - 1) * 30 ms / 1 ms


def test_budget_follows_a_slower_machine() -> None:
    pacer = PrefillPacer(gap_factor=2.0, max_chunk=256)
    pacer.observe(2, 0, 0.020)
    pacer.observe(0, 100, 0.100)
    fast = pacer.budget(2, 2)
    for _ in range(40):
        pacer.observe(0, 100, 0.400)
    assert pacer.budget(2, 2) < fast


def test_budget_is_bounded_both_ways() -> None:
    pacer = PrefillPacer(gap_factor=2.0, max_chunk=64, min_chunk=8)
    pacer.observe(1, 0, 0.010)
    pacer.observe(0, 10, 10.0)  # a very slow prompt token
    assert pacer.budget(1, 2) == 8
    pacer = PrefillPacer(gap_factor=50.0, max_chunk=64)
    pacer.observe(1, 0, 0.100)
    pacer.observe(0, 100, 0.001)
    assert pacer.budget(1, 2) == 64


def test_stream_counts_not_seen_are_estimated_from_those_seen() -> None:
    pacer = PrefillPacer(gap_factor=2.0, max_chunk=1000)
    pacer.observe(2, 0, 0.020)
    pacer.observe(8, 0, 0.050)  # 5 ms per stream + 10 ms
    pacer.observe(0, 100, 0.100)  # 1 ms per prompt token
    assert pacer.budget(7, 7) == 45  # 2 x 45 ms - 45 ms
    assert pacer.budget(4, 4) == 30
