"""Fair share between clients, on plain data."""

from __future__ import annotations

import pytest

from gemma_worker.core.errors import WorkerError
from gemma_worker.core.fairness import FairQueue, Shares


def queue() -> FairQueue[str]:
    return FairQueue(client_of=lambda item: item.split("-")[0])


def test_alone_a_client_is_first_come_first_served() -> None:
    q = queue()
    for i in range(5):
        q.push(f"a-{i}")
    assert q.ordered({"a": 8}) == [f"a-{i}" for i in range(5)]
    assert q.peek({"a": 8}) == "a-0"


def test_the_next_start_goes_to_the_client_running_the_fewest() -> None:
    q = queue()
    for i in range(40):
        q.push(f"a-{i}")
    q.push("b-0")  # arrives behind a's backlog
    assert q.peek({"a": 8}) == "b-0"  # a runs 8, b none: b's first request goes first
    assert q.ordered({"a": 8})[:2] == ["b-0", "a-0"]
    assert q.remove("b-0") and q.peek({"a": 8, "b": 1}) == "a-0"


def test_equal_shares_alternate_and_ties_go_to_the_oldest() -> None:
    q = queue()
    for item in ("a-0", "a-1", "b-0", "b-1", "c-0"):
        q.push(item)
    assert q.ordered({}) == ["a-0", "b-0", "c-0", "a-1", "b-1"]
    assert list(q) == ["a-0", "a-1", "b-0", "b-1", "c-0"]  # arrival order


def test_the_queue_knows_each_clients_newest() -> None:
    q = queue()
    q.push("a-0")
    q.push("a-1")
    assert q.newest_of("a") == "a-1" and q.newest_of("b") is None
    assert q.remove("a-1") and not q.remove("a-1") and len(q) == 1


def test_a_client_alone_may_take_every_place() -> None:
    shares = Shares(capacity=4)
    assert [shares.take("local") for _ in range(4)] == [None] * 4
    with pytest.raises(WorkerError) as full:
        shares.take("local")  # its own excess is refused, nobody else's
    assert full.value.code == "OVERLOADED"


def test_a_newcomer_takes_a_place_from_the_client_holding_the_most() -> None:
    shares = Shares(capacity=4)
    for _ in range(4):
        shares.take("greedy")
    assert shares.take("polite") == "greedy"  # greedy's newest waiting request gives way
    shares.give_back("greedy")
    assert (shares.held("greedy"), shares.held("polite"), shares.total) == (3, 1, 4)
    assert shares.take("third") == "greedy"
    shares.give_back("greedy")
    with pytest.raises(WorkerError):
        shares.take("polite")  # 2 would be as many as greedy holds: no one is over share


def test_a_per_client_cap() -> None:
    shares = Shares(capacity=10, per_client=2)
    shares.take("a")
    shares.take("a")
    with pytest.raises(WorkerError) as capped:
        shares.take("a")
    assert "limit is 2" in capped.value.message
    assert shares.take("b") is None
