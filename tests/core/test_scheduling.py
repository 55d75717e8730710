import pytest

from gemma_worker.core.scheduling import (
    AdmissionQueue,
    QueueFullError,
    SlotPool,
    SlotView,
    StepEntry,
    plan_step,
)


def test_decoders_each_get_one_token() -> None:
    plan = plan_step([SlotView(0, 1, 0), SlotView(1, 2, 0)], n_batch=512, prefill_chunk=64)
    assert plan == [StepEntry(0, 1, False), StepEntry(1, 1, False)]


def test_paused_decoder_sits_out() -> None:
    plan = plan_step([SlotView(0, 1, 0, paused=True), SlotView(1, 2, 0)], 512, 64)
    assert plan == [StepEntry(1, 1, False)]


def test_prefill_is_chunked_so_decoders_keep_flowing() -> None:
    slots = [SlotView(0, 1, 0), SlotView(1, 2, 1000)]
    plan = plan_step(slots, n_batch=512, prefill_chunk=64)
    assert plan == [StepEntry(0, 1, False), StepEntry(1, 64, True)]


def test_prefill_oldest_first_within_budget() -> None:
    slots = [SlotView(0, 5, 30), SlotView(1, 3, 50)]
    plan = plan_step(slots, n_batch=512, prefill_chunk=64)
    assert plan == [StepEntry(1, 50, True), StepEntry(0, 14, True)]


def test_batch_size_bounds_everything() -> None:
    slots = [SlotView(i, i, 0) for i in range(4)] + [SlotView(9, 9, 100)]
    plan = plan_step(slots, n_batch=6, prefill_chunk=64)
    assert sum(e.n_tokens for e in plan) == 6
    assert plan[-1] == StepEntry(9, 2, True)


def test_admission_queue_is_fifo_and_bounded() -> None:
    q: AdmissionQueue[str] = AdmissionQueue(2)
    assert q.push("a") == 1
    assert q.push("b") == 2
    with pytest.raises(QueueFullError):
        q.push("c")
    assert q.remove("a")
    assert not q.remove("zzz")
    assert q.pop() == "b"


def test_slot_pool_hands_out_lowest_free() -> None:
    pool = SlotPool(3)
    assert [pool.acquire(), pool.acquire()] == [(0, False), (1, False)]
    pool.release(0)
    assert pool.acquire() == (0, False)
    assert pool.acquire() == (2, False)
    assert pool.acquire() is None
    with pytest.raises(ValueError, match="not in use"):
        pool.release(7)


def test_slot_pool_hands_a_session_its_warm_slot() -> None:
    pool = SlotPool(3)
    for _ in range(3):
        pool.acquire()
    pool.release(1, "s1")
    pool.release(2, "s2")
    pool.release(0)
    # the key's own slot, even though slot 0 is empty and lower
    assert pool.acquire("s2") == (2, True)
    # without a warm slot: an empty slot before any cached one
    assert pool.acquire("other") == (0, False)
    # then the least recently released cached slot, whose cache is given up
    assert pool.acquire() == (1, False)
    pool.release(1)
    assert pool.acquire("s1") == (1, False)


def test_slot_pool_evicts_the_least_recently_used_cache() -> None:
    pool = SlotPool(2)
    pool.acquire()
    pool.acquire()
    pool.release(1, "old")
    pool.release(0, "new")
    assert pool.acquire() == (1, False)
    assert pool.holder("old") is None
    assert pool.holder("new") == 0
    assert pool.forget("new") == 0
    assert pool.acquire("new") == (0, False)
