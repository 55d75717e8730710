import pytest

from gemma_worker.core.scheduling import (
    Acquired,
    CachedPrefix,
    SlotPool,
    SlotView,
    StepEntry,
    plan_step,
)


def test_decoders_each_get_one_token() -> None:
    plan = plan_step(
        [SlotView(0, 1, 0), SlotView(1, 2, 0)], n_batch=512, prefill_beside=lambda n, s: 64
    )
    assert plan == [StepEntry(0, 1, False), StepEntry(1, 1, False)]


def test_decoders_go_in_slot_order_whatever_their_admission_order() -> None:
    # llama.cpp runs one forward pass per run of consecutive sequence ids in batch order
    slots = [SlotView(2, 1, 0), SlotView(0, 2, 0), SlotView(1, 3, 0), SlotView(3, 4, 50)]
    plan = plan_step(slots, n_batch=512, prefill_beside=lambda n, s: 64)
    assert [e.slot for e in plan] == [0, 1, 2, 3]
    assert plan[-1] == StepEntry(3, 50, True)


def test_paused_decoder_sits_out() -> None:
    plan = plan_step([SlotView(0, 1, 0, paused=True), SlotView(1, 2, 0)], 512, lambda n, s: 64)
    assert plan == [StepEntry(1, 1, False)]


def test_prefill_is_chunked_so_decoders_keep_flowing() -> None:
    slots = [SlotView(0, 1, 0), SlotView(1, 2, 1000)]
    plan = plan_step(slots, n_batch=512, prefill_beside=lambda n, s: 64)
    assert plan == [StepEntry(0, 1, False), StepEntry(1, 64, True)]


def test_prefill_oldest_first_within_budget() -> None:
    slots = [SlotView(0, 5, 30), SlotView(1, 3, 50), SlotView(2, 1, 0)]
    plan = plan_step(slots, n_batch=512, prefill_beside=lambda n, s: 64)
    assert plan == [StepEntry(2, 1, False), StepEntry(1, 50, True), StepEntry(0, 14, True)]


def test_prompt_alone_gets_the_whole_batch() -> None:
    asked: list[int] = []
    plan = plan_step(
        [SlotView(0, 1, 2000)], n_batch=512, prefill_beside=lambda n, s: asked.append(n) or 0
    )
    assert plan == [StepEntry(0, 512, True)]
    assert asked == []  # the pacer only rules beside decoding streams


def test_prompt_beside_streams_gets_the_pacers_budget() -> None:
    slots = [SlotView(0, 1, 0), SlotView(1, 2, 0, paused=True), SlotView(2, 3, 2000)]
    plan = plan_step(slots, n_batch=512, prefill_beside=lambda n, s: 10 * n)
    assert plan == [StepEntry(0, 1, False), StepEntry(2, 10, True)]


def test_batch_size_bounds_everything() -> None:
    slots = [SlotView(i, i, 0) for i in range(4)] + [SlotView(9, 9, 100)]
    plan = plan_step(slots, n_batch=6, prefill_beside=lambda n, s: 64)
    assert sum(e.n_tokens for e in plan) == 6
    assert plan[-1] == StepEntry(9, 2, True)


def test_slot_pool_hands_out_lowest_free() -> None:
    pool = SlotPool(3)
    assert [pool.acquire(), pool.acquire()] == [
        Acquired(0, None),
        Acquired(1, None),
    ]
    pool.release(0)
    assert pool.acquire() == Acquired(0, None)
    assert pool.acquire() == Acquired(2, None)
    assert pool.acquire() is None
    with pytest.raises(ValueError, match="not in use"):
        pool.release(7)


def _busy(n: int) -> SlotPool:
    pool = SlotPool(n)
    for _ in range(n):
        pool.acquire()
    return pool


def test_longest_match_wins_even_over_a_lower_empty_slot() -> None:
    pool = _busy(4)
    a, b = CachedPrefix("k", (1, 2, 3)), CachedPrefix("k", (1, 2, 3, 4, 5))
    pool.release(0)
    pool.release(2, a)
    pool.release(3, b)
    assert pool.cached("k", special=False) == [(2, a), (3, b)]
    assert pool.cached("k", special=True) == []
    assert pool.cached("other", special=False) == []
    assert pool.n_empty == 1
    assert pool.acquire({2: 3, 3: 5}) == Acquired(3, b, reused=3)


def test_equal_matches_go_to_the_least_recently_used() -> None:
    pool = _busy(3)
    older, newer = CachedPrefix(None, (1, 2)), CachedPrefix(None, (1, 2, 9))
    pool.release(1, older)
    pool.release(2, newer)
    assert pool.acquire({1: 2, 2: 2}) == Acquired(1, older, reused=1)


def test_without_a_match_an_empty_slot_then_the_lru_cache_is_evicted() -> None:
    pool = _busy(3)
    old, new = CachedPrefix(None, (7,)), CachedPrefix(None, (8,))
    pool.release(1, old)
    pool.release(2, new)
    pool.release(0)
    assert pool.acquire({1: 0, 2: 0}) == Acquired(0, None)
    assert pool.acquire() == Acquired(1, old)
    assert pool.acquire() == Acquired(2, new)


def test_a_match_for_a_slot_without_cache_is_ignored() -> None:
    pool = _busy(2)
    pool.release(1)
    assert pool.acquire({1: 5}) == Acquired(1, None)


def _pool(n: int, busy: set[int], caches: dict[int, CachedPrefix]) -> SlotPool:
    """A compacting pool of ``n`` slots: ``busy`` in use, the rest free with ``caches``."""
    pool = SlotPool(n, compact=True)
    for _ in range(n):
        pool.acquire()
    for slot in sorted(set(range(n)) - busy):
        pool.release(slot, caches.get(slot))
    return pool


def test_compact_placement_closes_a_gap_between_busy_slots() -> None:
    # busy 0, 1, 3: slot 2 joins the two runs into one
    pool = _pool(6, {0, 1, 3}, {})
    assert pool.acquire() == Acquired(2, None)


def test_compact_placement_copies_a_distant_cache_next_to_the_busy_slots() -> None:
    hit, other = CachedPrefix(None, (1, 2, 3)), CachedPrefix(None, (9,))
    pool = _pool(8, {0, 1}, {2: other, 6: hit})
    got = pool.acquire({6: 3})
    assert got == Acquired(2, other, reused=6)
    assert got.reused == 6
    # the copied-from slot keeps its cache for later requests
    assert pool.cached(None, special=False) == [(6, hit)]


def test_compact_placement_reuses_in_place_when_that_adds_no_run() -> None:
    hit = CachedPrefix(None, (1, 2, 3))
    pool = _pool(8, {0, 1}, {2: CachedPrefix(None, (9,)), 3: hit})
    # slot 3 is not next to a busy slot, 2 is: the cache is copied
    assert pool.acquire({3: 3}).reused == 3
    pool = _pool(8, {0, 1, 4}, {2: CachedPrefix(None, (9,)), 3: hit})
    # slots 2 and 3 each touch one busy slot: the cache stays where it is
    got = pool.acquire({3: 3})
    assert got == Acquired(3, hit, reused=3)
    assert got.reused == 3


def test_compact_placement_with_nothing_busy_behaves_as_plain() -> None:
    hit = CachedPrefix(None, (1, 2, 3))
    pool = _pool(4, set(), {3: hit})
    assert pool.acquire({3: 3}) == Acquired(3, hit, reused=3)
    assert pool.acquire() == Acquired(2, None)  # beside the busy slot 3


def test_sessions_latest_cache_and_forget() -> None:
    pool = _busy(3)
    first, second = CachedPrefix("k", (1,), "s"), CachedPrefix("k", (1, 2), "s")
    pool.release(0, first)
    pool.release(1, second)
    pool.release(2, CachedPrefix("k", (5,), "t"))
    assert pool.holder("s") == 1
    assert sorted(pool.forget("s")) == [0, 1]
    assert pool.holder("s") is None
    assert [s for s, _ in pool.caches()] == [2]


def test_gap_move_takes_the_highest_busy_slot_into_the_lowest_gap() -> None:
    pool = _pool(8, {0, 2, 3, 6}, {1: CachedPrefix(None, (5,))})
    assert pool.gap_move() == (6, 1)
    assert pool.relocate(6, 1) == CachedPrefix(None, (5,))  # the gap's cache is given up
    assert pool.gap_move() is None  # busy 0-3: one run
    assert pool.n_free == 4
    assert pool.acquire() == Acquired(4, None)  # extends the run


def test_gap_moves_end_with_one_run() -> None:
    pool = _pool(10, {1, 4, 6, 9}, {})
    moves = []
    while (move := pool.gap_move()) is not None:
        moves.append(move)
        pool.relocate(*move)
    assert moves == [(9, 2), (6, 3)]  # busy 1-4
    with pytest.raises(ValueError, match="cannot move"):
        pool.relocate(9, 2)


def test_no_gap_move_for_one_run_or_without_compaction() -> None:
    assert _pool(6, {2, 3, 4}, {}).gap_move() is None
    assert _pool(6, set(), {}).gap_move() is None
    plain = SlotPool(4)
    for _ in range(4):
        plain.acquire()
    plain.release(1)
    assert plain.gap_move() is None
