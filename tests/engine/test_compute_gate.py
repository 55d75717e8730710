"""The process-wide compute gate: one holder at a time, first come first served."""

import threading
import time

from gemma_worker.engine.compute_gate import ComputeGate


def test_holders_take_turns_in_arrival_order() -> None:
    gate = ComputeGate()
    order: list[str] = []
    inside = 0
    most = 0
    lock = threading.Lock()

    def hold(name: str) -> None:
        nonlocal inside, most
        with gate.turn(name):
            with lock:
                inside += 1
                most = max(most, inside)
            order.append(name)
            time.sleep(0.01)
            with lock:
                inside -= 1

    with gate.turn("first"):
        threads = []
        for name in ("a", "b", "c"):
            t = threading.Thread(target=hold, args=(name,))
            t.start()
            threads.append(t)
            time.sleep(0.02)  # each is waiting before the next arrives
    for t in threads:
        t.join()
    assert order == ["a", "b", "c"] and most == 1


def test_others_turn_reports_recent_holders_but_not_oneself() -> None:
    gate = ComputeGate()
    assert gate.others_turn("embed") is None
    with gate.turn("generate"):
        time.sleep(0.02)
    turn = gate.others_turn("embed")
    assert turn is not None and 0.015 < turn < 0.5
    assert gate.others_turn("generate") is None
    assert gate.others_turn("embed", within_s=0.0) is None
